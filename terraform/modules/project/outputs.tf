output "project_id" {
  description = "Project id, available once the APIs are enabled and the service agents exist (depend on this to order resources after them)."
  value       = var.project_id
  depends_on  = [google_project_service.default, google_project_service.storage, google_project_service_identity.default, data.google_storage_project_service_account.default]
}

output "service_agents" {
  description = "IAM members (serviceAccount:EMAIL) of the Google-managed service agents, by API short name (pubsub, eventarc, ... and storage). Known only after apply: use them as values, never as for_each keys."
  value = merge(
    { for service, identity in google_project_service_identity.default : split(".", service)[0] => "serviceAccount:${identity.email}" },
    { storage = data.google_storage_project_service_account.default.member },
  )
}
