# `nix run .#up` / `nix run .#down`: minikube, the image loaded into it, and the Terraform
# (OpenTofu) configuration in terraform/ applied or destroyed.
{ pkgs
, tools
, image
}:
let
  runtimeInputs = tools ++ [ pkgs.coreutils pkgs.gnutar pkgs.gzip ];
in
{
  up = pkgs.writeShellApplication {
    name = "meterflow-up";
    inherit runtimeInputs;
    text = ''
      root=''${MF_REPO:-$PWD}
      if ! minikube status >/dev/null 2>&1; then
        minikube start --cpus "''${MF_MINIKUBE_CPUS:-4}" --memory "''${MF_MINIKUBE_MEMORY:-8g}"
      fi
      echo "up: loading the meterflow image into minikube"
      minikube image load ${image}
      echo "up: building the Spark image (apache/spark, the job, pandas, pyarrow) in minikube"
      minikube image build -t meterflow-spark:${image.imageTag} -f spark/Containerfile "$root"
      # MinIO's root password: kept in a git-ignored file so re-runs keep the same one.
      secret="$root/terraform/.minio-root-password"
      if [ -z "''${TF_VAR_minio_root_password:-}" ]; then
        [ -s "$secret" ] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$secret")
        TF_VAR_minio_root_password=$(cat "$secret")
        export TF_VAR_minio_root_password
      fi
      tofu -chdir="$root/terraform" init -input=false
      tofu -chdir="$root/terraform" apply -input=false -auto-approve \
        -var meterflow_image=meterflow:${image.imageTag} \
        -var spark_image=meterflow-spark:${image.imageTag}
      tofu -chdir="$root/terraform" output
    '';
  };

  down = pkgs.writeShellApplication {
    name = "meterflow-down";
    inherit runtimeInputs;
    text = ''
      root=''${MF_REPO:-$PWD}
      secret="$root/terraform/.minio-root-password"
      if [ -z "''${TF_VAR_minio_root_password:-}" ] && [ -s "$secret" ]; then
        TF_VAR_minio_root_password=$(cat "$secret")
        export TF_VAR_minio_root_password
      fi
      tofu -chdir="$root/terraform" destroy -input=false -auto-approve || true
      if [ "''${MF_MINIKUBE_DELETE:-0}" = 1 ]; then
        minikube delete
      fi
    '';
  };
}
