# The HTTP API (api/): a Cloud Run service from the functions image, run as `python -m api`.
# Cloud Run lets every request through: the API itself checks each caller's Firebase ID token.
# invoker_iam_disabled turns the invoker check off without an allUsers binding, which Domain
# Restricted Sharing (enforced by default in organizations created since 2024) refuses.
resource "google_cloud_run_v2_service" "default" {
  project              = var.project_id
  location             = var.region
  name                 = var.config.name
  ingress              = var.config.ingress
  deletion_protection  = var.deletion_protection
  labels               = var.labels
  invoker_iam_disabled = var.config.public

  template {
    service_account                  = var.service_account
    max_instance_request_concurrency = var.config.concurrency
    # Covers the longest `wait` a create may ask for, and event streams (clients reconnect).
    timeout = "${var.config.timeout_seconds}s"

    scaling {
      min_instance_count = var.config.min_instances
      max_instance_count = var.config.max_instances
    }

    containers {
      image   = var.config.image
      command = ["python"]
      args    = ["-m", "api"]

      ports {
        container_port = 8080
      }

      dynamic "env" {
        for_each = var.config.env
        content {
          name  = env.key
          value = env.value
        }
      }

      resources {
        limits = {
          cpu    = var.config.cpu
          memory = var.config.memory
        }
        cpu_idle = true
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
}

# Signed URLs are signed through IAM (signBlob) as the service's own account: no key file.
resource "google_service_account_iam_member" "sign_as_self" {
  service_account_id = "projects/${var.project_id}/serviceAccounts/${var.service_account}"
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${var.service_account}"
}
