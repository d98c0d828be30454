variable "auth" {
  description = "Firebase Auth: the sign-in providers (anonymous, email_password), authorized_domains (where the web client may sign in: localhost and the project's Firebase Hosting domains, plus yours) and whether anonymous users are deleted after 30 days."
  type = object({
    anonymous                  = bool
    authorized_domains         = list(string)
    autodelete_anonymous_users = bool
    email_password             = bool
  })
  nullable = false
  validation {
    condition     = var.auth.anonymous || var.auth.email_password
    error_message = "Enable at least one sign-in provider (anonymous or email_password): the web client cannot sign in otherwise."
  }
  validation {
    condition     = alltrue([for d in var.auth.authorized_domains : can(regex("^[a-z0-9.-]+$", d))])
    error_message = "authorized_domains are host names without scheme or port, e.g. localhost or app.example.com."
  }
}

variable "project_id" {
  description = "Project that becomes a Firebase project."
  type        = string
  nullable    = false
}

variable "web_app" {
  description = "The Firebase web app whose config the web client loads: display_name, and deletion_policy (DELETE or ABANDON) on destroy."
  type = object({
    deletion_policy = string
    display_name    = string
  })
  nullable = false
  validation {
    condition     = contains(["DELETE", "ABANDON"], var.web_app.deletion_policy)
    error_message = "web_app.deletion_policy must be DELETE or ABANDON."
  }
}
