output "number" {
  description = "Project number (service agent emails are derived from it)."
  value       = data.google_project.default.number
}

output "project_id" {
  description = "Project id, available once the APIs are enabled (depend on this to order resources after them)."
  value       = var.project_id
  depends_on  = [google_project_service.default]
}

output "service_agents" {
  description = "Google-managed service agents this deployment grants roles to."
  value = {
    pubsub = "service-${data.google_project.default.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  }
}
