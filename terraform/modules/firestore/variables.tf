variable "database" {
  description = "The Firestore database: its id (from topology), location, and whether this module creates it."
  type = object({
    create            = optional(bool, true)
    delete_protection = optional(bool, true)
    id                = optional(string, "(default)")
    location_id       = string
  })
  nullable = false
  validation {
    condition     = var.database.id == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.database.id))
    error_message = "database.id must be \"(default)\" or 4-63 lowercase letters, digits and hyphens starting with a letter."
  }
}

variable "iam_datastore_users" {
  description = "Members granted roles/datastore.user (read/write documents), keyed by a static name."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "indexes" {
  description = "Composite indexes by name: a collection and its fields in order (ASCENDING or DESCENDING)."
  type = map(object({
    collection = string
    fields = list(object({
      field_path = string
      order      = optional(string, "ASCENDING")
    }))
  }))
  default  = {}
  nullable = false
}

variable "project_id" {
  description = "Project that holds the database."
  type        = string
  nullable    = false
}

variable "rules" {
  description = "Content of the Firestore security rules file (infra/firestore.rules), released on the database. Null leaves the rules alone."
  type        = string
  default     = null
}
