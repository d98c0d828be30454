output "name" {
  description = "Service name."
  value       = google_cloud_run_v2_service.default.name
}

output "uri" {
  description = "The API's URL: apps call it with a Firebase ID token (OpenAPI at /openapi.json)."
  value       = google_cloud_run_v2_service.default.uri
}
