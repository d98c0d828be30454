output "name" {
  description = "Service name."
  value       = google_cloud_run_v2_service.default.name
}

output "uri" {
  description = "Service URL: push endpoints are this plus /push/{pipeline} (or /push/{pipeline}/{part}), and it is the OIDC audience."
  value       = google_cloud_run_v2_service.default.uri
}

output "worker_pool_name" {
  description = "Worker pool name, or null when no pull-mode pipeline runs on one."
  value       = one(google_cloud_run_v2_worker_pool.default[*].name)
}
