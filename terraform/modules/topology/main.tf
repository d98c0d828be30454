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

  # Every (pipeline, part) with its own topic and subscription, by route name: the pipeline's
  # own route (part = null, route = pipeline name) and, for a multi-part pipeline, one per part
  # (route = naming.part_route: P-PART -> topic jobs-P-PART, push path /push/P/PART).
  # Parts are not pipelines: they only get a route, with their pipeline's settings.
  routes = merge(
    {
      for p in values(local.pipelines) : p.name => {
        part         = tostring(null)
        pipeline     = p.name
        push_path    = p.push_path
        route        = p.name
        subscription = p.subscription
        topic        = p.topic
      }
    },
    {
      for r in flatten([
        for p in values(local.pipelines) : [
          for part in p.parts : {
            part     = part
            pipeline = p.name
            push     = format(var.naming.part_push_path, p.push_path, part)
            route    = format(var.naming.part_route, p.name, part)
          }
        ]
        ]) : r.route => {
        part         = r.part
        pipeline     = r.pipeline
        push_path    = r.push
        route        = r.route
        subscription = format(var.naming.pipeline_subscription, r.route)
        topic        = format(var.naming.pipeline_topic, r.route)
      }
    },
  )

  pipeline_topics = { for r in values(local.routes) : r.topic => { message_retention_seconds = tonumber(null) } }

  topics = merge(
    { for name, v in local.t.topics : name => { message_retention_seconds = v.message_retention_seconds } },
    local.pipeline_topics,
  )

  subscriptions = {
    for r in values(local.routes) : r.subscription => {
      ack_deadline_seconds      = local.pipelines[r.pipeline].ack_deadline_seconds
      dead_letter               = local.pipelines[r.pipeline].dead_letter
      message_retention_seconds = local.pipelines[r.pipeline].message_retention_seconds
      mode                      = local.pipelines[r.pipeline].mode
      part                      = r.part
      pipeline                  = r.pipeline
      push_path                 = r.push_path
      retry_policy              = local.pipelines[r.pipeline].retry_policy
      route                     = r.route
      topic                     = r.topic
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
      bucket        = bucket
      event_types   = b.notification.event_types
      object_prefix = b.notification.object_prefix
      topic         = b.notification.topic
    } if b.notification != null
  }
}
