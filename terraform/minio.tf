# MinIO: the S3-compatible store for the Parquet output (and Trino's file metastore).

resource "kubernetes_secret_v1" "minio" {
  metadata {
    name      = "minio-credentials"
    namespace = local.namespace
  }
  data = {
    MINIO_ROOT_USER       = var.minio_root_user
    MINIO_ROOT_PASSWORD   = var.minio_root_password
    AWS_ACCESS_KEY_ID     = var.minio_root_user
    AWS_SECRET_ACCESS_KEY = var.minio_root_password
  }
}

resource "kubernetes_persistent_volume_claim_v1" "minio" {
  metadata {
    name      = "minio-data"
    namespace = local.namespace
  }
  spec {
    access_modes = ["ReadWriteOnce"]
    resources {
      requests = {
        storage = var.storage_size
      }
    }
  }
  wait_until_bound = false
}

resource "kubernetes_deployment_v1" "minio" {
  # checkov:skip=CKV_K8S_43: tags are pinned to releases; digests cannot be looked up on the offline build machine (pin them when mirroring images)
  # checkov:skip=CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)
  # checkov:skip=CKV_K8S_35: the image reads these credentials only from environment variables (MinIO root user, AWS_* for object_store and S3A)
  metadata {
    name      = "minio"
    namespace = local.namespace
    labels    = { app = "minio" }
  }
  spec {
    replicas = 1
    strategy {
      type = "Recreate"
    }
    selector {
      match_labels = { app = "minio" }
    }
    template {
      metadata {
        labels = { app = "minio" }
      }
      spec {
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 1000
          fs_group        = 1000
        }
        container {
          name  = "minio"
          image = var.minio_image
          # The certificates directory must be creatable: the root filesystem is read-only.
          args = ["server", "/data", "--console-address", ":9001", "--certs-dir", "/tmp/certs"]
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.minio.metadata[0].name
            }
          }
          port {
            name           = "s3"
            container_port = 9000
          }
          port {
            name           = "console"
            container_port = 9001
          }
          readiness_probe {
            http_get {
              path = "/minio/health/ready"
              port = 9000
            }
          }
          liveness_probe {
            http_get {
              path = "/minio/health/live"
              port = 9000
            }
          }
          resources {
            requests = { cpu = "100m", memory = "256Mi" }
            limits   = { cpu = "1", memory = "1Gi" }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "data"
            mount_path = "/data"
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
        volume {
          name = "data"
          persistent_volume_claim {
            claim_name = kubernetes_persistent_volume_claim_v1.minio.metadata[0].name
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "minio" {
  metadata {
    name      = local.minio_service
    namespace = local.namespace
  }
  spec {
    selector = { app = "minio" }
    port {
      name        = "s3"
      port        = 9000
      target_port = 9000
    }
    port {
      name        = "console"
      port        = 9001
      target_port = 9001
    }
  }
}

# Creates the output bucket once MinIO answers (idempotent: --ignore-existing).
resource "kubernetes_job_v1" "bucket" {
  metadata {
    name      = "create-bucket"
    namespace = local.namespace
  }
  spec {
    backoff_limit = 10
    template {
      metadata {}
      spec {
        restart_policy       = "OnFailure"
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 1000
        }
        container {
          name    = "mc"
          image   = var.minio_client_image
          command = ["/bin/sh", "-c"]
          args = [
            "mc --config-dir /tmp/mc alias set local ${local.minio_endpoint} \"$MINIO_ROOT_USER\" \"$MINIO_ROOT_PASSWORD\" && mc --config-dir /tmp/mc mb --ignore-existing local/${var.bucket}",
          ]
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.minio.metadata[0].name
            }
          }
          security_context {
            allow_privilege_escalation = false
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }
  wait_for_completion = true
  timeouts {
    create = "5m"
  }
  depends_on = [kubernetes_service_v1.minio, kubernetes_deployment_v1.minio]
}
