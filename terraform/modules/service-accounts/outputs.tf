# Emails are built from the ids rather than read from the resources, so that they are known at
# plan time and can appear in for_each values downstream (Fabric's iam-service-account does the same).

output "emails" {
  description = "Service account emails by account id."
  value       = { for id in keys(var.service_accounts) : id => "${id}@${var.project_id}.iam.gserviceaccount.com" }
  depends_on  = [google_service_account.default]
}

output "members" {
  description = "IAM members (serviceAccount:EMAIL) by account id."
  value       = { for id in keys(var.service_accounts) : id => "serviceAccount:${id}@${var.project_id}.iam.gserviceaccount.com" }
  depends_on  = [google_service_account.default]
}
