output "project_id" {
  description = "Project id, available once Firebase and Auth exist (depend on this to order Firebase resources after them)."
  value       = var.project_id
  depends_on  = [google_firebase_project.default, google_identity_platform_config.default]
}

output "web_config" {
  description = "The web app's Firebase config (apiKey, appId, authDomain, messagingSenderId, projectId)."
  value = {
    apiKey            = data.google_firebase_web_app_config.default.api_key
    appId             = google_firebase_web_app.default.app_id
    authDomain        = data.google_firebase_web_app_config.default.auth_domain
    messagingSenderId = data.google_firebase_web_app_config.default.messaging_sender_id
    projectId         = var.project_id
  }
}
