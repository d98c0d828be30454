# No provider: this module only reads and checks the decoded topology, so it can be planned
# (and tested) offline.

terraform {
  # 1.9: validation conditions may refer to other parts of the same variable's value.
  required_version = ">= 1.9.0"
}
