"""Resources (Calico v3 kinds and field names) and their validation."""
