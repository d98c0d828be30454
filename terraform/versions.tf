terraform {
  # 1.9: variable validations that refer to other values.
  required_version = ">= 1.9.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.28 is the first release with node_selector (GA) and gpu_zonal_redundancy_disabled on
      # google_cloud_run_v2_service; 6.2 (the usual floor) would fail on the GPU service.
      version = ">= 6.28.0, < 8.0.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.37.0, < 8.0.0" # google_cloud_run_v2_worker_pool, google_firebase_storage_bucket
    }
  }

  # Partial configuration: terraform init -backend-config="bucket=STATE_BUCKET" -backend-config="prefix=gpu-jobs/ENV"
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region
}

provider "google-beta" {
  project = var.project_id
  region  = var.region
}
