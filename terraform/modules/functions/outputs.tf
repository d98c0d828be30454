output "service_names" {
  description = "Cloud Run service names by function name."
  value       = { for k, s in google_cloud_run_v2_service.default : k => s.name }
}

output "trigger_ids" {
  description = "Eventarc trigger ids by function name."
  value       = { for k, t in google_eventarc_trigger.default : k => t.id }
}

output "urls" {
  description = "Service URLs by function name."
  value       = { for k, s in google_cloud_run_v2_service.default : k => s.uri }
}
