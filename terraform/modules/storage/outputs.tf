output "names" {
  description = "Real bucket names by topology key."
  value       = { for k, b in google_storage_bucket.default : k => b.name }
}

output "urls" {
  description = "gs:// URLs by topology key."
  value       = { for k, b in google_storage_bucket.default : k => b.url }
}
