locals {
  gpu_limits = {
    cpu              = var.config.cpu
    memory           = var.config.memory
    "nvidia.com/gpu" = "1"
  }
  # Cloud Storage buckets mounted read-only (Cloud Storage FUSE) on the service and on the worker
  # pool alike: both run the same pipelines, so both read the same models and adapters.
  bucket_volumes = {
    for name, volume in {
      models   = { bucket = var.config.models_bucket, mount_path = var.config.models_mount_path }
      adapters = { bucket = var.config.adapters_bucket, mount_path = var.config.adapters_mount_path }
    } : name => volume if volume.bucket != null
  }
}

resource "google_cloud_run_v2_service" "default" {
  project             = var.project_id
  location            = var.region
  name                = var.config.name
  ingress             = var.config.ingress
  deletion_protection = var.deletion_protection
  labels              = var.labels
  custom_audiences    = var.config.custom_audiences

  template {
    service_account = var.service_account
    # One job per GPU by default: a second request would share the GPU's memory.
    max_instance_request_concurrency = var.config.concurrency
    # Pub/Sub push waits at most ack_deadline_seconds (<= 600) for the reply, then redelivers.
    timeout                       = "${var.config.timeout_seconds}s"
    gpu_zonal_redundancy_disabled = var.config.gpu_zonal_redundancy_disabled
    # Cloud Storage volumes need the second-generation execution environment.
    execution_environment = length(local.bucket_volumes) == 0 ? null : "EXECUTION_ENVIRONMENT_GEN2"

    node_selector {
      accelerator = var.config.accelerator
    }

    dynamic "volumes" {
      for_each = local.bucket_volumes
      content {
        name = volumes.key
        gcs {
          bucket    = volumes.value.bucket
          read_only = true
        }
      }
    }

    scaling {
      min_instance_count = var.config.min_instances
      max_instance_count = var.config.max_instances
    }

    containers {
      image = var.config.image

      ports {
        container_port = var.config.port
      }

      dynamic "volume_mounts" {
        for_each = local.bucket_volumes
        content {
          name       = volume_mounts.key
          mount_path = volume_mounts.value.mount_path
        }
      }

      dynamic "env" {
        for_each = var.config.env
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = local.gpu_limits
        # GPU instances must have CPU always allocated.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      # Models are baked into the image and loaded at boot; the service reports ready on /healthz
      # only once they are loaded, so no request lands on a cold GPU.
      startup_probe {
        initial_delay_seconds = var.config.startup_probe.initial_delay_seconds
        period_seconds        = var.config.startup_probe.period_seconds
        timeout_seconds       = var.config.startup_probe.timeout_seconds
        failure_threshold     = var.config.startup_probe.failure_threshold
        http_get {
          path = var.config.startup_probe.path
          port = var.config.port
        }
      }
    }
  }
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = var.invokers
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.default.name
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_v2_worker_pool" "default" {
  provider            = google-beta
  count               = var.worker_pool.enabled ? 1 : 0
  project             = var.project_id
  location            = var.region
  name                = var.worker_pool.name
  deletion_protection = var.deletion_protection
  labels              = var.labels

  scaling {
    manual_instance_count = var.worker_pool.instance_count
  }

  template {
    service_account               = var.service_account
    gpu_zonal_redundancy_disabled = var.config.gpu_zonal_redundancy_disabled
    annotations = length(var.worker_pool.subscriptions) == 0 ? null : {
      "gpu-jobs/subscriptions" = join(",", var.worker_pool.subscriptions)
    }

    node_selector {
      accelerator = var.config.accelerator
    }

    dynamic "volumes" {
      for_each = local.bucket_volumes
      content {
        name = volumes.key
        gcs {
          bucket    = volumes.value.bucket
          read_only = true
        }
      }
    }

    containers {
      image   = var.config.image
      command = var.worker_pool.command
      args    = var.worker_pool.args

      dynamic "volume_mounts" {
        for_each = local.bucket_volumes
        content {
          name       = volume_mounts.key
          mount_path = volume_mounts.value.mount_path
        }
      }

      dynamic "env" {
        for_each = merge(var.config.env, var.worker_pool.env)
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = local.gpu_limits
      }
    }
  }
}

# The service reads the mounted models bucket (when models are not baked into the image).
resource "google_storage_bucket_iam_member" "models" {
  count  = var.config.models_bucket == null ? 0 : 1
  bucket = var.config.models_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${var.service_account}"
}

# ... and the mounted adapter bucket.
resource "google_storage_bucket_iam_member" "adapters" {
  count  = var.config.adapters_bucket == null ? 0 : 1
  bucket = var.config.adapters_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${var.service_account}"
}
