output "api_url" {
  description = "The HTTP API apps call with a Firebase ID token (OpenAPI at /openapi.json)."
  value       = module.api.uri
}

output "bucket_names" {
  description = "Real bucket names by topology key."
  value       = module.storage.names
}

output "function_urls" {
  description = "Function service URLs by function name (reachable through their Eventarc triggers)."
  value       = module.functions.urls
}

output "gpu_service_url" {
  description = "GPU service URL (OIDC audience of the push subscriptions)."
  value       = module.gpu_service.uri
}

output "push_endpoints" {
  description = "Push endpoint of each push-mode subscription: a pipeline's (/push/P) and its parts' (/push/P/PART)."
  value = {
    for name, s in module.topology.subscriptions : name => "${module.gpu_service.uri}${s.push_path}" if s.mode == "push"
  }
}

output "service_accounts" {
  description = "Service account email per role."
  value       = local.sa_email
}

output "subscriptions" {
  description = "Subscription ids by name."
  value       = module.pubsub.subscription_ids
}

output "topics" {
  description = "Topic ids by name."
  value       = module.pubsub.topic_ids
}

output "worker_pool" {
  description = "Worker pool name, or null when no pull-mode pipeline runs on one."
  value       = module.gpu_service.worker_pool_name
}

output "web_client_config" {
  description = "The web client's /config.json (web/src/main.ts): its Firebase config, the API's URL, the uploads bucket, the jobs collection and the enabled pipelines. `npm run build:deploy` in web/ writes it to web/dist/config.json. Null without firebase_config.create."
  value = var.firebase_config.create ? merge(one(module.firebase[*].web_config), {
    apiUrl         = module.api.uri
    bucket         = try([for key in keys(module.topology.notifications) : module.storage.names[key]][0], null)
    jobsCollection = module.topology.firestore.jobs_collection
    pipelines      = local.servable_pipelines
  }) : null
}

output "artifact_registry" {
  description = "Image name prefix in Artifact Registry (REGION-docker.pkg.dev/PROJECT/REPO), or null when artifact_registry_config.create is false."
  value       = one(module.artifact_registry[*].url)
}

output "enabled_pipelines" {
  description = "Pipelines the deployment serves (those with a model, or needing none); jobs for the others are rejected."
  value       = local.servable_pipelines
}

output "pubsub_inventory" {
  description = "Every topic and subscription with its settings, as plain data (see modules/topology)."
  value       = module.topology.pubsub_inventory
}
