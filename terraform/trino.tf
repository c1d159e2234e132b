# Trino for analysts: a Hive catalog over the bucket with a file metastore kept in the bucket
# itself (no metastore service to run). Table set-up SQL is in docs/deploy.md.

resource "kubernetes_secret_v1" "trino_catalog" {
  metadata {
    name      = "trino-catalog"
    namespace = local.namespace
  }
  data = {
    "meters.properties" = <<-PROPERTIES
      connector.name=hive
      hive.metastore=file
      hive.metastore.catalog.dir=s3://${var.bucket}/metastore
      hive.timestamp-precision=MICROSECONDS
      fs.native-s3.enabled=true
      s3.endpoint=${local.minio_endpoint}
      s3.region=us-east-1
      s3.path-style-access=true
      s3.aws-access-key=${var.minio_root_user}
      s3.aws-secret-key=${var.minio_root_password}
    PROPERTIES
  }
}

resource "kubernetes_deployment_v1" "trino" {
  # checkov:skip=CKV_K8S_43: tags are pinned to releases; digests cannot be looked up on the offline build machine (pin them when mirroring images)
  # checkov:skip=CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)
  # checkov:skip=CKV_K8S_22: Spark and Trino write work and cache directories inside the image; a read-only root needs a verified list of mounts, which needs a running cluster
  metadata {
    name      = "trino"
    namespace = local.namespace
    labels    = { app = "trino" }
  }
  spec {
    replicas = 1
    selector {
      match_labels = { app = "trino" }
    }
    template {
      metadata {
        labels = { app = "trino" }
      }
      spec {
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 1000
        }
        container {
          name  = "trino"
          image = var.trino_image
          port {
            container_port = 8080
          }
          readiness_probe {
            http_get {
              path = "/v1/info"
              port = 8080
            }
          }
          liveness_probe {
            http_get {
              path = "/v1/info"
              port = 8080
            }
            initial_delay_seconds = 60
          }
          resources {
            requests = { cpu = "500m", memory = "1Gi" }
            limits   = { cpu = "2", memory = "3Gi" }
          }
          security_context {
            allow_privilege_escalation = false
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "catalog"
            mount_path = "/etc/trino/catalog/meters.properties"
            sub_path   = "meters.properties"
          }
        }
        volume {
          name = "catalog"
          secret {
            secret_name = kubernetes_secret_v1.trino_catalog.metadata[0].name
          }
        }
      }
    }
  }
  depends_on = [kubernetes_job_v1.bucket]
}

resource "kubernetes_service_v1" "trino" {
  metadata {
    name      = "trino"
    namespace = local.namespace
  }
  spec {
    selector = { app = "trino" }
    port {
      port        = 8080
      target_port = 8080
    }
  }
}
