terraform {
  required_version = ">= 1.9.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.28.0, < 8.0.0" # 6.28: node_selector (GA) and gpu_zonal_redundancy_disabled on Cloud Run v2
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 6.37.0, < 8.0.0" # 6.37: google_cloud_run_v2_worker_pool (GA in google since 6.37 too)
    }
  }
}
