variable "naming" {
  description = <<-EOT
    How per-pipeline resource names are derived (format() strings). pipeline_topic,
    pipeline_subscription and push_path take one %s, the pipeline name. A part of a multi-part
    pipeline is a route of its own: part_route (two %s: pipeline, part) names it, and that name goes
    through pipeline_topic and pipeline_subscription like a pipeline name; part_push_path (two %s:
    the pipeline's push path, part) is its push path, e.g. /push/P/PART.
  EOT
  type = object({
    part_push_path        = optional(string, "%s/%s")
    part_route            = optional(string, "%s-%s")
    pipeline_topic        = optional(string, "jobs-%s")
    pipeline_subscription = optional(string, "jobs-%s-gpu")
    push_path             = optional(string, "/push/%s")
  })
  nullable = false
  default  = {}
  validation {
    condition = alltrue([
      for k, f in var.naming : length(regexall("%s", f)) == (startswith(k, "part_") ? 2 : 1)
    ]) && endswith(var.naming.pipeline_topic, "%s")
    error_message = "Each naming format must contain exactly one %s (the pipeline name; two for part_route and part_push_path: pipeline, part), and pipeline_topic must end with it (the services only know a topic prefix), e.g. \"jobs-%s\"."
  }
}

variable "topology" {
  description = "The decoded infra/topology.yaml. Keys are the real resource names; see that file for their meaning."
  type = object({
    buckets = optional(map(object({
      # Only the fields infra/topology.py accepts (it rejects any other, custom_attributes included).
      notification = optional(object({
        event_types   = list(string)
        object_prefix = optional(string)
        topic         = string
      }))
    })), {})
    firestore = object({
      database        = optional(string, "(default)")
      jobs_collection = string
    })
    functions = optional(map(object({
      target = string
      trigger = object({
        firestore = optional(object({
          document   = string
          event_type = string
        }))
        pubsub_topic = optional(string)
      })
    })), {})
    pipeline_defaults = object({
      ack_deadline_seconds = optional(number, 10)
      dead_letter = optional(object({
        max_delivery_attempts = number
        topic                 = string
      }))
      message_retention_seconds = optional(number, 86400) # defaults as in infra/topology.py
      mode                      = optional(string, "push")
      parts                     = optional(list(string), [])
      retry_policy = optional(object({
        maximum_backoff_seconds = number
        minimum_backoff_seconds = number
      }))
    })
    # Overrides are merged shallowly, as infra/topology.py does: a nested object (retry_policy,
    # dead_letter) replaces the default one whole, so it must be complete.
    pipelines = optional(map(object({
      ack_deadline_seconds = optional(number)
      dead_letter = optional(object({
        max_delivery_attempts = number
        topic                 = string
      }))
      message_retention_seconds = optional(number)
      mode                      = optional(string)
      # A multi-part pipeline: besides its own route, each part gets a topic and subscription
      # (see var.naming) with the pipeline's settings. Absent = the defaults' (normally none).
      parts = optional(list(string))
      retry_policy = optional(object({
        maximum_backoff_seconds = number
        minimum_backoff_seconds = number
      }))
    })), {})
    # Cloud Scheduler jobs that publish to a topic (a function subscribed to that topic does the
    # work, so every function keeps the CloudEvent signature). Absent from topology.yaml = none.
    schedules = optional(map(object({
      schedule = string
      topic    = string
    })), {})
    topics = optional(map(object({
      message_retention_seconds = optional(number)
    })), {})
  })
  nullable = false

  # --- names -------------------------------------------------------------------------------
  validation {
    condition = alltrue([
      for name in concat(
        keys(var.topology.topics),
        [for p in keys(var.topology.pipelines) : format(var.naming.pipeline_subscription, p)],
        flatten([
          for name, p in var.topology.pipelines : [
            for part in coalesce(p.parts, var.topology.pipeline_defaults.parts) :
            format(var.naming.pipeline_subscription, format(var.naming.part_route, name, part))
          ]
        ]),
      ) :
      can(regex("^[a-zA-Z][a-zA-Z0-9._~%+-]{2,254}$", name)) && !startswith(lower(name), "goog")
    ])
    error_message = "Topic and subscription names must be 3-255 characters, start with a letter, use only letters, digits and -._~%+, and not start with \"goog\"."
  }
  validation {
    condition     = alltrue([for name in keys(var.topology.pipelines) : can(regex("^[a-z][a-z0-9_]{0,39}$", name))])
    error_message = "Pipeline names must be 1-40 lowercase letters, digits or underscores, starting with a letter (they become topic names, URL paths and PIPELINES__<NAME>__ settings; core/routes.py checks the same)."
  }
  validation {
    condition = alltrue(flatten([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) : [
        for part in coalesce(p.parts, []) : can(regex("^[a-z][a-z0-9_]{0,39}$", part))
      ]
    ]))
    error_message = "Pipeline part names must be 1-40 lowercase letters, digits or underscores, starting with a letter (they become topic and subscription names and URL paths; '-' separates a shard's index; core/routes.py checks the same)."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      length(distinct(coalesce(p.parts, []))) == length(coalesce(p.parts, []))
    ])
    error_message = "A pipeline's parts must be unique."
  }
  validation {
    condition     = alltrue([for name in keys(var.topology.functions) : can(regex("^[a-z]([a-z0-9-]{0,47}[a-z0-9])?$", name))])
    error_message = "Function names are Cloud Run service names: at most 49 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."
  }
  validation {
    condition     = alltrue([for name in keys(var.topology.buckets) : can(regex("^[a-z0-9][a-z0-9_-]{0,40}$", name))])
    error_message = "Bucket keys must be short lowercase ids (letters, digits, - or _); the real bucket name is derived from them."
  }

  # --- references --------------------------------------------------------------------------
  validation {
    condition = alltrue([
      for b in values(var.topology.buckets) :
      b.notification == null ? true : contains(keys(var.topology.topics), b.notification.topic)
    ])
    error_message = "Every buckets.*.notification.topic must be declared under topics."
  }
  validation {
    condition = alltrue([
      for b in values(var.topology.buckets) :
      b.notification == null ? true : alltrue([
        for t in b.notification.event_types : contains(["OBJECT_FINALIZE", "OBJECT_METADATA_UPDATE", "OBJECT_DELETE", "OBJECT_ARCHIVE"], t)
      ])
    ])
    error_message = "buckets.*.notification.event_types must be among OBJECT_FINALIZE, OBJECT_METADATA_UPDATE, OBJECT_DELETE, OBJECT_ARCHIVE."
  }
  validation {
    condition = alltrue([
      for f in values(var.topology.functions) : (f.trigger.pubsub_topic == null) != (f.trigger.firestore == null)
    ])
    error_message = "Each functions.*.trigger must set exactly one of pubsub_topic or firestore."
  }
  validation {
    condition = alltrue([
      for f in values(var.topology.functions) :
      f.trigger.pubsub_topic == null ? true : contains(concat(
        keys(var.topology.topics),
        [for p in keys(var.topology.pipelines) : format(var.naming.pipeline_topic, p)],
      ), f.trigger.pubsub_topic)
    ])
    error_message = "Every functions.*.trigger.pubsub_topic must be declared under topics (or be a pipeline topic)."
  }
  validation {
    condition = alltrue([
      for f in values(var.topology.functions) :
      f.trigger.firestore == null ? true : startswith(f.trigger.firestore.event_type, "google.cloud.firestore.document.v1.")
    ])
    error_message = "functions.*.trigger.firestore.event_type must be a google.cloud.firestore.document.v1.* event type (e.g. ...created)."
  }
  validation {
    condition = alltrue([
      for s in values(var.topology.schedules) : contains(concat(
        keys(var.topology.topics),
        [for p in keys(var.topology.pipelines) : format(var.naming.pipeline_topic, p)],
      ), s.topic)
    ])
    error_message = "Every schedules.*.topic must be declared under topics (or be a pipeline topic)."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      try(p.dead_letter.topic, null) == null ? true : contains(keys(var.topology.topics), p.dead_letter.topic)
    ])
    error_message = "pipeline dead_letter.topic must be declared under topics (it is shared, so it is not derived)."
  }

  # --- Pub/Sub limits, checked on the defaults and on every override, so every merged value
  # --- is in range too. Limits: https://cloud.google.com/pubsub/quotas#resource_limits
  # --- The numbers are core/pubsub.py's; tests/unit/test_pubsub_limits.py holds them equal.
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      p.mode == null ? true : contains(["push", "pull"], p.mode)
    ])
    error_message = "pipeline mode must be \"push\" (GPU Cloud Run service) or \"pull\" (worker pool)."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      p.ack_deadline_seconds == null ? true : (p.ack_deadline_seconds >= 10 && p.ack_deadline_seconds <= 600)
    ])
    error_message = "ack_deadline_seconds must be between 10 and 600 (Pub/Sub limit; for push it is also the request timeout). Use mode: pull for longer jobs."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      try(p.dead_letter.max_delivery_attempts, null) == null ? true : (p.dead_letter.max_delivery_attempts >= 5 && p.dead_letter.max_delivery_attempts <= 100)
    ])
    error_message = "dead_letter.max_delivery_attempts must be between 5 and 100 (Pub/Sub limit)."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      p.retry_policy == null ? true : (
        p.retry_policy.minimum_backoff_seconds >= 0 && p.retry_policy.minimum_backoff_seconds <= 600 &&
        p.retry_policy.maximum_backoff_seconds >= 0 && p.retry_policy.maximum_backoff_seconds <= 600
      )
    ])
    error_message = "retry_policy backoffs must be between 0 and 600 seconds (Pub/Sub limit)."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      p.retry_policy == null ? true : p.retry_policy.minimum_backoff_seconds <= p.retry_policy.maximum_backoff_seconds
    ])
    error_message = "retry_policy.minimum_backoff_seconds must not exceed maximum_backoff_seconds."
  }
  validation {
    condition = alltrue([
      for p in concat([var.topology.pipeline_defaults], values(var.topology.pipelines)) :
      p.message_retention_seconds == null ? true : (p.message_retention_seconds >= 600 && p.message_retention_seconds <= 604800)
    ])
    error_message = "A pipeline's message_retention_seconds (its subscriptions' retention) must be between 600 (10 minutes) and 604800 (7 days)."
  }
  validation {
    condition = alltrue([
      for t in values(var.topology.topics) :
      t.message_retention_seconds == null ? true : (t.message_retention_seconds >= 600 && t.message_retention_seconds <= 2678400)
    ])
    error_message = "A topic's message_retention_seconds must be between 600 (10 minutes) and 2678400 (31 days)."
  }

  # --- required after the merge, as in infra/topology.py: every subscription has a retry policy
  # --- (backoff instead of immediate redelivery) and a dead-letter topic (so nothing loops forever).
  validation {
    condition = alltrue([
      for p in values(var.topology.pipelines) :
      p.retry_policy != null || var.topology.pipeline_defaults.retry_policy != null
    ])
    error_message = "Every pipeline needs a retry_policy (in pipeline_defaults or its own)."
  }
  validation {
    condition = alltrue([
      for p in values(var.topology.pipelines) :
      p.dead_letter != null || var.topology.pipeline_defaults.dead_letter != null
    ])
    error_message = "Every pipeline needs a dead_letter (in pipeline_defaults or its own)."
  }
}
