resource "google_project_service" "default" {
  for_each                   = setsubtract(toset(var.services), ["storage.googleapis.com"])
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

# Cloud Storage on its own: the Storage agent's data source below waits for this API only. Were
# it to wait for all of them, enabling one more API later would defer its read to apply time,
# make the agent's e-mail unknown and replace its publisher grants (notifications would fail
# while the apply runs).
resource "google_project_service" "storage" {
  project                    = var.project_id
  service                    = "storage.googleapis.com"
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Cloud Storage has no service identity API: reading its agent creates it. Read once its API is
# enabled (on the first apply depends_on defers the read to apply time; later, it is known).
data "google_storage_project_service_account" "default" {
  project    = var.project_id
  depends_on = [google_project_service.storage]
}

resource "google_project_iam_member" "default" {
  for_each   = var.iam_bindings_additive
  project    = var.project_id
  role       = each.value.role
  member     = each.value.member
  depends_on = [google_project_service.default]
}
