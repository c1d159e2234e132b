"""meterflow semantics on Spark Structured Streaming (see docs/spark.md)."""
