data "google_project" "default" {
  project_id = var.project_id
}

resource "google_project_service" "default" {
  for_each                   = toset(var.services)
  project                    = var.project_id
  service                    = each.value
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Service agents are created lazily by Google, at some point after their API is enabled. Creating
# them here makes them exist before anything grants them a role or relies on them (Pub/Sub signs
# push tokens and forwards dead letters, Eventarc delivers Firestore events), instead of racing
# their creation on a new project.
resource "google_project_service_identity" "default" {
  provider   = google-beta
  for_each   = toset(var.service_identities)
  project    = var.project_id
  service    = each.value
  depends_on = [google_project_service.default]
}

# Cloud Storage has no service identity API: reading its agent creates it. Read after the APIs
# are enabled (depends_on defers the read to apply time).
data "google_storage_project_service_account" "default" {
  project    = var.project_id
  depends_on = [google_project_service.default]
}

resource "google_project_iam_member" "default" {
  for_each   = var.iam_bindings_additive
  project    = var.project_id
  role       = each.value.role
  member     = each.value.member
  depends_on = [google_project_service.default]
}
