"""The kernel FIB writer: netlink, batching, reconcile, ECMP, blackholes."""
