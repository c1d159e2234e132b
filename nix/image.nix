# OCI image of the service: the binary and CA certificates, no shell, a non-root user.
{ pkgs
, meterflow
}:
pkgs.dockerTools.buildLayeredImage {
  name = "meterflow";
  tag = meterflow.version;
  # A plain tar: `minikube image load` takes it as it is.
  compressor = "none";
  contents = [ meterflow pkgs.cacert ];
  config = {
    Entrypoint = [ "${meterflow}/bin/meterflow" ];
    Cmd = [ "run" ];
    User = "10001:10001";
    Env = [
      "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
      "MF_LOG=info"
      "MF_LOG_FORMAT=json"
      "MF_METRICS_ADDR=0.0.0.0:9898"
    ];
    ExposedPorts."9898/tcp" = { };
  };
}
