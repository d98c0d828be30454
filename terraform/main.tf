# infra/topology.yaml declares buckets, topics, functions and per-pipeline subscriptions once; the
# local emulator stack reads the same file. Nothing below names a topic, subscription, function or
# bucket: they all come from module.topology.

locals {
  # A fixed audience for push OIDC tokens: the service's own URL cannot be in its own environment
  # (a dependency cycle), so the service accepts this one as a custom audience.
  push_audience = "${var.gpu_service_config.name}-push.${var.project_id}"

  topology_file = yamldecode(file("${path.module}/../infra/topology.yaml"))
  # Plugin pipelines declare their routes in their specs; var.plugin_pipelines carries them
  # (`gpujobs pipelines --tfvars`). They join the file's pipelines, so every validation of
  # module.topology applies to them too; a pipeline the file declares keeps the file's entry.
  plugin_topology = {
    for name, p in var.plugin_pipelines : name => { for k, v in p : k => v if k != "needs_model" && v != null }
  }
  topology = merge(local.topology_file, {
    pipelines = merge(local.plugin_topology, try(local.topology_file.pipelines, {}))
  })
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

  # Which pipelines can serve. The service loads every enabled pipeline at start-up and reports
  # unhealthy while one cannot load, so a pipeline is only enabled when it has its model
  # (pipeline_config.P.models, paths inside the container) or needs none (needs_model = false,
  # e.g. inpaint's OpenCV backend; a plugin says so in plugin_pipelines). The others stay declared in the topology (topics and
  # subscriptions exist) but no deployable serves them: the functions reject their jobs.
  pipeline_config = {
    for name in keys(local.pipelines) : name => lookup(var.pipeline_config, name, {
      enabled = true, models = {}, needs_model = try(var.plugin_pipelines[name].needs_model, true), settings = {}
    })
  }
  servable_pipelines = sort([
    for name, c in local.pipeline_config : name if c.enabled && (!c.needs_model || length(c.models) > 0)
  ])
  unservable_pipelines = sort(setsubtract(keys(local.pipelines), local.servable_pipelines))
  # PIPELINES__<NAME>__<KEY> settings (infra/settings.py) of the pipelines that serve.
  pipeline_env = merge([
    for name in local.servable_pipelines : {
      for key, value in merge(local.pipeline_config[name].settings, local.pipeline_config[name].models) :
      "PIPELINES__${upper(name)}__${upper(key)}" => value
    }
  ]...)
  # The adapter bucket's mount path is the LORA_DIR of each servable pipeline that takes adapters
  # (a LORA_DIR in pipeline_config.settings wins).
  adapters = var.gpu_service_config.adapters
  adapter_env = local.adapters == null ? {} : {
    for name in setintersection(local.adapters.pipelines, local.servable_pipelines) :
    "PIPELINES__${upper(name)}__LORA_DIR" => local.adapters.mount_path
  }
  # The functions and the API run the pipelines' prechecks before queueing a job: a job's adapters
  # against the LoRA mode (a fused-mode service cannot apply other adapters) and a clip's length
  # and size against the service's limits, so they read those settings too (never the models).
  precheck_env = { for key, value in local.pipeline_env : key => value if can(regex("__(LORA_MODE|FUSED_LORAS|MAX_FRAMES|MAX_PIXELS)$", key)) }
  uses_vision_api = anytrue([
    for name in local.servable_pipelines : lower(lookup(local.pipeline_config[name].settings, "OCR_BACKEND", "")) == "vision"
  ])

  worker_pool = var.worker_pool_config.enabled && length(setintersection(local.pull_pipelines, local.servable_pipelines)) > 0
  # `python -m gpu_service` serves pushes and runs a streaming-pull consumer for each enabled
  # pull-mode pipeline: without a worker pool the service consumes the pull pipelines too.
  service_pipelines     = sort(setintersection(local.worker_pool ? local.push_pipelines : keys(local.pipelines), local.servable_pipelines))
  worker_pool_pipelines = sort(setintersection(local.pull_pipelines, local.servable_pipelines))
  worker_pool_instances = local.worker_pool ? var.worker_pool_config.instance_count : 0

  # A redeploy starts the new revision while the old one may still hold its GPU (an idle instance
  # is kept for up to 15 minutes; min_instances ones always): by default leave one GPU of the
  # quota free for that.
  gpu_max_instances = coalesce(var.gpu_service_config.max_instances, max(1, var.gpu_quota - 1 - local.worker_pool_instances))

  bucket_names = {
    for key in module.topology.buckets : key => lookup(var.bucket_config.names, key, "${var.project_id}-${key}")
  }

  # One service account per role; ids are not topology names.
  sa = {
    api              = "api-runtime"
    eventarc_invoker = "eventarc-invoker"
    functions        = "fn-runtime"
    gpu_service      = "gpu-runtime"
    push_invoker     = "pubsub-push-invoker"
  }
  sa_email  = { for role, id in local.sa : role => module.service_accounts.emails[id] }
  sa_member = { for role, id in local.sa : role => module.service_accounts.members[id] }

  # infra/settings.py fields both deployables read (ENABLED_PIPELINES is comma-separated;
  # nested keys such as PIPELINES__TRANSCRIBE__MODEL_DIR use __). Topic, subscription and push
  # names are not settings: both sides build them by construction (core/routes.py, and
  # module.topology, which the Terraform tests compare).
  common_env = merge(
    {
      GOOGLE_CLOUD_PROJECT = var.project_id
      JOBS_COLLECTION      = module.topology.firestore.jobs_collection
    },
    { for key, name in local.bucket_names : "${upper(replace(key, "-", "_"))}_BUCKET" => name },
  )

  # Per-user quotas, for the two deployables that admit jobs: the functions and the API.
  # retentionDays on a job is bounded by the results folder's TTL (docs/cost.md).
  admission_env = merge(
    var.quotas == null ? {} : { QUOTAS = jsonencode(var.quotas) },
    { RESULTS_TTL_DAYS = tostring(try(var.bucket_config.ttl_days["results"] > 0, false) ? var.bucket_config.ttl_days["results"] : 3650) },
  )

  # The push request timeout must cover the longest push ack deadline.
  gpu_timeout_seconds = coalesce(
    var.gpu_service_config.timeout_seconds,
    max(concat([for p in values(local.pipelines) : p.ack_deadline_seconds if p.mode == "push"], [60])...),
  )

  # Created explicitly (module.project) so that grants to them never race their creation.
  service_identities = ["eventarc.googleapis.com", "pubsub.googleapis.com"]

  services = concat(
    [
      "artifactregistry.googleapis.com",
      "cloudresourcemanager.googleapis.com",
      "eventarc.googleapis.com",
      "firebaserules.googleapis.com",
      # Push notifications of job ends to users' devices (functions/notify.py).
      "fcm.googleapis.com",
      "firestore.googleapis.com",
      "iam.googleapis.com",
      # The API signs upload and result URLs through IAM signBlob (no key file).
      "iamcredentials.googleapis.com",
      "identitytoolkit.googleapis.com",
      "pubsub.googleapis.com",
      "run.googleapis.com",
      "storage.googleapis.com",
    ],
    length(module.topology.schedules) > 0 ? ["cloudscheduler.googleapis.com"] : [],
    var.bucket_config.firebase_link ? ["firebase.googleapis.com", "firebasestorage.googleapis.com"] : [],
    # Firebase (Identity Toolkit is above: the API reads user records for revocation) and the web app's API key.
    var.firebase_config.create ? ["apikeys.googleapis.com", "firebase.googleapis.com"] : [],
    local.uses_vision_api ? ["vision.googleapis.com"] : [],
    var.usage_export_config.enabled ? ["bigquery.googleapis.com", "logging.googleapis.com"] : [],
  )
}

module "project" {
  source             = "./modules/project"
  project_id         = var.project_id
  services           = local.services
  service_identities = local.service_identities
  iam_bindings_additive = {
    # Eventarc direct events (Firestore) are delivered to the trigger's identity.
    eventarc-invoker-event-receiver = {
      member = local.sa_member.eventarc_invoker
      role   = "roles/eventarc.eventReceiver"
    }
    # Firebase Auth user records: the API checks revocation, the functions pick quota tiers.
    api-firebaseauth-viewer = {
      member = local.sa_member.api
      role   = "roles/firebaseauth.viewer"
    }
    functions-firebaseauth-viewer = {
      member = local.sa_member.functions
      role   = "roles/firebaseauth.viewer"
    }
    # The notification dispatcher (on-notify) sends FCM v1 messages to users' devices.
    functions-fcm-sender = {
      member = local.sa_member.functions
      role   = "roles/firebasecloudmessaging.admin"
    }
  }
}

module "service_accounts" {
  source     = "./modules/service-accounts"
  project_id = module.project.project_id
  service_accounts = {
    (local.sa.api)              = { description = "HTTP API: creates and validates jobs for signed-in users, signs upload and result URLs." }
    (local.sa.eventarc_invoker) = { description = "Eventarc triggers: invokes the function services." }
    (local.sa.functions)        = { description = "Function services: validate events, create jobs, publish to pipeline topics." }
    (local.sa.gpu_service)      = { description = "GPU service and worker pool: read inputs, run pipelines, write results and job status." }
    (local.sa.push_invoker)     = { description = "Pub/Sub push subscriptions: OIDC identity that invokes the GPU service." }
  }
  # The Pub/Sub service agent signs the OIDC tokens of push subscriptions and Pub/Sub-transport
  # Eventarc triggers (required explicitly in projects created before April 2021).
  token_creators = {
    pubsub-agent-push-invoker = {
      member          = module.project.service_agents.pubsub
      service_account = local.sa.push_invoker
    }
    pubsub-agent-eventarc-invoker = {
      member          = module.project.service_agents.pubsub
      service_account = local.sa.eventarc_invoker
    }
  }
}

module "firebase" {
  source     = "./modules/firebase"
  count      = var.firebase_config.create ? 1 : 0
  project_id = module.project.project_id
  auth = {
    anonymous                  = var.firebase_config.sign_in.anonymous
    autodelete_anonymous_users = var.firebase_config.autodelete_anonymous_users
    email_password             = var.firebase_config.sign_in.email_password
    authorized_domains = distinct(concat(
      ["localhost", "${var.project_id}.firebaseapp.com", "${var.project_id}.web.app"],
      var.firebase_config.authorized_domains,
    ))
  }
  web_app = {
    deletion_policy = var.firebase_config.web_app_deletion_policy
    display_name    = var.firebase_config.web_app_name
  }
}

module "storage" {
  source = "./modules/storage"
  # The Firebase link and the Storage rules need the Firebase project.
  project_id    = coalesce(one(module.firebase[*].project_id), module.project.project_id)
  buckets       = { for key, name in local.bucket_names : key => { name = name } }
  firebase_link = var.bucket_config.firebase_link
  firebase_rules = (
    var.bucket_config.firebase_link && var.bucket_config.firebase_rules ? file("${path.module}/../infra/storage.rules") : null
  )
  labels                = var.labels
  storage_service_agent = module.project.service_agents.storage
  config = {
    cors_origins  = var.bucket_config.cors_origins
    force_destroy = var.bucket_config.force_destroy
    location      = coalesce(var.bucket_config.location, var.region)
    ttl_days      = var.bucket_config.ttl_days
    versioning    = var.bucket_config.versioning
  }
  notifications = {
    for key, n in module.topology.notifications : key => {
      event_types   = n.event_types
      object_prefix = n.object_prefix
      topic         = n.topic
      topic_id      = module.pubsub.topic_ids[n.topic]
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
    {
      for pair in setproduct(keys(local.bucket_names), var.bucket_config.roles.api) :
      "api-${pair[0]}-${pair[1]}" => { bucket = pair[0], role = pair[1], member = local.sa_member.api }
    },
  )
}

module "firestore" {
  source = "./modules/firestore"
  # The rules release is a Firebase resource: after the Firebase project.
  project_id = coalesce(one(module.firebase[*].project_id), module.project.project_id)
  database = {
    create            = var.firestore_config.create_database
    delete_protection = var.firestore_config.delete_protection
    id                = module.topology.firestore.database
    location_id       = coalesce(var.firestore_config.location_id, var.region)
  }
  rules = var.firestore_config.rules ? file("${path.module}/../infra/firestore.rules") : null
  indexes = {
    # The GPU service's redriver: the oldest queued jobs (gpu_service/redrive.py).
    queued-by-age = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "status" }, { field_path = "queuedAt" }]
    }
    # ... the oldest queued interactive jobs, which a batch backlog must not hide (core/lanes.py).
    queued-by-lane = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "status" }, { field_path = "priority" }, { field_path = "queuedAt" }]
    }
    # ... and the queued jobs of users with nothing running (its fairness pass, uid not-in).
    queued-by-user = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "status" }, { field_path = "uid" }]
    }
    # The notification dispatcher's second look when a few owners filled its scan: the due jobs
    # of the other owners, longest due first (uid not-in, functions/notify.py).
    notify-due-of-others = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "notifications.dueAt" }, { field_path = "uid" }]
    }
    # A user's jobs, newest first: the API's list and the web client's (api/service.py, web/).
    jobs-by-user = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "uid" }, { field_path = "createdAt", order = "DESCENDING" }]
    }
    # A followed queued job's place: the jobs of its pipeline queued before it (api/live.py).
    queued-ahead = {
      collection = module.topology.firestore.jobs_collection
      fields     = [{ field_path = "pipeline" }, { field_path = "status" }, { field_path = "queuedAt" }]
    }
    # ... and the pipeline's recent run times, newest first (its estimate).
    recent-runs = {
      collection = module.topology.firestore.jobs_collection
      fields = [
        { field_path = "pipeline" }, { field_path = "status" }, { field_path = "finishedAt", order = "DESCENDING" },
      ]
    }
  }
  iam_datastore_users = {
    api         = local.sa_member.api
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
        audience              = local.push_audience
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
    # The API queues the jobs it creates itself (the same handler as the functions').
    {
      for s in values(module.topology.subscriptions) : "api-publish-${s.route}" => {
        topic  = s.topic
        role   = "roles/pubsub.publisher"
        member = local.sa_member.api
      } if s.part == null
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
    adapters_bucket               = try(local.adapters.bucket, null)
    adapters_mount_path           = try(local.adapters.mount_path, null)
    concurrency                   = var.gpu_service_config.concurrency
    cpu                           = var.gpu_service_config.cpu
    custom_audiences              = [local.push_audience]
    gpu_zonal_redundancy_disabled = var.gpu_service_config.gpu_zonal_redundancy_disabled
    image                         = var.gpu_service_image
    ingress                       = var.ingress
    max_instances                 = local.gpu_max_instances
    memory                        = var.gpu_service_config.memory
    min_instances                 = var.gpu_service_config.min_instances
    models_bucket                 = var.gpu_service_config.models_bucket
    name                          = var.gpu_service_config.name
    startup_probe                 = var.gpu_service_config.startup_probe
    timeout_seconds               = local.gpu_timeout_seconds
    env = merge(
      local.common_env,
      local.adapter_env,
      local.pipeline_env,
      {
        ENABLED_PIPELINES   = join(",", local.service_pipelines)
        MAX_CONCURRENT_JOBS = tostring(var.gpu_service_config.concurrency)
        # The service verifies each push's OIDC token (gpu_service/auth.py): signed for this
        # audience, by this account. Also read by the worker pool, which merges this env.
        PUSH_AUDIENCE        = local.push_audience
        PUSH_SERVICE_ACCOUNT = local.sa_email.push_invoker
      },
      var.gpu_service_config.model_concurrency == null ? {} : {
        MODEL_CONCURRENCY = tostring(var.gpu_service_config.model_concurrency)
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
    env            = { ENABLED_PIPELINES = join(",", local.worker_pool_pipelines) }
    instance_count = var.worker_pool_config.instance_count
    name           = var.worker_pool_config.name
    subscriptions  = [for name, s in local.pull_subs : module.pubsub.subscription_ids[name] if contains(local.worker_pool_pipelines, s.pipeline)]
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
      local.admission_env,
      local.precheck_env,
      # Only the pipelines some deployable serves: a job for another one is rejected at once
      # instead of waiting in a queue nobody consumes.
      { ENABLED_PIPELINES = join(",", local.servable_pipelines) },
      var.functions_config.env,
    )
  }
  depends_on = [module.firestore]
}

module "api" {
  source              = "./modules/api"
  project_id          = module.project.project_id
  region              = var.region
  deletion_protection = var.deletion_protection
  labels              = var.labels
  service_account     = local.sa_email.api
  config = {
    concurrency     = var.api_config.concurrency
    cpu             = var.api_config.cpu
    image           = var.functions_image
    ingress         = var.api_config.ingress
    max_instances   = var.api_config.max_instances
    memory          = var.api_config.memory
    min_instances   = var.api_config.min_instances
    name            = var.api_config.name
    timeout_seconds = var.api_config.timeout_seconds
    env = merge(
      local.common_env,
      local.admission_env,
      local.precheck_env,
      {
        # The same pipelines as the functions: the API validates with their handler.
        ENABLED_PIPELINES       = join(",", local.servable_pipelines)
        SIGNING_SERVICE_ACCOUNT = local.sa_email.api
        API_CORS_ORIGINS        = join(",", var.api_config.cors_origins)
        # What a caller may hold before its request is read (api/connections.py).
        API_HEAD_SECONDS    = tostring(var.api_config.head_seconds)
        API_BODY_SECONDS    = tostring(var.api_config.body_seconds)
        API_MAX_CONNECTIONS = tostring(var.api_config.max_connections)
      },
      var.api_config.env,
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

module "artifact_registry" {
  source     = "./modules/artifact-registry"
  count      = var.artifact_registry_config.create ? 1 : 0
  project_id = module.project.project_id
  region     = var.region
  labels     = var.labels
  config = {
    delete_after_days = var.artifact_registry_config.delete_after_days
    keep_count        = var.artifact_registry_config.keep_count
    name              = var.artifact_registry_config.name
  }
}

# Mistakes that would give a deployment that applies but does not work: fail the plan.
resource "terraform_data" "deployment_checks" {
  lifecycle {
    precondition {
      condition     = length(local.servable_pipelines) > 0
      error_message = "No pipeline can serve: give at least one pipeline its model in pipeline_config (e.g. transcribe = { models = { MODEL_DIR = \"/models/whisper\" } }) or set needs_model = false for one that needs none."
    }
    precondition {
      condition     = length(setintersection(local.pull_pipelines, local.servable_pipelines)) == 0 || local.worker_pool || var.gpu_service_config.min_instances >= 1
      error_message = "Pipelines ${join(", ", setintersection(local.pull_pipelines, local.servable_pipelines))} are in pull mode, but there is no worker pool and the GPU service scales to zero, so nothing pulls them: set worker_pool_config.enabled = true or gpu_service_config.min_instances >= 1."
    }
    precondition {
      condition     = local.gpu_max_instances + local.worker_pool_instances <= var.gpu_quota
      error_message = "gpu_service_config.max_instances (${local.gpu_max_instances}) plus the worker pool's instances (${local.worker_pool_instances}) exceed gpu_quota (${var.gpu_quota}): Cloud Run could never start them all. Lower them or raise the quota (and gpu_quota)."
    }
  }
}

check "gpu_quota_leaves_room_for_a_redeploy" {
  assert {
    condition     = local.gpu_max_instances + local.worker_pool_instances < var.gpu_quota
    error_message = "max_instances (${local.gpu_max_instances}) + worker pool (${local.worker_pool_instances}) use the whole GPU quota (${var.gpu_quota}): a redeploy needs a GPU for the new revision while the old one still holds its own (an idle instance for up to 15 minutes, min_instances ones always), so it may fail with a quota error until the old instance is gone. Ask for one more GPU of quota, or redeploy when the service is idle."
  }
}

check "unservable_pipelines" {
  assert {
    condition     = length(local.unservable_pipelines) == 0
    error_message = "Pipelines ${join(", ", local.unservable_pipelines)} have no model in pipeline_config: no deployable serves them and their jobs are rejected."
  }
}

# Each finished job's usage line, exported to BigQuery (docs/cost.md).
module "usage_export" {
  source     = "./modules/usage-export"
  count      = var.usage_export_config.enabled ? 1 : 0
  project_id = module.project.project_id
  labels     = var.labels
  config = {
    dataset_id     = var.usage_export_config.dataset_id
    force_destroy  = !var.deletion_protection
    location       = coalesce(var.usage_export_config.location, var.region)
    retention_days = var.usage_export_config.retention_days
  }
}
