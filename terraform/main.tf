# infra/topology.yaml declares buckets, topics, functions and per-pipeline subscriptions once; the
# local emulator stack reads the same file. Nothing below names a topic, subscription, function or
# bucket: they all come from module.topology.

locals {
  topology = yamldecode(file("${path.module}/../infra/topology.yaml"))
}

module "topology" {
  source   = "./modules/topology"
  topology = local.topology
}

locals {
  # Pipeline names (ENABLED_PIPELINES) never include parts: a multi-part pipeline's parts are
  # routes of their own (topic, subscription, push path) in module.topology.subscriptions, with
  # the pipeline's mode, so a pull pipeline's part subscriptions are pulled by the same consumer.
  pipelines      = module.topology.pipelines
  push_pipelines = sort([for p in values(local.pipelines) : p.name if p.mode == "push"])
  pull_pipelines = sort([for p in values(local.pipelines) : p.name if p.mode == "pull"])
  pull_subs      = { for name, s in module.topology.subscriptions : name => s if s.mode == "pull" }
  worker_pool    = var.worker_pool_config.enabled && length(local.pull_pipelines) > 0
  # `python -m gpu_service` serves pushes and runs a streaming-pull consumer for each enabled
  # pull-mode pipeline: without a worker pool the service consumes the pull pipelines too.
  service_pipelines = local.worker_pool ? local.push_pipelines : sort(keys(local.pipelines))

  bucket_names = {
    for key in module.topology.buckets : key => lookup(var.bucket_config.names, key, "${var.project_id}-${key}")
  }

  # One service account per role; ids are not topology names.
  sa = {
    eventarc_invoker = "eventarc-invoker"
    functions        = "fn-runtime"
    gpu_service      = "gpu-runtime"
    push_invoker     = "pubsub-push-invoker"
  }
  sa_email  = { for role, id in local.sa : role => module.service_accounts.emails[id] }
  sa_member = { for role, id in local.sa : role => module.service_accounts.members[id] }

  # infra/settings.py fields both deployables read (ENABLED_PIPELINES is comma-separated;
  # nested keys such as PIPELINES__TRANSCRIBE__MODEL_DIR use __).
  common_env = merge(
    {
      GOOGLE_CLOUD_PROJECT = var.project_id
      JOBS_COLLECTION      = module.topology.firestore.jobs_collection
      TOPIC_PREFIX         = module.topology.pipeline_topic_prefix
    },
    length(module.topology.dead_letter_topics) == 1 ? { DEAD_LETTER_TOPIC = module.topology.dead_letter_topics[0] } : {},
    { for key, name in local.bucket_names : "${upper(replace(key, "-", "_"))}_BUCKET" => name },
  )

  # The push request timeout must cover the longest push ack deadline.
  gpu_timeout_seconds = coalesce(
    var.gpu_service_config.timeout_seconds,
    max(concat([for p in values(local.pipelines) : p.ack_deadline_seconds if p.mode == "push"], [60])...),
  )

  services = concat(
    [
      "cloudresourcemanager.googleapis.com",
      "eventarc.googleapis.com",
      "firebaserules.googleapis.com",
      "firestore.googleapis.com",
      "iam.googleapis.com",
      "pubsub.googleapis.com",
      "run.googleapis.com",
      "storage.googleapis.com",
    ],
    length(module.topology.schedules) > 0 ? ["cloudscheduler.googleapis.com"] : [],
    var.bucket_config.firebase_link ? ["firebase.googleapis.com", "firebasestorage.googleapis.com"] : [],
  )
}

module "project" {
  source     = "./modules/project"
  project_id = var.project_id
  services   = local.services
  iam_bindings_additive = {
    # Eventarc direct events (Firestore) are delivered to the trigger's identity.
    eventarc-invoker-event-receiver = {
      member = local.sa_member.eventarc_invoker
      role   = "roles/eventarc.eventReceiver"
    }
  }
}

module "service_accounts" {
  source     = "./modules/service-accounts"
  project_id = module.project.project_id
  service_accounts = {
    (local.sa.eventarc_invoker) = { description = "Eventarc triggers: invokes the function services." }
    (local.sa.functions)        = { description = "Function services: validate events, create jobs, publish to pipeline topics." }
    (local.sa.gpu_service)      = { description = "GPU service and worker pool: read inputs, run pipelines, write results and job status." }
    (local.sa.push_invoker)     = { description = "Pub/Sub push subscriptions: OIDC identity that invokes the GPU service." }
  }
  # The Pub/Sub service agent signs the OIDC tokens of push subscriptions and Pub/Sub-transport
  # Eventarc triggers (required explicitly in projects created before April 2021).
  token_creators = {
    pubsub-agent-push-invoker = {
      member          = "serviceAccount:${module.project.service_agents.pubsub}"
      service_account = local.sa.push_invoker
    }
    pubsub-agent-eventarc-invoker = {
      member          = "serviceAccount:${module.project.service_agents.pubsub}"
      service_account = local.sa.eventarc_invoker
    }
  }
}

module "storage" {
  source        = "./modules/storage"
  project_id    = module.project.project_id
  buckets       = { for key, name in local.bucket_names : key => { name = name } }
  firebase_link = var.bucket_config.firebase_link
  firebase_rules = (
    var.bucket_config.firebase_link && var.bucket_config.firebase_rules ? file("${path.module}/../infra/storage.rules") : null
  )
  labels = var.labels
  config = {
    cors_origins  = var.bucket_config.cors_origins
    force_destroy = var.bucket_config.force_destroy
    location      = coalesce(var.bucket_config.location, var.region)
    versioning    = var.bucket_config.versioning
  }
  notifications = {
    for key, n in module.topology.notifications : key => {
      custom_attributes = n.custom_attributes
      event_types       = n.event_types
      object_prefix     = n.object_prefix
      topic_id          = module.pubsub.topic_ids[n.topic]
    }
  }
  iam_bindings_additive = merge(
    {
      for pair in setproduct(keys(local.bucket_names), var.bucket_config.roles.functions) :
      "functions-${pair[0]}-${pair[1]}" => { bucket = pair[0], role = pair[1], member = local.sa_member.functions }
    },
    {
      for pair in setproduct(keys(local.bucket_names), var.bucket_config.roles.gpu_service) :
      "gpu-service-${pair[0]}-${pair[1]}" => { bucket = pair[0], role = pair[1], member = local.sa_member.gpu_service }
    },
  )
}

module "firestore" {
  source     = "./modules/firestore"
  project_id = module.project.project_id
  database = {
    create            = var.firestore_config.create_database
    delete_protection = var.firestore_config.delete_protection
    id                = module.topology.firestore.database
    location_id       = coalesce(var.firestore_config.location_id, var.region)
  }
  rules = var.firestore_config.rules ? file("${path.module}/../infra/firestore.rules") : null
  iam_datastore_users = {
    functions   = local.sa_member.functions
    gpu-service = local.sa_member.gpu_service
  }
}

module "pubsub" {
  source               = "./modules/pubsub"
  project_id           = module.project.project_id
  labels               = var.labels
  pubsub_service_agent = module.project.service_agents.pubsub
  topics               = module.topology.topics
  subscriptions = {
    for name, s in module.topology.subscriptions : name => {
      ack_deadline_seconds      = s.ack_deadline_seconds
      dead_letter               = s.dead_letter
      message_retention_seconds = s.message_retention_seconds
      retry_policy              = s.retry_policy
      topic                     = s.topic
      push = s.mode != "push" ? null : {
        endpoint              = "${module.gpu_service.uri}${s.push_path}"
        audience              = module.gpu_service.uri
        service_account_email = local.sa_email.push_invoker
      }
    }
  }
  topic_iam_bindings_additive = merge(
    # The functions fan accepted work out to the pipeline topics (and the sweeper re-publishes
    # stale work, the parts of a multi-part job included).
    {
      for s in values(module.topology.subscriptions) : "functions-publish-${s.route}" => {
        topic  = s.topic
        role   = "roles/pubsub.publisher"
        member = local.sa_member.functions
      }
    },
    # The first step of a multi-part job runs in the GPU service (or worker pool) and publishes
    # the job's parts to their topics.
    {
      for s in values(module.topology.subscriptions) : "gpu-service-publish-${s.route}" => {
        topic  = s.topic
        role   = "roles/pubsub.publisher"
        member = local.sa_member.gpu_service
      } if s.part != null
    },
  )
  # Pull-mode pipelines (and their parts) are consumed by streaming pull, in the worker pool or in
  # the GPU service; both run as the GPU service identity.
  subscription_iam_bindings_additive = {
    for name, s in local.pull_subs : "gpu-service-subscribe-${s.route}" => {
      subscription = name
      role         = "roles/pubsub.subscriber"
      member       = local.sa_member.gpu_service
    }
  }
}

module "gpu_service" {
  source              = "./modules/gpu-service"
  project_id          = module.project.project_id
  region              = var.region
  deletion_protection = var.deletion_protection
  labels              = var.labels
  service_account     = local.sa_email.gpu_service
  config = {
    accelerator                   = var.gpu_service_config.accelerator
    concurrency                   = var.gpu_service_config.concurrency
    cpu                           = var.gpu_service_config.cpu
    gpu_zonal_redundancy_disabled = var.gpu_service_config.gpu_zonal_redundancy_disabled
    image                         = var.gpu_service_image
    ingress                       = var.ingress
    max_instances                 = var.gpu_service_config.max_instances
    memory                        = var.gpu_service_config.memory
    min_instances                 = var.gpu_service_config.min_instances
    name                          = var.gpu_service_config.name
    startup_probe                 = var.gpu_service_config.startup_probe
    timeout_seconds               = local.gpu_timeout_seconds
    env = merge(
      local.common_env,
      {
        ENABLED_PIPELINES   = join(",", local.service_pipelines)
        MAX_CONCURRENT_JOBS = tostring(var.gpu_service_config.concurrency)
      },
      var.gpu_service_config.env,
    )
  }
  invokers = {
    push-invoker = local.sa_member.push_invoker
  }
  worker_pool = {
    args           = var.worker_pool_config.args
    command        = var.worker_pool_config.command
    enabled        = local.worker_pool
    env            = { ENABLED_PIPELINES = join(",", local.pull_pipelines) }
    instance_count = var.worker_pool_config.instance_count
    name           = var.worker_pool_config.name
    subscriptions  = [for name in keys(local.pull_subs) : module.pubsub.subscription_ids[name]]
  }
}

module "functions" {
  source              = "./modules/functions"
  project_id          = module.project.project_id
  region              = var.region
  deletion_protection = var.deletion_protection
  labels              = var.labels
  functions           = module.topology.functions
  topic_ids           = module.pubsub.topic_ids
  firestore_location  = module.firestore.location_id
  service_accounts = {
    runtime = local.sa_email.functions
    trigger = local.sa_email.eventarc_invoker
  }
  config = {
    concurrency     = var.functions_config.concurrency
    cpu             = var.functions_config.cpu
    image           = var.functions_image
    ingress         = var.ingress
    max_instances   = var.functions_config.max_instances
    memory          = var.functions_config.memory
    min_instances   = var.functions_config.min_instances
    source_file     = var.functions_config.source_file
    timeout_seconds = var.functions_config.timeout_seconds
    env = merge(
      local.common_env,
      { ENABLED_PIPELINES = join(",", sort(keys(local.pipelines))) },
      var.functions_config.env,
    )
  }
  depends_on = [module.firestore]
}

module "scheduler" {
  source     = "./modules/scheduler"
  project_id = module.project.project_id
  region     = var.region
  schedules  = module.topology.schedules
  topic_ids  = module.pubsub.topic_ids
}

check "pull_pipelines_have_a_consumer" {
  assert {
    condition     = length(local.pull_pipelines) == 0 || local.worker_pool || var.gpu_service_config.min_instances >= 1
    error_message = "Pipelines ${join(", ", local.pull_pipelines)} are in pull mode, but there is no worker pool and the GPU service scales to zero, so nothing pulls them: set worker_pool_config.enabled = true or gpu_service_config.min_instances >= 1."
  }
}
