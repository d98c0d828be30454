output "database" {
  description = "Database id, usable by triggers once the database exists."
  value       = var.database.id
  depends_on  = [google_firestore_database.default]
}

output "location_id" {
  description = "Database location: Firestore Eventarc triggers must live in this location."
  value       = var.database.location_id
}
