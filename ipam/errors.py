"""The errors IPAM raises; callers (CNI plugin, CLI) map them to their own exit codes."""

from __future__ import annotations


class IpamError(Exception):
    """Base of every IPAM failure; the message names the address, pool or handle concerned."""


class PoolExhaustedError(IpamError):
    """No address is free in any pool this host may use (after claiming and borrowing)."""


class AddressInUseError(IpamError):
    """A requested address is already allocated to another handle."""


class NotAllocatedError(IpamError):
    """A release named an address that is not allocated."""
