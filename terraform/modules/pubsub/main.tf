locals {
  dead_letter_topics = toset(compact([for s in values(var.subscriptions) : try(s.dead_letter.topic, null)]))
  with_dead_letter   = { for name, s in var.subscriptions : name => s.dead_letter.topic if s.dead_letter != null }
}

resource "google_pubsub_topic" "default" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption is enough for job messages (ids and gs:// URIs, no content); CMEK would add a KMS key to run and pay for.
  for_each                   = var.topics
  project                    = var.project_id
  name                       = each.key
  labels                     = var.labels
  message_retention_duration = each.value.message_retention_seconds == null ? null : "${each.value.message_retention_seconds}s"
}

resource "google_pubsub_subscription" "default" {
  for_each                   = var.subscriptions
  project                    = var.project_id
  name                       = each.key
  topic                      = google_pubsub_topic.default[each.value.topic].id
  labels                     = var.labels
  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = "${each.value.message_retention_seconds}s"

  # The GPU subscriptions can sit idle for weeks; they must not expire (default TTL is 31 days).
  expiration_policy {
    ttl = ""
  }

  dynamic "retry_policy" {
    for_each = each.value.retry_policy == null ? [] : [each.value.retry_policy]
    content {
      minimum_backoff = "${retry_policy.value.minimum_backoff_seconds}s"
      maximum_backoff = "${retry_policy.value.maximum_backoff_seconds}s"
    }
  }

  dynamic "dead_letter_policy" {
    for_each = each.value.dead_letter == null ? [] : [each.value.dead_letter]
    content {
      dead_letter_topic     = google_pubsub_topic.default[dead_letter_policy.value.topic].id
      max_delivery_attempts = dead_letter_policy.value.max_delivery_attempts
    }
  }

  dynamic "push_config" {
    for_each = each.value.push == null ? [] : [each.value.push]
    content {
      push_endpoint = push_config.value.endpoint
      oidc_token {
        service_account_email = push_config.value.service_account_email
        audience              = push_config.value.audience
      }
    }
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter topic
# and subscribe (to ack the forwarded message) on each source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.dead_letter_topics
  project  = var.project_id
  topic    = google_pubsub_topic.default[each.value].name
  role     = "roles/pubsub.publisher"
  member   = var.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each     = local.with_dead_letter
  project      = var.project_id
  subscription = google_pubsub_subscription.default[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = var.pubsub_service_agent
}

resource "google_pubsub_topic_iam_member" "default" {
  for_each = var.topic_iam_bindings_additive
  project  = var.project_id
  topic    = google_pubsub_topic.default[each.value.topic].name
  role     = each.value.role
  member   = each.value.member
}

resource "google_pubsub_subscription_iam_member" "default" {
  for_each     = var.subscription_iam_bindings_additive
  project      = var.project_id
  subscription = google_pubsub_subscription.default[each.value.subscription].name
  role         = each.value.role
  member       = each.value.member
}
