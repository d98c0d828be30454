# The dev environment: committed, so that Cloud Build applies exactly these settings. Nothing
# secret belongs here. Topics, subscriptions, functions, triggers and buckets are NOT configured
# here: they come from infra/topology.yaml.
#
# Cloud Build overrides project_id, region, functions_image and gpu_service_image with -var;
# the values below are for a manual `terraform plan -var-file=envs/dev.tfvars`.

project_id = "my-gpu-jobs-dev"
region     = "europe-west1" # needs Cloud Run L4 GPU quota (see README)

functions_image   = "europe-west1-docker.pkg.dev/my-gpu-jobs-dev/gpu-jobs/functions:abc1234"
gpu_service_image = "europe-west1-docker.pkg.dev/my-gpu-jobs-dev/gpu-jobs/gpu-service:abc1234"

# Throwaway environment: let terraform destroy everything.
deletion_protection = false

labels = {
  env = "dev"
}

# The web client calls the API from these origins (the same as the buckets' CORS origins);
# their hosts other than localhost and PROJECT.web.app / PROJECT.firebaseapp.com also go in
# firebase_config.authorized_domains.
api_config = {
  cors_origins = ["http://localhost:5173", "https://my-gpu-jobs-dev.web.app"]
}

bucket_config = {
  # Web app origins allowed to upload/download directly (Firebase Storage web SDK).
  cors_origins  = ["http://localhost:5173", "https://my-gpu-jobs-dev.web.app"]
  firebase_link = true # the project is a Firebase project
  force_destroy = true
  # Days before objects are deleted, per top-level folder (0 = keep).
  ttl_days = { uploads = 2, results = 7 }
  # names = { media = "my-existing-bucket" } # default: "<project_id>-<key>"
}

firestore_config = {
  location_id       = "eur3" # multi-region; Firestore triggers are created there
  delete_protection = false
  # create_database = false  # when Firebase already created the (default) database
}

functions_config = {
  max_instances = 5
}

# Only pipelines with a model (or needing none) are enabled; the others' jobs are rejected.
# Model paths are inside the image (models/ of the build context is baked in as /models).
pipeline_config = {
  transcribe = { models = { MODEL_DIR = "/models/whisper" } }
  inpaint    = { needs_model = false, settings = { BACKEND = "opencv" } }
  # Piper and its voice are Python packages in the image: no model files to bake in.
  tts = { needs_model = false, settings = { BACKEND = "piper" } }
  video = {
    models   = { TRANSCRIBE__MODEL_DIR = "/models/whisper" }
    settings = { OCR_BACKEND = "vision" }
  }
  # edit = { models = { MODEL_DIR = "/models/qwen-image-edit" } }  # ~58 GB: use models_bucket
}

# L4 GPUs granted in the region; max_instances defaults to gpu_quota - 1 (room for a redeploy).
gpu_quota = 2

gpu_service_config = {
  min_instances = 0 # a warm L4 is billed around the clock
  concurrency   = 1 # one job per GPU
  env = {
    LOG_LEVEL = "INFO"
  }
}

# Only for pipelines with mode: pull in topology.yaml.
worker_pool_config = {
  enabled = false
}
