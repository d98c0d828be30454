# Normalises the topology into the maps the resource modules iterate over. Nothing here names a
# resource: every name comes from a key of topology.yaml, or from `var.naming` applied to one.

locals {
  t = var.topology

  # Only the attributes an override actually sets, so merge() keeps the defaults for the rest.
  defaults = { for k, v in local.t.pipeline_defaults : k => v if v != null }
  overrides = {
    for name, p in local.t.pipelines : name => { for k, v in p : k => v if v != null }
  }

  # merge() is shallow, like infra/topology.py: an override's retry_policy or dead_letter
  # replaces the default object whole.
  pipelines = {
    for name, o in local.overrides : name => merge(local.defaults, o, {
      name         = name
      topic        = format(var.naming.pipeline_topic, name)
      subscription = format(var.naming.pipeline_subscription, name)
      push_path    = format(var.naming.push_path, name)
      retry_policy = try(o.retry_policy, try(local.defaults.retry_policy, null))
      dead_letter  = try(o.dead_letter, try(local.defaults.dead_letter, null))
    })
  }

  pipeline_topics = { for p in values(local.pipelines) : p.topic => { message_retention_seconds = tonumber(null) } }

  topics = merge(
    { for name, v in local.t.topics : name => { message_retention_seconds = v.message_retention_seconds } },
    local.pipeline_topics,
  )

  subscriptions = {
    for p in values(local.pipelines) : p.subscription => {
      ack_deadline_seconds      = p.ack_deadline_seconds
      dead_letter               = p.dead_letter
      message_retention_seconds = p.message_retention_seconds
      mode                      = p.mode
      pipeline                  = p.name
      push_path                 = p.push_path
      retry_policy              = p.retry_policy
      topic                     = p.topic
    }
  }

  functions = {
    for name, f in local.t.functions : name => {
      target = f.target
      trigger = f.trigger.pubsub_topic != null ? {
        kind       = "pubsub"
        topic      = f.trigger.pubsub_topic
        event_type = "google.cloud.pubsub.topic.v1.messagePublished"
        database   = tostring(null)
        document   = tostring(null)
        } : {
        kind       = "firestore"
        topic      = tostring(null)
        event_type = f.trigger.firestore.event_type
        database   = local.t.firestore.database
        document   = f.trigger.firestore.document
      }
    }
  }

  notifications = {
    for bucket, b in local.t.buckets : bucket => {
      bucket            = bucket
      custom_attributes = b.notification.custom_attributes
      event_types       = b.notification.event_types
      object_prefix     = b.notification.object_prefix
      topic             = b.notification.topic
    } if b.notification != null
  }
}
