# The prod environment: committed, so that Cloud Build applies exactly these settings
# (_TF_VARS_FILE=envs/prod.tfvars, _TF_STATE_PREFIX=gpu-jobs/prod). Nothing secret belongs here.
# Cloud Build overrides project_id, region, functions_image and gpu_service_image with -var.

project_id = "my-gpu-jobs-prod"
region     = "europe-west1"

functions_image   = "europe-west1-docker.pkg.dev/my-gpu-jobs-prod/gpu-jobs/functions:abc1234"
gpu_service_image = "europe-west1-docker.pkg.dev/my-gpu-jobs-prod/gpu-jobs/gpu-service:abc1234"

deletion_protection = true

labels = {
  env = "prod"
}

# The web client calls the API from these origins (the same as the buckets' CORS origins);
# their hosts other than localhost and PROJECT.web.app / PROJECT.firebaseapp.com also go in
# firebase_config.authorized_domains.
api_config = {
  cors_origins = ["https://my-gpu-jobs-prod.web.app"]
}

bucket_config = {
  cors_origins  = ["https://my-gpu-jobs-prod.web.app"]
  firebase_link = true
  ttl_days      = { uploads = 7, results = 30 }
}

firestore_config = {
  location_id = "eur3"
}

functions_config = {
  max_instances = 20
}

pipeline_config = {
  transcribe = { models = { MODEL_DIR = "/models/whisper" } }
  inpaint    = { needs_model = false, settings = { BACKEND = "opencv" } }
  # Piper and its voice are Python packages in the image: no model files to bake in.
  tts = { needs_model = false, settings = { BACKEND = "piper" } }
  video = {
    models   = { TRANSCRIBE__MODEL_DIR = "/models/whisper" }
    settings = { OCR_BACKEND = "vision" }
  }
}

gpu_quota = 3

gpu_service_config = {
  min_instances = 0
  concurrency   = 1
}
