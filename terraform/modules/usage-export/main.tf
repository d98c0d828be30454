# The usage line every finished job prints (core/usage.py: jsonPayload.kind = "gpujobs.usage")
# goes to BigQuery through a log sink: one table per log name, partitioned by day, with the
# line's fields as columns (jsonPayload.gpuSeconds, jsonPayload.uid, ...).

resource "google_bigquery_dataset" "default" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption is enough for usage rows (ids, seconds, model names; no content); CMEK would add a KMS key to run and pay for.
  project                    = var.project_id
  dataset_id                 = var.config.dataset_id
  location                   = var.config.location
  description                = "Per-job usage of the GPU jobs pipeline (one row per finished job), exported from Cloud Logging."
  delete_contents_on_destroy = var.config.force_destroy
  labels                     = var.labels
  # Partitions older than this are dropped (null keeps them).
  default_partition_expiration_ms = var.config.retention_days == null ? null : var.config.retention_days * 86400000
}

resource "google_logging_project_sink" "default" {
  project                = var.project_id
  name                   = var.config.sink_name
  destination            = "bigquery.googleapis.com/projects/${var.project_id}/datasets/${google_bigquery_dataset.default.dataset_id}"
  filter                 = "jsonPayload.kind=\"${var.log_kind}\""
  unique_writer_identity = true
  bigquery_options {
    use_partitioned_tables = true
  }
}

# The sink writes with its own identity: it may write this dataset and nothing else.
resource "google_bigquery_dataset_iam_member" "sink_writer" {
  project    = var.project_id
  dataset_id = google_bigquery_dataset.default.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = google_logging_project_sink.default.writer_identity
}
