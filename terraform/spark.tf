# Spark standalone: one master, workers; s3a settings for MinIO in spark-defaults.conf.
# hadoop-aws (3.4.1 for Spark 4.0's Hadoop) and the AWS SDK v2 bundle are fetched at submit
# time with --packages (spark.jars.ivy points at a writable directory: the image has no HOME).

resource "kubernetes_config_map_v1" "spark" {
  metadata {
    name      = "spark-defaults"
    namespace = local.namespace
  }
  data = {
    "spark-defaults.conf" = <<-CONF
      spark.master                                spark://${local.spark_service}.${local.namespace}.svc.cluster.local:7077
      spark.jars.ivy                              /tmp/ivy
      spark.jars.packages                         org.apache.hadoop:hadoop-aws:3.4.1
      spark.hadoop.fs.s3a.endpoint                ${local.minio_endpoint}
      spark.hadoop.fs.s3a.path.style.access       true
      spark.hadoop.fs.s3a.connection.ssl.enabled  false
      spark.hadoop.fs.s3a.aws.credentials.provider org.apache.hadoop.fs.s3a.auth.EnvironmentVariableCredentialsProvider
    CONF
  }
}

locals {
  # Not `spark-master`: its injected SPARK_MASTER_PORT would crash the master.
  spark_service = "spark"
  spark_labels  = { master = { app = "spark", role = "master" }, worker = { app = "spark", role = "worker" } }
  # The first port is the one probes check: the master's cluster port, the worker's web UI.
  spark_ports = { master = [7077, 8080], worker = [8081] }
  spark_commands = {
    master = ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.master.Master", "--host", "0.0.0.0", "--port", "7077", "--webui-port", "8080"]
    worker = [
      "/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker",
      "spark://${local.spark_service}.${local.namespace}.svc.cluster.local:7077",
      "--cores", tostring(var.spark_worker_cores), "--memory", var.spark_worker_memory,
    ]
  }
}

resource "kubernetes_deployment_v1" "spark" {
  # checkov:skip=CKV_K8S_43: tags are pinned to releases; digests cannot be looked up on the offline build machine (pin them when mirroring images)
  # checkov:skip=CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)
  # checkov:skip=CKV_K8S_35: the image reads these credentials only from environment variables (MinIO root user, AWS_* for object_store and S3A)
  # checkov:skip=CKV_K8S_22: Spark and Trino write work and cache directories inside the image; a read-only root needs a verified list of mounts, which needs a running cluster
  for_each = local.spark_labels
  metadata {
    name      = "spark-${each.key}"
    namespace = local.namespace
    labels    = each.value
  }
  spec {
    replicas = each.key == "master" ? 1 : var.spark_workers
    selector {
      match_labels = each.value
    }
    template {
      metadata {
        labels = each.value
      }
      spec {
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 185
        }
        container {
          name    = "spark"
          image   = var.spark_image
          command = local.spark_commands[each.key]
          env {
            name  = "HOME"
            value = "/tmp"
          }
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.minio.metadata[0].name
            }
          }
          dynamic "port" {
            for_each = local.spark_ports[each.key]
            content {
              container_port = port.value
            }
          }
          liveness_probe {
            tcp_socket {
              port = local.spark_ports[each.key][0]
            }
            initial_delay_seconds = 20
          }
          readiness_probe {
            tcp_socket {
              port = local.spark_ports[each.key][0]
            }
          }
          resources {
            requests = { cpu = "250m", memory = "512Mi" }
            limits   = { cpu = each.key == "master" ? "1" : tostring(var.spark_worker_cores), memory = each.key == "master" ? "1Gi" : "3Gi" }
          }
          security_context {
            allow_privilege_escalation = false
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "defaults"
            mount_path = "/opt/spark/conf/spark-defaults.conf"
            sub_path   = "spark-defaults.conf"
          }
        }
        volume {
          name = "defaults"
          config_map {
            name = kubernetes_config_map_v1.spark.metadata[0].name
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "spark" {
  metadata {
    name      = local.spark_service
    namespace = local.namespace
  }
  spec {
    selector = local.spark_labels.master
    port {
      name = "cluster"
      port = 7077
    }
    port {
      name = "ui"
      port = 8080
    }
  }
}
