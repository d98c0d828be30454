# Publishing to Pub/Sub (rather than calling a function over HTTP) keeps every function on the
# CloudEvent signature behind an Eventarc trigger; the Cloud Scheduler service agent publishes.
resource "google_cloud_scheduler_job" "default" {
  for_each  = var.schedules
  project   = var.project_id
  region    = var.region
  name      = each.key
  schedule  = each.value.schedule
  time_zone = each.value.time_zone

  pubsub_target {
    topic_name = var.topic_ids[each.value.topic]
    data       = base64encode(each.value.data)
    attributes = each.value.attributes
  }
}
