variable "iam_bindings_additive" {
  description = "Project-level IAM members to add, keyed by a static name (keys must be known at plan time; members need not be)."
  type = map(object({
    member = string
    role   = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for b in values(var.iam_bindings_additive) : startswith(b.role, "roles/")])
    error_message = "Each iam_bindings_additive role must be a role name such as \"roles/datastore.user\"."
  }
}

variable "project_id" {
  description = "Project that holds every resource."
  type        = string
  nullable    = false
}

variable "service_identities" {
  description = "APIs whose service agent is created explicitly (google_project_service_identity), so that grants to it never race its creation. Each must also be in services."
  type        = list(string)
  nullable    = false
  default     = []
  validation {
    condition     = alltrue([for s in var.service_identities : contains(var.services, s)])
    error_message = "Every service_identities entry must also be listed in services (the API must be enabled first)."
  }
}

variable "services" {
  description = "APIs to enable. They are never disabled on destroy (other workloads may use them)."
  type        = list(string)
  nullable    = false
  default     = []
  validation {
    condition     = alltrue([for s in var.services : endswith(s, ".googleapis.com")])
    error_message = "Services are API names such as \"run.googleapis.com\"."
  }
}
