output "deployer_service_account" {
  description = "The Cloud Build service account: gcloud builds submit --service-account=projects/PROJECT_ID/serviceAccounts/THIS."
  value       = google_service_account.deployer.email
}

output "deployer_roles" {
  description = "The project roles the deployer holds."
  value       = sort(local.deployer_roles)
}

output "state_bucket" {
  description = "Cloud Build's _TF_STATE_BUCKET."
  value       = google_storage_bucket.state.name
}
