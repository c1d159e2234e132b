output "namespace" {
  description = "Namespace holding every resource of the bundle"
  value       = local.namespace
}

output "kafka_brokers" {
  description = "Bootstrap address inside the cluster"
  value       = local.kafka_brokers
}

output "s3_endpoint" {
  description = "MinIO's S3 endpoint inside the cluster"
  value       = local.minio_endpoint
}

output "output_location" {
  description = "Where meterflow writes its Parquet, as SQL engines and `meterflow query` read it"
  value       = local.output_location
}

output "reach" {
  description = "Commands to reach each service from the laptop"
  value = {
    minio_s3      = "kubectl -n ${local.namespace} port-forward svc/${local.minio_service} 9000:9000"
    minio_console = "kubectl -n ${local.namespace} port-forward svc/${local.minio_service} 9001:9001"
    kafka         = "kubectl -n ${local.namespace} port-forward svc/${local.kafka_service} 9092:9092"
    metrics       = "kubectl -n ${local.namespace} port-forward svc/meterflow-metrics ${local.metrics_port}:${local.metrics_port}"
    spark_ui      = "kubectl -n ${local.namespace} port-forward svc/${local.spark_service} 8080:8080"
    trino         = "kubectl -n ${local.namespace} port-forward svc/trino 8081:8080"
  }
}
