variable "project_id" {
  description = "Project of the jobs."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Region of the jobs."
  type        = string
  nullable    = false
}

variable "schedules" {
  description = "Cloud Scheduler jobs by name, each publishing a message to a topic (topic is a key of topic_ids)."
  type = map(object({
    attributes = optional(map(string), {})
    data       = optional(string, "{}")
    schedule   = string
    time_zone  = optional(string, "Etc/UTC")
    topic      = string
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for j in values(var.schedules) : length(split(" ", trimspace(j.schedule))) == 5])
    error_message = "schedule must be a five-field unix-cron expression, e.g. \"* * * * *\" for every minute."
  }
}

variable "topic_ids" {
  description = "Topic ids by name."
  type        = map(string)
  nullable    = false
  validation {
    condition     = alltrue([for j in values(var.schedules) : contains(keys(var.topic_ids), j.topic)])
    error_message = "Every schedules.*.topic must be a key of topic_ids."
  }
}
