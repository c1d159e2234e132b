variable "kube_config_path" {
  description = "kubeconfig to use"
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context (minikube's by default)"
  type        = string
  default     = "minikube"
}

variable "namespace" {
  description = "Namespace for the whole bundle"
  type        = string
  default     = "meterflow"
}

variable "kafka_image" {
  description = "Apache Kafka image (KRaft single node)"
  type        = string
  default     = "apache/kafka:4.1.0"
}

variable "topic" {
  description = "Topic the meters publish to"
  type        = string
  default     = "meter-readings"
}

variable "topic_partitions" {
  description = "Partitions of the topic"
  type        = number
  default     = 3
}

variable "minio_image" {
  description = "MinIO server image (minio/minio left Docker Hub: use quay.io)"
  type        = string
  default     = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
}

variable "minio_client_image" {
  description = "MinIO client image for the bucket Job"
  type        = string
  default     = "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"
}

variable "minio_root_user" {
  description = "MinIO root user (also meterflow's and Spark's S3 access key here)"
  type        = string
  default     = "meterflow"
  sensitive   = true
}

variable "minio_root_password" {
  description = "MinIO root password (at least 8 characters)"
  type        = string
  sensitive   = true
  validation {
    condition     = length(var.minio_root_password) >= 8
    error_message = "MinIO needs a root password of at least 8 characters."
  }
}

variable "bucket" {
  description = "Bucket for the Parquet output"
  type        = string
  default     = "meters"
}

variable "meterflow_image" {
  description = "meterflow image (nix build .#image, loaded with minikube image load)"
  type        = string
  default     = "meterflow:0.1.0"
}

variable "storage_size" {
  description = "Size of each persistent volume claim"
  type        = string
  default     = "5Gi"
}

variable "spark_image" {
  description = "Spark image for master, workers and the streaming job: apache/spark 4.0.1 plus the job and pandas/pyarrow (spark/Containerfile, built into minikube)"
  type        = string
  default     = "meterflow-spark:0.1.0"
}

variable "spark_workers" {
  description = "Number of Spark workers"
  type        = number
  default     = 1
}

variable "spark_worker_cores" {
  description = "Cores each Spark worker offers"
  type        = number
  default     = 2
}

variable "spark_worker_memory" {
  description = "Memory each Spark worker offers (Spark syntax, e.g. 2g)"
  type        = string
  default     = "2g"
}

variable "trino_image" {
  description = "Trino image (Hive connector over the bucket, file metastore)"
  type        = string
  default     = "trinodb/trino:476"
}
