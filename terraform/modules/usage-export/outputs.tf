output "dataset_id" {
  description = "The BigQuery dataset the usage rows land in."
  value       = google_bigquery_dataset.default.dataset_id
}

output "sink_writer_identity" {
  description = "The identity the sink writes as."
  value       = google_logging_project_sink.default.writer_identity
}
