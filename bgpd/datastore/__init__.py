"""The store contract and its backends: etcd v3, embedded SQLite, memory."""
