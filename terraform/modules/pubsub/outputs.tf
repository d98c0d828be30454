output "subscription_ids" {
  description = "Subscription ids (projects/P/subscriptions/NAME) by name."
  value       = { for k, s in google_pubsub_subscription.default : k => s.id }
}

output "topic_ids" {
  description = "Topic ids (projects/P/topics/NAME) by name."
  value       = { for k, t in google_pubsub_topic.default : k => t.id }
}
