resource "google_firestore_database" "default" {
  count                   = var.database.create ? 1 : 0
  project                 = var.project_id
  name                    = var.database.id
  location_id             = var.database.location_id
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.database.delete_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # The provider's default (ABANDON) only forgets the database on destroy: the next apply then
  # fails with 409 "already exists". Without delete protection, destroy deletes it.
  deletion_policy = var.database.delete_protection ? "ABANDON" : "DELETE"
}

# Firestore has no resource-level IAM: datastore.user (document read/write, no admin) is granted
# on the project.
resource "google_project_iam_member" "datastore_user" {
  for_each   = var.iam_datastore_users
  project    = var.project_id
  role       = "roles/datastore.user"
  member     = each.value
  depends_on = [google_firestore_database.default]
}

resource "google_firebaserules_ruleset" "firestore" {
  count   = var.rules == null ? 0 : 1
  project = var.project_id
  source {
    files {
      name    = "firestore.rules"
      content = var.rules
    }
  }
  depends_on = [google_firestore_database.default]
  lifecycle {
    create_before_destroy = true
  }
}

resource "google_firebaserules_release" "firestore" {
  count        = var.rules == null ? 0 : 1
  project      = var.project_id
  name         = var.database.id == "(default)" ? "cloud.firestore" : "cloud.firestore/${var.database.id}"
  ruleset_name = "projects/${var.project_id}/rulesets/${google_firebaserules_ruleset.firestore[0].name}"
  lifecycle {
    # A release cannot be pointed at a new ruleset in place.
    replace_triggered_by = [google_firebaserules_ruleset.firestore[count.index]]
  }
}

# Composite indexes the backend's queries need (single-field ones Firestore keeps by itself).
resource "google_firestore_index" "default" {
  for_each   = var.indexes
  project    = var.project_id
  database   = var.database.id
  collection = each.value.collection
  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.field_path
      order      = fields.value.order
    }
  }
  depends_on = [google_firestore_database.default]
}
