resource "google_service_account" "default" {
  for_each     = var.service_accounts
  project      = var.project_id
  account_id   = each.key
  display_name = coalesce(each.value.display_name, each.key)
  description  = each.value.description
}

resource "google_service_account_iam_member" "token_creator" {
  for_each           = var.token_creators
  service_account_id = google_service_account.default[each.value.service_account].name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.value.member
}
