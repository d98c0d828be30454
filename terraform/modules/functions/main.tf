resource "google_cloud_run_v2_service" "default" {
  for_each            = var.functions
  project             = var.project_id
  location            = var.region
  name                = each.key
  ingress             = var.config.ingress
  deletion_protection = var.deletion_protection
  labels              = var.labels

  template {
    service_account                  = var.service_accounts.runtime
    max_instance_request_concurrency = var.config.concurrency
    timeout                          = "${var.config.timeout_seconds}s"

    scaling {
      min_instance_count = var.config.min_instances
      max_instance_count = var.config.max_instances
    }

    containers {
      image = var.config.image
      # Explicit command + args, so the result does not depend on the image's ENTRYPOINT/CMD.
      command = ["functions-framework"]
      args = concat(
        ["--target=${each.value.target}", "--signature-type=cloudevent"],
        var.config.source_file == null ? [] : ["--source=${var.config.source_file}"],
      )

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
    }
  }
}

resource "google_cloud_run_v2_service_iam_member" "trigger_invoker" {
  for_each = var.functions
  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.default[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${var.service_accounts.trigger}"
}

resource "google_eventarc_trigger" "default" {
  for_each        = var.functions
  project         = var.project_id
  name            = each.key
  location        = each.value.trigger.kind == "firestore" ? var.firestore_location : var.region
  service_account = var.service_accounts.trigger
  labels          = var.labels

  matching_criteria {
    attribute = "type"
    value     = each.value.trigger.event_type
  }

  dynamic "matching_criteria" {
    for_each = each.value.trigger.kind == "firestore" ? [each.value.trigger] : []
    content {
      attribute = "database"
      value     = matching_criteria.value.database
    }
  }

  dynamic "matching_criteria" {
    for_each = each.value.trigger.kind == "firestore" ? [each.value.trigger] : []
    content {
      attribute = "document"
      operator  = "match-path-pattern"
      value     = matching_criteria.value.document
    }
  }

  # Firestore sends its document events as protobuf only; Pub/Sub triggers keep the default (JSON).
  event_data_content_type = each.value.trigger.kind == "firestore" ? "application/protobuf" : null

  dynamic "transport" {
    for_each = each.value.trigger.kind == "pubsub" ? [var.topic_ids[each.value.trigger.topic]] : []
    content {
      pubsub {
        topic = transport.value
      }
    }
  }

  destination {
    cloud_run_service {
      service = google_cloud_run_v2_service.default[each.key].name
      region  = var.region
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.trigger_invoker]
}
