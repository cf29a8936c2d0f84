"""The `routemesh` command: calicoctl-like verbs. The only place that prints to a terminal."""
