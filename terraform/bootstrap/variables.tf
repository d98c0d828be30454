variable "deployer_account_id" {
  description = "Account id of the Cloud Build service account (EMAIL = ID@PROJECT.iam.gserviceaccount.com)."
  type        = string
  nullable    = false
  default     = "cloud-build-deployer"
}

variable "project_id" {
  description = "The project to deploy into (billing linked, see docs/deploy.md)."
  type        = string
  nullable    = false
}

variable "region" {
  description = "Region of the state bucket (the deployment's region)."
  type        = string
  nullable    = false
}

variable "state_bucket" {
  description = "Name of the Terraform state bucket; null = PROJECT_ID-tfstate."
  type        = string
  default     = null
}
