variable "project_id" {
  description = "Project that owns the service accounts."
  type        = string
  nullable    = false
}

variable "service_accounts" {
  description = "Service accounts by account id, one per role in the system."
  type = map(object({
    description  = optional(string)
    display_name = optional(string)
  }))
  nullable = false
  validation {
    condition     = alltrue([for id in keys(var.service_accounts) : can(regex("^[a-z]([-a-z0-9]{4,28}[a-z0-9])$", id))])
    error_message = "Service account ids must be 6-30 characters: lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "token_creators" {
  description = "Members that may mint tokens for a service account (e.g. the Pub/Sub service agent for push OIDC), keyed by a static name."
  type = map(object({
    member          = string
    service_account = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for b in values(var.token_creators) : contains(keys(var.service_accounts), b.service_account)])
    error_message = "token_creators.*.service_account must be a key of service_accounts."
  }
}
