# meterflow run: Kafka → Parquet in MinIO, exactly once (docs/run.md).

resource "kubernetes_config_map_v1" "meterflow" {
  metadata {
    name      = "meterflow"
    namespace = local.namespace
  }
  data = {
    MF_KAFKA_BROKERS = local.kafka_brokers
    MF_TOPICS        = var.topic
    MF_GROUP         = "meterflow"
    MF_OUTPUT        = local.output_location
    MF_S3_ENDPOINT   = local.minio_endpoint
    AWS_REGION       = "us-east-1"
    MF_METRICS_ADDR  = "0.0.0.0:${local.metrics_port}"
    MF_LOG           = "info"
    MF_LOG_FORMAT    = "json"
  }
}

resource "kubernetes_deployment_v1" "meterflow" {
  # checkov:skip=CKV_K8S_43: tags are pinned to releases; digests cannot be looked up on the offline build machine (pin them when mirroring images)
  # checkov:skip=CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)
  # checkov:skip=CKV_K8S_35: the image reads these credentials only from environment variables (MinIO root user, AWS_* for object_store and S3A)
  metadata {
    name      = "meterflow"
    namespace = local.namespace
    labels    = { app = "meterflow" }
  }
  spec {
    # One writer per checkpoint prefix; Recreate so an old pod is gone before the new one
    # starts (fencing is the safety net, not the plan).
    replicas = 1
    strategy {
      type = "Recreate"
    }
    selector {
      match_labels = { app = "meterflow" }
    }
    template {
      metadata {
        labels = { app = "meterflow" }
        annotations = {
          "prometheus.io/scrape" = "true"
          "prometheus.io/port"   = tostring(local.metrics_port)
          "prometheus.io/path"   = "/metrics"
        }
      }
      spec {
        enable_service_links = false
        # SIGTERM commits the current epoch: give it time.
        termination_grace_period_seconds = 120
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
        }
        container {
          name  = "meterflow"
          image = var.meterflow_image
          # Loaded into minikube by `nix run .#up` (minikube image load), never pulled.
          image_pull_policy = "Never"
          args              = ["run"]
          env_from {
            config_map_ref {
              name = kubernetes_config_map_v1.meterflow.metadata[0].name
            }
          }
          env {
            name = "AWS_ACCESS_KEY_ID"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.minio.metadata[0].name
                key  = "AWS_ACCESS_KEY_ID"
              }
            }
          }
          env {
            name = "AWS_SECRET_ACCESS_KEY"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.minio.metadata[0].name
                key  = "AWS_SECRET_ACCESS_KEY"
              }
            }
          }
          port {
            name           = "metrics"
            container_port = local.metrics_port
          }
          liveness_probe {
            http_get {
              path = "/healthz"
              port = local.metrics_port
            }
          }
          readiness_probe {
            http_get {
              path = "/readyz"
              port = local.metrics_port
            }
          }
          # 10 M devices peak at 2.5 GiB while committing (benches/checkpoint_scale.rs,
          # docs/run.md "Scale"): the limit keeps a quarter free.
          resources {
            requests = { cpu = "500m", memory = "512Mi" }
            limits   = { cpu = "2", memory = "4Gi" }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }
  depends_on = [kubernetes_job_v1.bucket, kubernetes_job_v1.topic]
}

resource "kubernetes_service_v1" "meterflow_metrics" {
  metadata {
    name      = "meterflow-metrics"
    namespace = local.namespace
  }
  spec {
    selector = { app = "meterflow" }
    port {
      name        = "metrics"
      port        = local.metrics_port
      target_port = local.metrics_port
    }
  }
}
