"""The kernel FIB writer: netlink, batching, reconcile, ECMP, blackholes.

Wiring (docs/fib.md): ``mgr = manager_from_config(config.fib, on_reachability=...)``, then
``await mgr.start()``; per Loc-RIB change ``mgr.update(Route.via((4, addr, len), gateways))``
or ``mgr.withdraw(prefix)``; ``mgr.converged()`` at End-of-RIB or the GR timeout;
``mgr.reachable(version, gateway)`` for the next-hop check; ``await mgr.stop()``.
"""

from bgpd.fib.base import Fib, ReconcileReport
from bgpd.fib.fake import FakeFib
from bgpd.fib.manager import FibManager, manager_from_config
from bgpd.fib.types import (
    DEFAULT_PROTOCOL,
    FibError,
    KernelRoute,
    NextHop,
    Prefix,
    Route,
    RouteError,
)

__all__ = [
    "DEFAULT_PROTOCOL",
    "FakeFib",
    "Fib",
    "FibError",
    "FibManager",
    "KernelRoute",
    "NextHop",
    "Prefix",
    "ReconcileReport",
    "Route",
    "RouteError",
    "manager_from_config",
]
