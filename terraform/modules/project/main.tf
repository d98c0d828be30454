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

resource "google_project_iam_member" "default" {
  for_each   = var.iam_bindings_additive
  project    = var.project_id
  role       = each.value.role
  member     = each.value.member
  depends_on = [google_project_service.default]
}
