# The Docker repository both images are pushed to. GPU images are several GB each and every build
# pushes a new tag, so old versions are deleted: the newest `keep_count` are always kept (the
# running revision's image among them), anything else older than `delete_after_days` goes.
resource "google_artifact_registry_repository" "default" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption is enough for these images (code and public model weights); CMEK would add a KMS key to run and pay for.
  project                = var.project_id
  location               = var.region
  repository_id          = var.config.name
  format                 = "DOCKER"
  description            = "Images of the gpu-jobs functions and GPU service."
  labels                 = var.labels
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-newest"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.config.keep_count
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "${var.config.delete_after_days * 86400}s"
    }
  }
}
