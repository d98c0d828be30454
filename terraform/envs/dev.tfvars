# Copy to envs/dev.tfvars (not committed) and adjust. Topics, subscriptions, functions, triggers
# and buckets are NOT configured here: they come from infra/topology.yaml.
# Cloud Build passes project_id, region, functions_image and gpu_service_image itself.

project_id = "my-gpu-jobs-dev"
region     = "europe-west1" # needs Cloud Run L4 GPU quota (see README)

functions_image   = "europe-west1-docker.pkg.dev/my-gpu-jobs-dev/gpu-jobs/functions:abc1234"
gpu_service_image = "europe-west1-docker.pkg.dev/my-gpu-jobs-dev/gpu-jobs/gpu-service:abc1234"

# Throwaway environment: let terraform destroy everything.
deletion_protection = false

labels = {
  env = "dev"
}

bucket_config = {
  # Web app origins allowed to upload/download directly (Firebase Storage web SDK).
  cors_origins  = ["http://localhost:5173", "https://my-gpu-jobs-dev.web.app"]
  firebase_link = true # the project is a Firebase project
  force_destroy = true
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

gpu_service_config = {
  min_instances = 0 # a warm L4 is billed around the clock
  max_instances = 1 # bounded by the L4 quota
  concurrency   = 1 # one job per GPU
  env = {
    PIPELINES__TRANSCRIBE__MODEL_DIR = "/models/whisper"
    LOG_LEVEL                        = "INFO"
  }
}

# Only for pipelines with mode: pull in topology.yaml.
worker_pool_config = {
  enabled = false
}
