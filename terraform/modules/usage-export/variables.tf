variable "config" {
  description = "The dataset and the sink: dataset_id, its location, the sink's name, how many days of rows to keep (null: all)."
  type = object({
    dataset_id     = optional(string, "gpu_jobs_usage")
    force_destroy  = optional(bool, false)
    location       = string
    retention_days = optional(number, 400)
    sink_name      = optional(string, "gpu-jobs-usage")
  })
  nullable = false
  validation {
    condition     = can(regex("^[A-Za-z0-9_]+$", var.config.dataset_id)) && length(var.config.dataset_id) <= 1024
    error_message = "dataset_id is letters, digits and underscores."
  }
  validation {
    condition     = var.config.retention_days == null || try(var.config.retention_days >= 1, false)
    error_message = "retention_days is at least 1 (or null to keep every row)."
  }
}

variable "labels" {
  description = "Labels applied to the dataset."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "log_kind" {
  description = "The jsonPayload.kind of the usage line (core/usage.py USAGE_LOG_KIND)."
  type        = string
  nullable    = false
  default     = "gpujobs.usage"
}

variable "project_id" {
  description = "Project whose logs are exported and that owns the dataset."
  type        = string
  nullable    = false
}
