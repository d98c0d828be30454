variable "config" {
  description = "Repository name and cleanup: always keep the newest keep_count versions of each image, delete other versions older than delete_after_days."
  type = object({
    delete_after_days = optional(number, 30)
    keep_count        = optional(number, 10)
    name              = string
  })
  nullable = false
  validation {
    condition     = var.config.keep_count >= 2 && var.config.delete_after_days >= 1
    error_message = "keep_count must be at least 2 (the running image and the one being rolled out) and delete_after_days at least 1."
  }
  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.config.name))
    error_message = "The repository name must be lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels applied to the repository."
  type        = map(string)
  nullable    = false
  default     = {}
}

variable "project_id" {
  description = "Project that owns the repository."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Repository location (the region of the Cloud Run services, so pulls stay in-region)."
  type        = string
  nullable    = false
}
