# The app side of the project: Firebase on the project, Firebase Auth (Identity Platform) with
# the sign-in providers the web client offers, and the web app whose config the client loads.

# Makes the Cloud project a Firebase project (needed by the Storage link, the rules and Auth).
# Firebase cannot be removed from a project: destroy only forgets it.
resource "google_firebase_project" "default" {
  provider = google-beta
  project  = var.project_id
}

# Firebase Auth. Identity Platform needs a billing account on the project (the GPU service does
# too). Anonymous and email/password are what the web client offers (web/src/main.ts).
resource "google_identity_platform_config" "default" {
  project                    = var.project_id
  authorized_domains         = var.auth.authorized_domains
  autodelete_anonymous_users = var.auth.autodelete_anonymous_users

  sign_in {
    allow_duplicate_emails = false

    anonymous {
      enabled = var.auth.anonymous
    }

    email {
      enabled           = var.auth.email_password
      password_required = true
    }
  }

  depends_on = [google_firebase_project.default]
}

resource "google_firebase_web_app" "default" {
  provider     = google-beta
  project      = var.project_id
  display_name = var.web_app.display_name
  # DELETE (the provider's default) removes the app on destroy; ABANDON keeps it for re-import.
  deletion_policy = var.web_app.deletion_policy
  depends_on      = [google_firebase_project.default]
}

# apiKey, authDomain, ... of the web app: the client's Firebase config.
data "google_firebase_web_app_config" "default" {
  provider   = google-beta
  project    = var.project_id
  web_app_id = google_firebase_web_app.default.app_id
}
