output "ids" {
  description = "Scheduler job ids by name."
  value       = { for k, j in google_cloud_scheduler_job.default : k => j.id }
}
