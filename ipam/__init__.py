"""IP pools, blocks, affinities, allocation and GC over the datastore.

``Ipam`` is the allocator a host uses; ``ipam.keys`` documents the store layout, ``ipam.gc``
the garbage collector and ``ipam.check`` the consistency report behind ``routemesh ipam check``.
"""

from ipam.allocator import Ipam
from ipam.errors import AddressInUseError, IpamError, NotAllocatedError, PoolExhaustedError
from ipam.stats import IpamStats

__all__ = [
    "AddressInUseError",
    "Ipam",
    "IpamError",
    "IpamStats",
    "NotAllocatedError",
    "PoolExhaustedError",
]
