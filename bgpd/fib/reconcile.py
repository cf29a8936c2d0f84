"""The diff between the routes we want and what the kernel holds: pure, BIRD's krt_prune in spirit.

Ours (our rtm_protocol) are added, replaced or deleted; everyone else's are only reported.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field

from bgpd.fib.types import Hops, KernelRoute, NextHop, Prefix, Route, hops_of, prefix_str


@dataclass(frozen=True, slots=True)
class Conflict:
    """A route of another protocol at a prefix we want, in our table."""

    prefix: Prefix
    protocol: int
    metric: int
    kind: int

    def __str__(self) -> str:
        return (
            f"{prefix_str(self.prefix)}: route of protocol {self.protocol} "
            f"(type {self.kind}, metric {self.metric}) already there; left alone"
        )


@dataclass(slots=True)
class Plan:
    """What a reconcile will do: ``writes`` are adds (prefix not ours in the kernel) and
    replaces (ours but different), ``deletes`` are stale routes of ours."""

    writes: list[Route] = field(default_factory=list)
    deletes: list[Prefix] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    added: int = 0
    replaced: int = 0


def hop_matches(want: NextHop, have: NextHop) -> bool:
    """The kernel names the device of every gateway route; only compare it when we chose it."""
    if want.gateway != have.gateway or want.onlink != have.onlink:
        return False
    return want.device is None or want.device == have.device


def same_hops(want: Hops, have: Hops | None) -> bool:
    """True if a route of ours with ``have`` already is one with ``want`` (() = blackhole)."""
    if have is None:
        return False
    if want is have:
        return True
    if len(want) != len(have):
        return False
    if len(want) == 1:
        return hop_matches(want[0], have[0])
    if all(w.device is not None for w in want):
        return all(hop_matches(w, h) for w, h in zip(want, have))
    # Device-less hops sort differently once the kernel names their device: match as a set.
    left = list(have)
    for w in want:
        for i, h in enumerate(left):
            if hop_matches(w, h):
                del left[i]
                break
        else:
            return False
    return True


def same_route(want: Route, have: Route | None) -> bool:
    """True if the kernel's ``have`` already is ``want`` (no write needed)."""
    if have is None or want.prefix != have.prefix or want.blackhole != have.blackhole:
        return False
    return same_hops(hops_of(want), hops_of(have))


STEP = 5000  # items between the pauses of plan_steps


def plan(
    desired: Mapping[Prefix, Route],
    kernel: Iterable[KernelRoute],
    protocol: int,
    *,
    prune: bool = True,
) -> Plan:
    """Diff ``desired`` against the kernel's routes of one table.

    ``prune`` False keeps stale routes of ours (before the RIB has converged).
    """
    steps = plan_steps(desired, kernel, protocol, prune=prune)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def plan_steps(
    desired: Mapping[Prefix, Route],
    kernel: Iterable[KernelRoute],
    protocol: int,
    *,
    prune: bool = True,
) -> Generator[None, None, Plan]:
    """``plan`` in steps: yields every STEP items so an asyncio caller can let other tasks
    run (a 500k-route diff is over a second of CPU), and returns the Plan."""
    ours: dict[Prefix, Route | None] = {}
    foreign: dict[Prefix, list[KernelRoute]] = {}
    for n, kr in enumerate(kernel, 1):
        if kr.protocol == protocol:
            ours[kr.prefix] = kr.route
        else:
            foreign.setdefault(kr.prefix, []).append(kr)
        if n % STEP == 0:
            yield
    result = Plan()
    for n, (prefix, want) in enumerate(desired.items(), 1):
        for kr in foreign.get(prefix, ()):
            result.conflicts.append(Conflict(prefix, kr.protocol, kr.metric, kr.kind))
        if prefix in ours:
            if not same_route(want, ours[prefix]):
                result.writes.append(want)
                result.replaced += 1
        else:
            result.writes.append(want)
            result.added += 1
        if n % STEP == 0:
            yield
    if prune:
        result.deletes = [p for p in ours if p not in desired]
    return result
