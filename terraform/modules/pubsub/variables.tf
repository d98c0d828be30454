variable "labels" {
  description = "Labels applied to topics and subscriptions."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "project_id" {
  description = "Project that owns the topics and subscriptions."
  type        = string
  nullable    = false
}

variable "pubsub_service_agent" {
  description = "IAM member of the Pub/Sub service agent (serviceAccount:service-NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com); it forwards dead letters. May be unknown until apply."
  type        = string
  nullable    = false
}

variable "subscription_iam_bindings_additive" {
  description = "Subscription-level IAM members to add, keyed by a static name. subscription is a key of subscriptions."
  type = map(object({
    member       = string
    role         = string
    subscription = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for b in values(var.subscription_iam_bindings_additive) : contains(keys(var.subscriptions), b.subscription)])
    error_message = "subscription_iam_bindings_additive.*.subscription must be a key of subscriptions."
  }
}

variable "subscriptions" {
  description = "Subscriptions by name. push = null makes a pull subscription; dead_letter.topic and topic are keys of topics."
  type = map(object({
    ack_deadline_seconds = number
    dead_letter = optional(object({
      max_delivery_attempts = number
      topic                 = string
    }))
    message_retention_seconds = optional(number, 604800)
    push = optional(object({
      audience              = optional(string)
      endpoint              = string
      service_account_email = string
    }))
    retry_policy = optional(object({
      maximum_backoff_seconds = optional(number, 600)
      minimum_backoff_seconds = optional(number, 10)
    }))
    topic = string
  }))
  nullable = false
  default  = {}
  validation {
    condition = alltrue([
      for s in values(var.subscriptions) : contains(keys(var.topics), s.topic) && (s.dead_letter == null ? true : contains(keys(var.topics), s.dead_letter.topic))
    ])
    error_message = "subscriptions.*.topic and dead_letter.topic must be keys of topics."
  }
  validation {
    condition     = alltrue([for s in values(var.subscriptions) : s.ack_deadline_seconds >= 10 && s.ack_deadline_seconds <= 600])
    error_message = "ack_deadline_seconds must be between 10 and 600."
  }
  validation {
    condition = alltrue([
      for s in values(var.subscriptions) : s.dead_letter == null ? true : (s.dead_letter.max_delivery_attempts >= 5 && s.dead_letter.max_delivery_attempts <= 100)
    ])
    error_message = "dead_letter.max_delivery_attempts must be between 5 and 100."
  }
  validation {
    condition = alltrue([
      for s in values(var.subscriptions) : s.retry_policy == null ? true : (
        s.retry_policy.minimum_backoff_seconds >= 0 && s.retry_policy.minimum_backoff_seconds <= 600 &&
        s.retry_policy.maximum_backoff_seconds >= 0 && s.retry_policy.maximum_backoff_seconds <= 600 &&
        s.retry_policy.minimum_backoff_seconds <= s.retry_policy.maximum_backoff_seconds
      )
    ])
    error_message = "retry_policy backoffs must be between 0 and 600 seconds, minimum <= maximum."
  }
  validation {
    condition     = alltrue([for s in values(var.subscriptions) : s.message_retention_seconds >= 600 && s.message_retention_seconds <= 604800])
    error_message = "A subscription's message_retention_seconds must be between 600 (10 minutes) and 604800 (7 days)."
  }
  validation {
    condition     = alltrue([for s in values(var.subscriptions) : s.push == null ? true : startswith(s.push.endpoint, "https://")])
    error_message = "push.endpoint must be an https:// URL (the GPU service URL plus its push path)."
  }
}

variable "topic_iam_bindings_additive" {
  description = "Topic-level IAM members to add, keyed by a static name. topic is a key of topics."
  type = map(object({
    member = string
    role   = string
    topic  = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for b in values(var.topic_iam_bindings_additive) : contains(keys(var.topics), b.topic)])
    error_message = "topic_iam_bindings_additive.*.topic must be a key of topics."
  }
}

variable "topics" {
  description = "Topics by name."
  type = map(object({
    message_retention_seconds = optional(number)
  }))
  nullable = false
}
