variable "config" {
  description = "The GPU Cloud Run service. concurrency = jobs per instance (1: one job per GPU); timeout_seconds should cover the push ack deadline."
  type = object({
    accelerator = optional(string, "nvidia-l4")
    # LoRA adapters: a Cloud Storage bucket mounted read-only at adapters_mount_path (the
    # pipelines' LORA_DIR), so adding an adapter needs no new image.
    adapters_bucket     = optional(string)
    adapters_mount_path = optional(string, "/adapters")
    concurrency         = optional(number, 1)
    cpu                 = optional(string, "8")
    # Audiences Cloud Run accepts in ID tokens besides its own URL: the push subscriptions sign
    # theirs with this one, and the service checks it too (PUSH_AUDIENCE).
    custom_audiences              = optional(list(string), [])
    env                           = optional(map(string), {})
    gpu_zonal_redundancy_disabled = optional(bool, true)
    image                         = string
    ingress                       = optional(string, "INGRESS_TRAFFIC_INTERNAL_ONLY")
    max_instances                 = optional(number, 1)
    memory                        = optional(string, "32Gi")
    min_instances                 = optional(number, 0)
    # Models too large to bake into the image: a Cloud Storage bucket mounted read-only (Cloud
    # Storage FUSE) at models_mount_path, in place of the image's own /models.
    models_bucket     = optional(string)
    models_mount_path = optional(string, "/models")
    name              = optional(string, "gpu-service")
    port              = optional(number, 8080)
    startup_probe = optional(object({
      failure_threshold     = optional(number, 30)
      initial_delay_seconds = optional(number, 0)
      path                  = optional(string, "/healthz")
      period_seconds        = optional(number, 10)
      timeout_seconds       = optional(number, 5)
    }), {})
    timeout_seconds = optional(number, 600)
  })
  nullable = false
  validation {
    condition     = contains(["nvidia-l4", "nvidia-rtx-pro-6000"], var.config.accelerator)
    error_message = "accelerator must be a Cloud Run GPU type: nvidia-l4 (or nvidia-rtx-pro-6000 where available)."
  }
  validation {
    condition = (
      try(tonumber(var.config.cpu), 0) >= lookup({ nvidia-l4 = 4, nvidia-rtx-pro-6000 = 20 }, var.config.accelerator, 0) &&
      try(tonumber(trimsuffix(var.config.memory, "Gi")), 0) >= lookup({ nvidia-l4 = 16, nvidia-rtx-pro-6000 = 80 }, var.config.accelerator, 0)
    )
    error_message = "Cloud Run GPUs need at least 4 CPU and 16Gi memory for nvidia-l4 (8 CPU / 32Gi recommended) and 20 CPU and 80Gi for nvidia-rtx-pro-6000; give cpu as a whole number and memory in Gi."
  }
  validation {
    condition     = var.config.min_instances >= 0 && var.config.max_instances >= max(1, var.config.min_instances)
    error_message = "Need 0 <= min_instances <= max_instances and max_instances >= 1 (max_instances is bounded by your GPU quota)."
  }
  validation {
    condition     = var.config.concurrency >= 1 && var.config.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000; keep 1 unless a pipeline can share the GPU."
  }
  validation {
    condition     = var.config.timeout_seconds >= 1 && var.config.timeout_seconds <= 3600
    error_message = "timeout_seconds must be between 1 and 3600 (Cloud Run request timeout)."
  }
  validation {
    condition = (
      var.config.startup_probe.period_seconds >= 1 && var.config.startup_probe.period_seconds <= 240 &&
      var.config.startup_probe.initial_delay_seconds >= 0 && var.config.startup_probe.initial_delay_seconds <= 240 &&
      var.config.startup_probe.timeout_seconds >= 1 && var.config.startup_probe.timeout_seconds <= var.config.startup_probe.period_seconds &&
      var.config.startup_probe.failure_threshold >= 1
    )
    error_message = "startup_probe: period_seconds and initial_delay_seconds at most 240, timeout_seconds between 1 and period_seconds; raise failure_threshold for slow model loads."
  }
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.config.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY (Pub/Sub push from this project still reaches it) or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the service (and worker pool) from Terraform."
  type        = bool
  nullable    = false
  default     = true
}

variable "invokers" {
  description = "Members granted run.invoker on the service (the Pub/Sub push identity), keyed by a static name."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "labels" {
  description = "Labels applied to the service and worker pool."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "project_id" {
  description = "Project of the service."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Region of the service; it needs Cloud Run GPU quota for the accelerator."
  type        = string
  nullable    = false
}

variable "service_account" {
  description = "Email of the identity the service (and worker pool) runs as."
  type        = string
  nullable    = false
}

variable "worker_pool" {
  description = <<-EOT
    Optional Cloud Run worker pool (google_cloud_run_v2_worker_pool, through google-beta) running the same
    image, for pipelines in pull mode whose jobs outlast the 600 s push limit: `python -m
    gpu_service` starts a streaming-pull consumer for every enabled pull-mode pipeline. `env` is
    added to config.env (set ENABLED_PIPELINES to the pull pipelines there); `command`/`args`
    null = the image's CMD. `subscriptions` (ids) are recorded on the revision, which also makes
    the pool wait for them.
  EOT
  type = object({
    args           = optional(list(string))
    command        = optional(list(string))
    enabled        = optional(bool, false)
    env            = optional(map(string), {})
    instance_count = optional(number, 1)
    name           = optional(string, "gpu-worker")
    subscriptions  = optional(list(string), [])
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.worker_pool.instance_count >= 1
    error_message = "worker_pool.instance_count must be 1 or more: google providers before 6.47.0 cannot apply 0 (a provider bug), and versions.tf allows them. To park the pool, set worker_pool_config.enabled = false."
  }
}
