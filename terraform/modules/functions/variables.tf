variable "config" {
  description = "Settings shared by every function service."
  type = object({
    concurrency     = optional(number, 80)
    cpu             = optional(string, "1")
    env             = optional(map(string), {})
    image           = string
    ingress         = optional(string, "INGRESS_TRAFFIC_INTERNAL_ONLY")
    max_instances   = optional(number, 10)
    memory          = optional(string, "512Mi")
    min_instances   = optional(number, 0)
    source_file     = optional(string) # functions-framework --source; null = its default (main.py)
    timeout_seconds = optional(number, 60)
  })
  nullable = false
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.config.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY (Eventarc still reaches it) or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
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
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run services from Terraform."
  type        = bool
  nullable    = false
  default     = true
}

variable "firestore_location" {
  description = "Location of the Firestore database: Firestore triggers must be created there (a region, or a multi-region such as nam5)."
  type        = string
  nullable    = false
}

variable "functions" {
  description = "Functions by Cloud Run service name, from the topology module: target and trigger."
  type = map(object({
    target = string
    trigger = object({
      database   = optional(string)
      document   = optional(string)
      event_type = string
      kind       = string
      topic      = optional(string)
    })
  }))
  nullable = false
  validation {
    condition     = alltrue([for f in values(var.functions) : contains(["pubsub", "firestore"], f.trigger.kind)])
    error_message = "functions.*.trigger.kind must be pubsub or firestore."
  }
}

variable "labels" {
  description = "Labels applied to services and triggers."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "project_id" {
  description = "Project of the services and triggers."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Region of the Cloud Run services (and of the Pub/Sub triggers)."
  type        = string
  nullable    = false
}

variable "service_accounts" {
  description = "runtime: identity the functions run as. trigger: identity Eventarc uses to invoke them (gets run.invoker)."
  type = object({
    runtime = string
    trigger = string
  })
  nullable = false
}

variable "topic_ids" {
  description = "Topic ids by name; pubsub triggers read their topic from here."
  type        = map(string)
  nullable    = false
  validation {
    condition     = alltrue([for f in values(var.functions) : f.trigger.kind != "pubsub" || contains(keys(var.topic_ids), coalesce(f.trigger.topic, "-"))])
    error_message = "Every pubsub-triggered function's topic must be a key of topic_ids."
  }
}
