# Applied once, by a project owner, before the first `gcloud builds submit` (docs/deploy.md):
# what the build itself cannot create because it runs as it or keeps its state in it.
# State stays local here (terraform.tfstate in this folder, gitignored): keep it, or migrate it
# into the bucket afterwards with a backend block and `terraform init -migrate-state`.

locals {
  # Exactly what the deploy does: push images, apply ../ (every resource kind it manages, the
  # runtime accounts' IAM, the APIs), read the models bucket, use the state bucket, write logs.
  deployer_roles = toset([
    "roles/artifactregistry.admin",          # the repository (with its cleanup policy), and push
    "roles/bigquery.dataOwner",              # the usage dataset and its sink writer's grant
    "roles/cloudscheduler.admin",            # topology schedules
    "roles/datastore.owner",                 # the Firestore database and its indexes
    "roles/eventarc.admin",                  # the function triggers
    "roles/firebase.admin",                  # Firebase project, web app, Storage link, rules
    "roles/iam.serviceAccountAdmin",         # the runtime accounts and grants on them
    "roles/iam.serviceAccountUser",          # deploy services that run as those accounts
    "roles/identityplatform.admin",          # Firebase Auth configuration
    "roles/logging.configWriter",            # the usage log sink (docs/cost.md)
    "roles/logging.logWriter",               # the build's logs (options.logging: CLOUD_LOGGING_ONLY)
    "roles/pubsub.admin",                    # topics, subscriptions and their IAM
    "roles/resourcemanager.projectIamAdmin", # project-level grants (datastore.user, ...)
    "roles/run.admin",                       # Cloud Run services, worker pool and their IAM
    "roles/serviceusage.apiKeysAdmin",       # the web app's API key (read into its config)
    "roles/serviceusage.serviceUsageAdmin",  # enable the APIs
    "roles/storage.admin",                   # buckets, notifications, state and models buckets
  ])
}

resource "google_project_service" "bootstrap" {
  for_each                   = toset(["cloudbuild.googleapis.com", "cloudresourcemanager.googleapis.com", "iam.googleapis.com", "serviceusage.googleapis.com", "storage.googleapis.com"])
  project                    = var.project_id
  service                    = each.value
  disable_on_destroy         = false
  disable_dependent_services = false
}

# Terraform's state for ../ (Cloud Build's _TF_STATE_BUCKET), versioned so a bad apply can be undone.
resource "google_storage_bucket" "state" {
  #checkov:skip=CKV_GCP_62:Access is already recorded by Cloud Audit Logs; usage logs would need a second bucket.
  project                     = var.project_id
  name                        = coalesce(var.state_bucket, "${var.project_id}-tfstate")
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  depends_on = [google_project_service.bootstrap]
}

# The build's own identity: new projects give Cloud Build the Compute Engine default account,
# which has no roles, and Domain Restricted Sharing aside, a dedicated account keeps the deploy's
# rights in one reviewed list.
resource "google_service_account" "deployer" {
  project      = var.project_id
  account_id   = var.deployer_account_id
  display_name = "Cloud Build deployer"
  description  = "Runs cloudbuild.yaml: builds and pushes the images and applies terraform/."
  depends_on   = [google_project_service.bootstrap]
}

resource "google_project_iam_member" "deployer" {
  #checkov:skip=CKV_GCP_41:The deployer creates the runtime accounts and deploys the services that run as them (actAs); it is the build's own account, not a person's.
  #checkov:skip=CKV_GCP_49:Creating the runtime accounts and granting on them (token creators, signing as itself) is part of the deploy; no person holds these roles.
  for_each = local.deployer_roles
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.deployer.email}"
}
