output "url" {
  description = "Image name prefix: REGION-docker.pkg.dev/PROJECT/REPOSITORY (append /IMAGE:TAG)."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.default.repository_id}"
}
