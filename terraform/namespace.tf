resource "kubernetes_namespace_v1" "meterflow" {
  metadata {
    name = var.namespace
  }
}

locals {
  namespace = kubernetes_namespace_v1.meterflow.metadata[0].name
  # Service names: not `kafka` or `spark-master`, whose injected *_PORT variables the images
  # would read as their own settings.
  kafka_service  = "kafka-broker"
  kafka_brokers  = "${local.kafka_service}.${local.namespace}.svc.cluster.local:9092"
  minio_service  = "minio"
  minio_endpoint = "http://${local.minio_service}.${local.namespace}.svc.cluster.local:9000"
  # meterflow's Prometheus endpoint: the container, its probes, the service and the reach command.
  metrics_port = 9898
  # Where meterflow writes its Parquet (the Spark job writes beside it, under spark/).
  output_location = "s3://${var.bucket}/readings"
}
