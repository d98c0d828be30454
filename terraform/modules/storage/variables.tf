variable "buckets" {
  description = "Buckets by topology key. name = the real (globally unique) bucket name."
  type = map(object({
    name = string
  }))
  nullable = false
  validation {
    condition     = alltrue([for b in values(var.buckets) : can(regex("^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$", b.name))])
    error_message = "Bucket names must be 3-63 characters of lowercase letters, digits, -, _ and ., starting and ending with a letter or digit."
  }
}

variable "config" {
  description = "Settings shared by every bucket."
  type = object({
    cors_origins        = optional(list(string), [])
    custom_time_expiry  = optional(bool, true)
    force_destroy       = optional(bool, false)
    location            = string
    noncurrent_ttl_days = optional(number, 7)
    storage_class       = optional(string, "STANDARD")
    ttl_days            = optional(map(number), {})
    versioning          = optional(bool, false)
  })
  nullable = false
  validation {
    condition     = alltrue([for o in var.config.cors_origins : o == "*" || can(regex("^https?://", o))])
    error_message = "cors_origins are web origins such as \"https://my-app.web.app\" (or \"*\")."
  }
  validation {
    condition     = alltrue([for folder, days in var.config.ttl_days : can(regex("^[a-z0-9][a-z0-9_.-]*$", folder)) && (days == null || days >= 0)])
    error_message = "ttl_days maps a top-level folder name (no slash), e.g. uploads, to a number of days >= 0 (0 or null keeps objects forever)."
  }
}

variable "firebase_link" {
  description = "Link the buckets to Firebase so the Firebase Storage client SDKs can use them (the project must already be a Firebase project)."
  type        = bool
  nullable    = false
  default     = false
}

variable "firebase_rules" {
  description = "Content of the Firebase Storage security rules (infra/storage.rules), released on every bucket when firebase_link is true. Null leaves the rules alone."
  type        = string
  default     = null
}

variable "iam_bindings_additive" {
  description = "Bucket-level IAM members to add, keyed by a static name. bucket is a key of var.buckets."
  type = map(object({
    bucket = string
    member = string
    role   = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for b in values(var.iam_bindings_additive) : contains(keys(var.buckets), b.bucket)])
    error_message = "iam_bindings_additive.*.bucket must be a key of buckets."
  }
}

variable "labels" {
  description = "Labels applied to every bucket."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "notifications" {
  description = "Pub/Sub notifications by bucket key (JSON_API_V1 payload). topic is the topic name (known at plan time), topic_id its full id (may be unknown until apply)."
  type = map(object({
    event_types   = list(string)
    object_prefix = optional(string)
    topic         = string
    topic_id      = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for k in keys(var.notifications) : contains(keys(var.buckets), k)])
    error_message = "notifications are keyed by bucket key and each key must be in buckets."
  }
}

variable "project_id" {
  description = "Project that owns the buckets."
  type        = string
  nullable    = false
}

variable "storage_service_agent" {
  description = "IAM member of the Cloud Storage service agent, which publishes the notifications (may be unknown until apply)."
  type        = string
  nullable    = false
}
