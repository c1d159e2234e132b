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
      spark.hadoop.fs.s3a.aws.credentials.provider software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider
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

# The Spark Structured Streaming job (spark/): a driver in client mode submitting to the
# standalone cluster, reading the topic and writing meterflow's schema and layout under
# s3://BUCKET/spark/readings (beside meterflow's own output, so the two can be compared).
# spark-submit fetches the Kafka connector and hadoop-aws (the cluster needs Maven Central
# or a mirror).
resource "kubernetes_config_map_v1" "spark_job" {
  metadata {
    name      = "spark-job"
    namespace = local.namespace
  }
  data = {
    MF_KAFKA_BROKERS    = local.kafka_brokers
    MF_TOPICS           = var.topic
    MF_OUTPUT           = "s3://${var.bucket}/spark/readings"
    MF_SPARK_CHECKPOINT = "s3a://${var.bucket}/spark/_spark_checkpoint"
    MF_S3_ENDPOINT      = local.minio_endpoint
    MF_LOG              = "warn"
    AWS_REGION          = "us-east-1"
  }
}

locals {
  spark_packages = "org.apache.spark:spark-sql-kafka-0-10_2.13:4.0.1,org.apache.hadoop:hadoop-aws:3.4.1"
}

resource "kubernetes_deployment_v1" "spark_streaming" {
  # checkov:skip=CKV_K8S_8: the driver serves nothing to probe; it exits when its query fails, and Kubernetes restarts it from the checkpoint
  # checkov:skip=CKV_K8S_9: nothing connects to the driver but its own executors; readiness has no meaning here
  # checkov:skip=CKV_K8S_43: tags are pinned to releases; digests cannot be looked up on the offline build machine (pin them when mirroring images)
  # checkov:skip=CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)
  # checkov:skip=CKV_K8S_35: the image reads these credentials only from environment variables (MinIO root user, AWS_* for object_store and S3A)
  # checkov:skip=CKV_K8S_22: Spark and Trino write work and cache directories inside the image; a read-only root needs a verified list of mounts, which needs a running cluster
  metadata {
    name      = "spark-streaming"
    namespace = local.namespace
    labels    = { app = "spark-streaming" }
  }
  spec {
    replicas = 1
    strategy {
      type = "Recreate"
    }
    selector {
      match_labels = { app = "spark-streaming" }
    }
    template {
      metadata {
        labels = { app = "spark-streaming" }
      }
      spec {
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 185
        }
        container {
          name  = "driver"
          image = var.spark_image
          command = [
            "/opt/spark/bin/spark-submit",
            "--master", "spark://${local.spark_service}.${local.namespace}.svc.cluster.local:7077",
            "--deploy-mode", "client",
            "--packages", local.spark_packages,
            "--conf", "spark.driver.host=$(POD_IP)",
            "--conf", "spark.driver.bindAddress=0.0.0.0",
            "--conf", "spark.executorEnv.MF_S3_ENDPOINT=${local.minio_endpoint}",
            "/opt/meterflow/meterflow_spark_job.py",
          ]
          env {
            name = "POD_IP"
            value_from {
              field_ref {
                field_path = "status.podIP"
              }
            }
          }
          env {
            name  = "HOME"
            value = "/tmp"
          }
          env_from {
            config_map_ref {
              name = kubernetes_config_map_v1.spark_job.metadata[0].name
            }
          }
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.minio.metadata[0].name
            }
          }
          resources {
            requests = { cpu = "250m", memory = "1Gi" }
            limits   = { cpu = "1", memory = "2Gi" }
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
  depends_on = [kubernetes_deployment_v1.spark, kubernetes_job_v1.topic, kubernetes_job_v1.bucket]
}
