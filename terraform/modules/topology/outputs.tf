output "buckets" {
  description = "Bucket keys (short ids; the storage module derives the real, globally unique names)."
  value       = keys(var.topology.buckets)
}

output "dead_letter_topics" {
  description = "Topics used as a dead-letter topic by at least one pipeline subscription."
  value       = distinct(compact([for p in values(local.pipelines) : try(p.dead_letter.topic, null)]))
}

output "firestore" {
  description = "Firestore database id and the jobs collection."
  value       = var.topology.firestore
}

output "functions" {
  description = "Functions by service name: target and a normalised trigger (kind = pubsub | firestore)."
  value       = local.functions
}

output "notifications" {
  description = "Storage notifications by bucket key."
  value       = local.notifications
}

output "pipeline_topic_prefix" {
  description = "Prefix of the pipeline topics (core/routes.py's TOPIC_PREFIX constant; not a setting)."
  value       = trimsuffix(var.naming.pipeline_topic, "%s")
}

output "pipelines" {
  description = "Each pipeline's settings: pipeline_defaults merged with its overrides (parts included, [] for a single-step pipeline), plus derived topic, subscription and push path."
  value       = local.pipelines
}

output "schedules" {
  description = "Cloud Scheduler jobs by name (empty unless topology.yaml declares schedules)."
  value       = var.topology.schedules
}

output "subscriptions" {
  description = "GPU-side subscriptions by subscription name, with their effective settings: one per pipeline (part = null) and one per part of a multi-part pipeline (its pipeline's settings; route = PIPELINE-PART)."
  value       = local.subscriptions
}

output "topics" {
  description = "Every topic to create: the declared ones plus one per pipeline and one per pipeline part."
  value       = local.topics
}

output "pubsub_inventory" {
  description = <<-EOT
    Every topic and subscription this topology creates, with the settings the local stack must
    reproduce on the emulators, as plain data keyed by resource name:
    topics.NAME = {name, message_retention_seconds (null = Pub/Sub default)};
    subscriptions.NAME = {name, topic, push_path (null for a pull subscription),
    ack_deadline_seconds, retry_policy {minimum_backoff_seconds, maximum_backoff_seconds},
    dead_letter {topic, max_delivery_attempts}, message_retention_seconds}.
  EOT
  value = {
    topics = { for name, t in local.topics : name => { name = name, message_retention_seconds = t.message_retention_seconds } }
    subscriptions = {
      for name, s in local.subscriptions : name => {
        name                      = name
        topic                     = s.topic
        push_path                 = s.mode == "push" ? s.push_path : null
        ack_deadline_seconds      = s.ack_deadline_seconds
        retry_policy              = s.retry_policy
        dead_letter               = s.dead_letter
        message_retention_seconds = s.message_retention_seconds
      }
    }
  }
}
