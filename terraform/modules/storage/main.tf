resource "google_storage_bucket" "default" {
  #checkov:skip=CKV_GCP_62:Access is already recorded by Cloud Audit Logs (enable Data Access logs for storage.googleapis.com); usage logs would need a second bucket.
  for_each                    = var.buckets
  project                     = var.project_id
  name                        = each.value.name
  location                    = var.config.location
  storage_class               = var.config.storage_class
  force_destroy               = var.config.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  versioning {
    enabled = var.config.versioning
  }

  # Uploads and results are working files, not an archive: each top-level folder with a TTL is
  # deleted that many days after the object was written.
  dynamic "lifecycle_rule" {
    for_each = { for folder, days in var.config.ttl_days : folder => days if days != null && days > 0 }
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["${lifecycle_rule.key}/"]
      }
      action {
        type = "Delete"
      }
    }
  }

  # Retention per job (docs/cost.md): the GPU service sets a result object's custom time to the
  # day its job's retentionDays end; it is deleted once that day has passed (the folder's TTL
  # above still bounds it).
  dynamic "lifecycle_rule" {
    for_each = var.config.custom_time_expiry ? [0] : []
    content {
      condition {
        days_since_custom_time = lifecycle_rule.value
        matches_prefix         = ["results/"]
      }
      action {
        type = "Delete"
      }
    }
  }

  # With versioning, a deleted or overwritten object lingers as a noncurrent version: drop those too.
  dynamic "lifecycle_rule" {
    for_each = var.config.versioning ? [var.config.noncurrent_ttl_days] : []
    content {
      condition {
        days_since_noncurrent_time = lifecycle_rule.value
        with_state                 = "ARCHIVED"
      }
      action {
        type = "Delete"
      }
    }
  }

  # Browsers upload with the Firebase Storage SDK (resumable uploads) or PUT to the API's signed
  # URL, which carries x-goog-content-length-range (the size the URL was signed for; without it
  # in the list the browser's preflight fails), and read results back.
  dynamic "cors" {
    for_each = length(var.config.cors_origins) == 0 ? [] : [""]
    content {
      origin          = var.config.cors_origins
      method          = ["GET", "HEAD", "PUT", "POST", "DELETE"]
      response_header = ["Content-Type", "Content-Length", "Authorization", "User-Agent", "x-goog-resumable", "x-goog-content-length-range"]
      max_age_seconds = 3600
    }
  }
}

resource "google_storage_bucket_iam_member" "default" {
  for_each = var.iam_bindings_additive
  bucket   = google_storage_bucket.default[each.value.bucket].name
  role     = each.value.role
  member   = each.value.member
}

# The Cloud Storage service agent publishes the notifications: it needs publisher on each topic.
# Keyed by topic name: topic ids are only known once the topics exist.
resource "google_pubsub_topic_iam_member" "notification_publisher" {
  for_each = { for n in values(var.notifications) : n.topic => n.topic_id... }
  topic    = each.value[0]
  role     = "roles/pubsub.publisher"
  member   = var.storage_service_agent
}

resource "google_storage_notification" "default" {
  for_each           = var.notifications
  bucket             = google_storage_bucket.default[each.key].name
  payload_format     = "JSON_API_V1"
  topic              = each.value.topic_id
  event_types        = each.value.event_types
  object_name_prefix = each.value.object_prefix
  depends_on         = [google_pubsub_topic_iam_member.notification_publisher]
}

resource "google_firebase_storage_bucket" "default" {
  provider  = google-beta
  for_each  = var.firebase_link ? var.buckets : {}
  project   = var.project_id
  bucket_id = google_storage_bucket.default[each.key].id
}

# Firebase Storage security rules: what app users may read and write with the client SDKs
# (the backend's service accounts are not subject to them).
resource "google_firebaserules_ruleset" "storage" {
  count   = var.firebase_link && var.firebase_rules != null ? 1 : 0
  project = var.project_id
  source {
    files {
      name    = "storage.rules"
      content = var.firebase_rules
    }
  }
  depends_on = [google_firebase_storage_bucket.default]
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_firebaserules_release" "storage" {
  for_each     = var.firebase_link && var.firebase_rules != null ? var.buckets : {}
  project      = var.project_id
  name         = "firebase.storage/${google_storage_bucket.default[each.key].name}"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.storage[0].name}"
  lifecycle {
    # A release cannot be pointed at a new ruleset in place.
    replace_triggered_by = [google_firebaserules_ruleset.storage[0]]
  }
}
