# Apache Kafka, one KRaft node (broker and controller), and a Job creating the topic.

resource "kubernetes_service_v1" "kafka" {
  metadata {
    name      = local.kafka_service
    namespace = local.namespace
  }
  spec {
    cluster_ip = "None"
    selector   = { app = "kafka" }
    port {
      name = "broker"
      port = 9092
    }
    port {
      name = "controller"
      port = 9093
    }
  }
}

resource "kubernetes_stateful_set_v1" "kafka" {
  metadata {
    name      = "kafka"
    namespace = local.namespace
    labels    = { app = "kafka" }
  }
  spec {
    service_name = kubernetes_service_v1.kafka.metadata[0].name
    replicas     = 1
    selector {
      match_labels = { app = "kafka" }
    }
    template {
      metadata {
        labels = { app = "kafka" }
      }
      spec {
        # The image turns every KAFKA_* variable into a broker property.
        enable_service_links = false
        security_context {
          run_as_non_root = true
          run_as_user     = 1000
          fs_group        = 1000
        }
        container {
          name  = "kafka"
          image = var.kafka_image
          env {
            name  = "CLUSTER_ID"
            value = "bWV0ZXJmbG93LWthZmthMQ"
          }
          env {
            name  = "KAFKA_NODE_ID"
            value = "1"
          }
          env {
            name  = "KAFKA_PROCESS_ROLES"
            value = "broker,controller"
          }
          env {
            name  = "KAFKA_LISTENERS"
            value = "PLAINTEXT://:9092,CONTROLLER://:9093"
          }
          env {
            name  = "KAFKA_ADVERTISED_LISTENERS"
            value = "PLAINTEXT://${local.kafka_brokers}"
          }
          env {
            name  = "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
            value = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
          }
          env {
            name  = "KAFKA_CONTROLLER_LISTENER_NAMES"
            value = "CONTROLLER"
          }
          env {
            name  = "KAFKA_INTER_BROKER_LISTENER_NAME"
            value = "PLAINTEXT"
          }
          env {
            name  = "KAFKA_CONTROLLER_QUORUM_VOTERS"
            value = "1@localhost:9093"
          }
          env {
            name  = "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"
            value = "1"
          }
          env {
            name  = "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"
            value = "1"
          }
          env {
            name  = "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"
            value = "1"
          }
          env {
            name  = "KAFKA_LOG_DIRS"
            value = "/var/lib/kafka/data"
          }
          port {
            name           = "broker"
            container_port = 9092
          }
          port {
            name           = "controller"
            container_port = 9093
          }
          readiness_probe {
            tcp_socket {
              port = 9092
            }
          }
          liveness_probe {
            tcp_socket {
              port = 9092
            }
            initial_delay_seconds = 30
          }
          resources {
            requests = { cpu = "250m", memory = "768Mi" }
            limits   = { cpu = "2", memory = "1536Mi" }
          }
          security_context {
            allow_privilege_escalation = false
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "data"
            mount_path = "/var/lib/kafka/data"
          }
        }
      }
    }
    volume_claim_template {
      metadata {
        name = "data"
      }
      spec {
        access_modes = ["ReadWriteOnce"]
        resources {
          requests = {
            storage = var.storage_size
          }
        }
      }
    }
  }
}

# Creates the meters' topic (idempotent: --if-not-exists).
resource "kubernetes_job_v1" "topic" {
  metadata {
    name      = "create-topic"
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
          name  = "create-topic"
          image = var.kafka_image
          command = [
            "/opt/kafka/bin/kafka-topics.sh", "--bootstrap-server", local.kafka_brokers,
            "--create", "--if-not-exists", "--topic", var.topic,
            "--partitions", tostring(var.topic_partitions), "--replication-factor", "1",
          ]
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
  depends_on = [kubernetes_stateful_set_v1.kafka]
}
