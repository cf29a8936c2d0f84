"""Integration tests: real sockets, namespaces and peers."""
