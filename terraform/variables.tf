variable "api_config" {
  description = <<-EOT
    The HTTP API apps call with a Firebase ID token (api/), run from the functions image.
    cors_origins are the web app origins allowed to call it from a browser; env adds settings
    (infra/settings.py), e.g. API_MAX_WAIT_SECONDS. head_seconds, body_seconds and
    max_connections bound what a caller holds before its request is read (API_HEAD_SECONDS,
    API_BODY_SECONDS, API_MAX_CONNECTIONS per instance): at least concurrency connections, and a
    head and body that are due well within the request timeout.
  EOT
  type = object({
    body_seconds    = optional(number, 30)
    concurrency     = optional(number, 80)
    cors_origins    = optional(list(string), [])
    cpu             = optional(string, "1")
    env             = optional(map(string), {})
    head_seconds    = optional(number, 10)
    ingress         = optional(string, "INGRESS_TRAFFIC_ALL")
    max_connections = optional(number, 500)
    max_instances   = optional(number, 10)
    memory          = optional(string, "512Mi")
    min_instances   = optional(number, 0)
    name            = optional(string, "api")
    timeout_seconds = optional(number, 300)
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.api_config.max_connections >= var.api_config.concurrency
    error_message = "api_config.max_connections must be at least api_config.concurrency: the API would answer 503 to requests Cloud Run sent it."
  }
  validation {
    condition     = var.api_config.head_seconds > 0 && var.api_config.body_seconds > 0 && var.api_config.head_seconds + var.api_config.body_seconds < var.api_config.timeout_seconds
    error_message = "api_config.head_seconds + api_config.body_seconds must be positive and below api_config.timeout_seconds: Cloud Run would cut a slow request before the API answers it 408."
  }
}

variable "artifact_registry_config" {
  description = <<-EOT
    The Docker repository the images are pushed to (REGION-docker.pkg.dev/PROJECT/NAME). Cleanup
    keeps the newest keep_count versions of each image and deletes other versions older than
    delete_after_days (GPU images are several GB). create = false when it is managed elsewhere.
    Cloud Build applies it alone before the first push (see README).
  EOT
  type = object({
    create            = optional(bool, true)
    delete_after_days = optional(number, 30)
    keep_count        = optional(number, 10)
    name              = optional(string, "gpu-jobs")
  })
  nullable = false
  default  = {}
}

variable "bucket_config" {
  description = <<-EOT
    Settings for the topology's buckets. Bucket names are global, so each topology key K becomes
    "PROJECT_ID-K" unless `names` maps K to another name (e.g. an existing Firebase bucket).
    `roles` are the bucket roles of the API (which inspects uploads and signs URLs to upload
    inputs and read results: the signer's own permissions apply), of the functions (which only
    inspect uploads) and of the GPU service (which reads inputs and writes results). `ttl_days` deletes the objects under each
    top-level folder that many days after they were written (uploads are inputs, results the
    jobs' outputs; 0 keeps them forever). With firebase_link (the project must be a
    Firebase project) the buckets are linked to Firebase and, unless firebase_rules is false,
    infra/storage.rules is released on them.
  EOT
  type = object({
    cors_origins   = optional(list(string), [])
    firebase_link  = optional(bool, false)
    firebase_rules = optional(bool, true)
    force_destroy  = optional(bool, false)
    location       = optional(string)
    names          = optional(map(string), {})
    roles = optional(object({
      api         = optional(list(string), ["roles/storage.objectViewer", "roles/storage.objectCreator"])
      functions   = optional(list(string), ["roles/storage.objectViewer"])
      gpu_service = optional(list(string), ["roles/storage.objectAdmin"])
    }), {})
    ttl_days   = optional(map(number), { uploads = 7, results = 30 })
    versioning = optional(bool, false)
  })
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for r in concat(var.bucket_config.roles.api, var.bucket_config.roles.functions, var.bucket_config.roles.gpu_service) : startswith(r, "roles/storage.")])
    error_message = "bucket_config.roles must be Cloud Storage roles such as \"roles/storage.objectViewer\"."
  }
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run services and worker pool from Terraform (set false in throwaway environments)."
  type        = bool
  nullable    = false
  default     = true
}

variable "firebase_config" {
  description = <<-EOT
    The app side: with create (default), the project becomes a Firebase project, Firebase Auth
    (Identity Platform) is configured with the sign-in providers the web client offers
    (anonymous, email_password) and authorized_domains (localhost, PROJECT.firebaseapp.com and
    PROJECT.web.app are always in; add where you host the web client), and a Firebase web app is
    created whose config is in output web_client_config. Set create = false only when another
    configuration manages Firebase on this project (or import the resources, see docs/deploy.md).
  EOT
  type = object({
    authorized_domains         = optional(list(string), [])
    autodelete_anonymous_users = optional(bool, false)
    create                     = optional(bool, true)
    sign_in = optional(object({
      anonymous      = optional(bool, true)
      email_password = optional(bool, true)
    }), {})
    web_app_deletion_policy = optional(string, "DELETE")
    web_app_name            = optional(string, "gpu-jobs-web")
  })
  nullable = false
  default  = {}
}

variable "firestore_config" {
  description = <<-EOT
    The Firestore database named in topology.yaml. location_id defaults to the region; use a
    multi-region such as nam5 or eur3 for higher availability (Firestore triggers are then created
    in that location). Set create_database = false when the project already has it (e.g. created
    by Firebase), or import it. rules = false leaves the security rules to another tool.
  EOT
  type = object({
    create_database   = optional(bool, true)
    delete_protection = optional(bool, true)
    location_id       = optional(string)
    rules             = optional(bool, true)
  })
  nullable = false
  default  = {}
}

variable "functions_config" {
  description = <<-EOT
    Settings shared by the function services. source_file is the functions-framework --source
    (a path inside the image, relative to /app); null uses the framework's default (main.py).
    env is added to the derived settings (see README: GOOGLE_CLOUD_PROJECT, <KEY>_BUCKET,
    JOBS_COLLECTION, ENABLED_PIPELINES) and overrides them.
  EOT
  type = object({
    concurrency     = optional(number, 80)
    cpu             = optional(string, "1")
    env             = optional(map(string), {})
    max_instances   = optional(number, 10)
    memory          = optional(string, "512Mi")
    min_instances   = optional(number, 0)
    source_file     = optional(string, "functions/main.py")
    timeout_seconds = optional(number, 60)
  })
  nullable = false
  default  = {}
}

variable "functions_image" {
  description = "Functions image (functions/Dockerfile), with a tag or digest, e.g. REGION-docker.pkg.dev/PROJECT/REPO/functions:SHORT_SHA."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.functions_image)) && !endswith(var.functions_image, ":latest")
    error_message = "functions_image must be a full image reference pinned to a tag (not :latest) or a digest, e.g. europe-west1-docker.pkg.dev/my-project/gpu-jobs/functions:abc1234."
  }
}

variable "gpu_quota" {
  description = <<-EOT
    Cloud Run GPUs (of gpu_service_config.accelerator) this project may use in the region, i.e. the
    quota granted. The GPU service's max_instances plus the worker pool's instances must fit in
    it; by default max_instances leaves one GPU free, because a redeploy starts the new revision
    while the old one may still hold its GPU. With a quota of 1, set 1: redeploys then succeed
    only once the old instance has stopped (scale to zero, up to 15 minutes after the last job).
  EOT
  type        = number
  nullable    = false
  default     = 2
  validation {
    condition     = var.gpu_quota >= 1 && floor(var.gpu_quota) == var.gpu_quota
    error_message = "gpu_quota must be a whole number of GPUs, at least 1 (ask for Cloud Run GPU quota first; see README)."
  }
}

variable "gpu_service_config" {
  description = <<-EOT
    The GPU Cloud Run service. concurrency is max_instance_request_concurrency and also the
    service's MAX_CONCURRENT_JOBS (1 = one job per GPU). model_concurrency (MODEL_CONCURRENCY, at most
    concurrency) caps the units on the model at once, so that with concurrency above it one unit's
    claim, downloads, upload and commit overlap another's model work. timeout_seconds = null uses the largest
    push ack deadline in topology.yaml (the push ack deadline doubles as the request timeout).
    max_instances = null takes gpu_quota - 1 (less the worker pool's instances), leaving one GPU
    for the new revision during a redeploy. models_bucket mounts a Cloud Storage bucket read-only
    at /models (Cloud Storage FUSE) for models too large to bake into the image. adapters mounts a
    bucket of LoRA adapters read-only at adapters.mount_path and sets that path as LORA_DIR of the
    servable pipelines in adapters.pipelines (those taking adapters: edit, inpaint, t2v), so a new
    adapter is a copy into the bucket, not a new image (jobs name adapters relative to it). env is added to
    the derived settings (see README) and overrides them; per-pipeline settings belong in
    pipeline_config.
  EOT
  type = object({
    accelerator = optional(string, "nvidia-l4")
    adapters = optional(object({
      bucket     = string
      mount_path = optional(string, "/adapters")
      pipelines  = list(string)
    }))
    concurrency                   = optional(number, 1)
    cpu                           = optional(string, "8")
    env                           = optional(map(string), {})
    gpu_zonal_redundancy_disabled = optional(bool, true)
    max_instances                 = optional(number)
    memory                        = optional(string, "32Gi")
    min_instances                 = optional(number, 0)
    model_concurrency             = optional(number)
    models_bucket                 = optional(string)
    name                          = optional(string, "gpu-service")
    startup_probe = optional(object({
      failure_threshold     = optional(number, 30)
      initial_delay_seconds = optional(number, 0)
      path                  = optional(string, "/healthz")
      period_seconds        = optional(number, 10)
      timeout_seconds       = optional(number, 5)
    }), {})
    timeout_seconds = optional(number)
  })
  nullable = false
  default  = {}
  validation {
    condition     = var.gpu_service_config.model_concurrency == null || try(var.gpu_service_config.model_concurrency >= 1 && var.gpu_service_config.model_concurrency <= var.gpu_service_config.concurrency && floor(var.gpu_service_config.model_concurrency) == var.gpu_service_config.model_concurrency, false)
    error_message = "gpu_service_config.model_concurrency must be a whole number from 1 to gpu_service_config.concurrency (units on the model at once, among those in flight)."
  }
  validation {
    condition     = var.gpu_service_config.adapters == null || can(regex("^/[A-Za-z0-9_./-]+$", var.gpu_service_config.adapters.mount_path)) && !contains(["/", "/models"], try(var.gpu_service_config.adapters.mount_path, ""))
    error_message = "gpu_service_config.adapters.mount_path must be an absolute directory other than / and /models, e.g. /adapters."
  }
  validation {
    condition     = var.gpu_service_config.adapters == null || alltrue([for p in try(var.gpu_service_config.adapters.pipelines, []) : contains(keys(local.topology.pipelines), p)])
    error_message = "gpu_service_config.adapters.pipelines must be pipelines declared in infra/topology.yaml (${join(", ", sort(keys(local.topology.pipelines)))})."
  }
}

variable "gpu_service_image" {
  description = "GPU service image (gpu_service/Dockerfile), with a tag or digest, e.g. REGION-docker.pkg.dev/PROJECT/REPO/gpu-service:SHORT_SHA."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$", var.gpu_service_image)) && !endswith(var.gpu_service_image, ":latest")
    error_message = "gpu_service_image must be a full image reference pinned to a tag (not :latest) or a digest, e.g. europe-west1-docker.pkg.dev/my-project/gpu-jobs/gpu-service:abc1234."
  }
}

variable "ingress" {
  description = "Ingress of every Cloud Run service. INGRESS_TRAFFIC_INTERNAL_ONLY still admits Eventarc and Pub/Sub push from this project."
  type        = string
  nullable    = false
  default     = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  validation {
    condition     = contains(["INGRESS_TRAFFIC_ALL", "INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"], var.ingress)
    error_message = "ingress must be INGRESS_TRAFFIC_ALL, INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER."
  }
}

variable "labels" {
  description = "Labels applied to every resource that takes them."
  type        = map(string)
  nullable    = false
  default     = {}
  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "Label keys must start with a lowercase letter; keys and values use lowercase letters, digits, - and _ (at most 63 characters)."
  }
}

variable "pipeline_config" {
  description = <<-EOT
    Per pipeline (a key of pipelines in topology.yaml): its models and settings. A pipeline is
    enabled (in ENABLED_PIPELINES of the functions and the GPU service) only if enabled is true and
    it has a model, i.e. models is not empty, or needs_model is false (e.g. inpaint with the OpenCV
    backend). models and settings both become PIPELINES__<PIPELINE>__<KEY> variables; models are
    paths inside the container, e.g. transcribe = { models = { MODEL_DIR = "/models/whisper" } },
    video = { models = { TRANSCRIBE__MODEL_DIR = "/models/whisper" }, settings = { OCR_BACKEND = "vision" } }
    (OCR_BACKEND = "vision" also enables the Cloud Vision API).
  EOT
  type = map(object({
    enabled     = optional(bool, true)
    models      = optional(map(string), {})
    needs_model = optional(bool, true)
    settings    = optional(map(string), {})
  }))
  nullable = false
  default  = {}
  validation {
    condition     = alltrue([for name in keys(var.pipeline_config) : contains(keys(local.topology.pipelines), name)])
    error_message = "pipeline_config keys must be pipelines declared in infra/topology.yaml or plugin_pipelines (${join(", ", sort(keys(local.topology.pipelines)))})."
  }
  validation {
    condition = alltrue(flatten([
      for c in values(var.pipeline_config) : [for key in concat(keys(c.models), keys(c.settings)) : can(regex("^[A-Za-z][A-Za-z0-9_]*$", key))]
    ]))
    error_message = "pipeline_config models and settings keys are setting names such as MODEL_DIR or TRANSCRIBE__MODEL_DIR (letters, digits, _)."
  }
}

variable "plugin_pipelines" {
  description = <<-EOT
    Pipelines of the plugins installed in the images, with what each needs from its route, as
    `gpujobs pipelines --tfvars` prints them from the installed specs (save its output as
    terraform/plugins.auto.tfvars.json). Keys are pipeline names; values are entries of
    pipelines in infra/topology.yaml (same fields, same checks) plus needs_model. Each gets its
    topic and subscription and is enabled like a built-in: when it has a model in
    pipeline_config, or needs_model is false. A name the file declares keeps the file's entry.
  EOT
  type = map(object({
    ack_deadline_seconds      = optional(number)
    message_retention_seconds = optional(number)
    mode                      = optional(string)
    needs_model               = optional(bool, true)
    parts                     = optional(list(string))
    retry_policy = optional(object({
      maximum_backoff_seconds = number
      minimum_backoff_seconds = number
    }))
  }))
  nullable = false
  default  = {}
}

variable "project_id" {
  description = "Project to deploy into."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id (6-30 lowercase letters, digits, hyphens), not a project name or number."
  }
}

variable "quotas" {
  description = "The QUOTAS setting (infra/settings.py, core/quota.py) for the functions and the API, e.g. { max_unfinished = 20, max_daily = 1000, pipelines = { video = { max_unfinished = 2 } } }; null keeps the defaults."
  type        = any
  default     = null
}

variable "region" {
  description = "Region of every regional resource. The GPU service needs Cloud Run GPU (L4) quota there, e.g. us-central1, us-east4, europe-west1, europe-west4 (some GPU regions are by invitation only: see docs/deploy.md)."
  type        = string
  nullable    = false
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 (not a zone or multi-region)."
  }
}

variable "usage_export_config" {
  description = <<-EOT
    Export of the per-job usage line (docs/cost.md) to BigQuery: a dataset and a Cloud Logging
    sink filtered on that line. Off with enabled = false. location defaults to the region.
  EOT
  type = object({
    dataset_id     = optional(string, "gpu_jobs_usage")
    enabled        = optional(bool, true)
    location       = optional(string)
    retention_days = optional(number, 400)
  })
  nullable = false
  default  = {}
}

variable "worker_pool_config" {
  description = <<-EOT
    Cloud Run worker pool for pipelines declared with mode: pull in topology.yaml (jobs longer than
    the 600 s push limit). It runs the GPU image (`python -m gpu_service`, or command/args) with
    ENABLED_PIPELINES = the pull pipelines, whose streaming-pull consumers it starts. Off by
    default (google_cloud_run_v2_worker_pool: GA since google 6.37.0, declared with google-beta
    here, whose floor is 6.37.0; instance_count must be at least 1); then the GPU service
    itself consumes the pull pipelines, which needs gpu_service_config.min_instances >= 1.
  EOT
  type = object({
    args           = optional(list(string))
    command        = optional(list(string))
    enabled        = optional(bool, false)
    instance_count = optional(number, 1)
    name           = optional(string, "gpu-worker")
  })
  nullable = false
  default  = {}
}
