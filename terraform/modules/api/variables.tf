variable "config" {
  description = "The API service. timeout_seconds bounds a create's `wait` and an event stream's life (clients reconnect); public lets callers without a Google identity in (the API checks their Firebase ID tokens)."
  type = object({
    concurrency     = optional(number, 80)
    cpu             = optional(string, "1")
    env             = optional(map(string), {})
    image           = string
    ingress         = optional(string, "INGRESS_TRAFFIC_ALL")
    max_instances   = optional(number, 10)
    memory          = optional(string, "512Mi")
    min_instances   = optional(number, 0)
    name            = optional(string, "api")
    public          = optional(bool, true)
    timeout_seconds = optional(number, 300)
  })
  nullable = false
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.config.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL (apps call it), INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
  validation {
    condition     = var.config.min_instances >= 0 && var.config.max_instances >= max(1, var.config.min_instances)
    error_message = "Need 0 <= min_instances <= max_instances and max_instances >= 1."
  }
  validation {
    condition     = var.config.concurrency >= 1 && var.config.concurrency <= 1000
    error_message = "concurrency (max_instance_request_concurrency) must be between 1 and 1000."
  }
  validation {
    condition     = var.config.timeout_seconds >= 1 && var.config.timeout_seconds <= 3600
    error_message = "timeout_seconds must be between 1 and 3600 (Cloud Run request timeout)."
  }
  validation {
    condition     = !contains(keys(var.config.env), "FIREBASE_AUTH_EMULATOR_HOST") && !contains(keys(var.config.env), "SIGNING_KEY_FILE")
    error_message = "FIREBASE_AUTH_EMULATOR_HOST and SIGNING_KEY_FILE are for the local stack only: emulator tokens are unsigned, and production signs URLs through IAM."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service from Terraform."
  type        = bool
  nullable    = false
  default     = true
}

variable "labels" {
  description = "Labels applied to the service."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "project_id" {
  description = "Project of the service."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Region of the Cloud Run service."
  type        = string
  nullable    = false
}

variable "service_account" {
  description = "Email of the identity the API runs as; it also signs the upload and result URLs (through IAM, as itself)."
  type        = string
  nullable    = false
}
