"""Per-host dataplane: endpoints, CNI plugin, tunnels, iptables/ipset, NAT outgoing."""
