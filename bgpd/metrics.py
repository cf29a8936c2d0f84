"""Prometheus metrics of every routemesh daemon: one class per area, each on a caller's registry.

Every area (BGP, RIB, FIB, agent, IPAM, datastore) registers its metrics on the
`CollectorRegistry` it is given, never on prometheus-client's global one, so several daemons
(or several test speakers) can live in one process. `Metrics` bundles the areas a daemon has.
Names follow Prometheus conventions: `routemesh_` prefix, base units (seconds), `_total` on
counters; labels are only `peer`, `family`, `type`, `state` (plus `pool` for per-pool IPAM
gauges, whose values operators choose and keep few).

Wiring a daemon (bgpd/daemon.py) takes a few lines; everything runs on the event loop's thread,
and `bgpd.health.HealthServer` collects on that same loop, so no locking is needed:

    self.metrics = Metrics(areas=("bgp",), process=True)       # Daemon.__init__
    self.metrics.bgp.add_peer(nb.address)                       # per configured neighbor
    self.metrics.bgp.on_event(peer.config.address, event)       # first line of Daemon._on_event
    def _export_metrics(self):                                  # run before each scrape
        for address, peer in self.peers.items():
            self.metrics.bgp.observe_session(address, peer.session)
            self.metrics.bgp.set_prefixes(address, fam, received, accepted, advertised)
    # then start bgpd.health.HealthServer(..., before_scrape=[self._export_metrics])

`on_event` takes the speaker's own events (state changes, establishment, session down with its
NOTIFICATION and hold-timer flag, UPDATEs); `observe_session` copies the FSM's cumulative
message counters, so the daemon never counts a message twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from bgpd.speaker.events import (
    Event,
    SessionDown,
    SessionEstablished,
    State,
    StateChanged,
    UpdateReceived,
)
from bgpd.speaker.fsm import MESSAGE_NAMES
from bgpd.speaker.messages import Update

NAMESPACE = "routemesh"
STATES: tuple[str, ...] = tuple(s.value for s in State)
MESSAGE_TYPES: tuple[str, ...] = tuple(MESSAGE_NAMES.values())
# Latency buckets for batch applies: a netlink batch takes well under a millisecond, an
# iptables-restore of a large ruleset a second or more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
AREAS: tuple[str, ...] = ("bgp", "rib", "fib", "agent", "ipam", "datastore")


UPTIME_NAME = f"{NAMESPACE}_bgp_session_uptime_seconds"
UPTIME_HELP = "Seconds since the session reached Established; 0 when it is not Established."


class MetricSpec(NamedTuple):
    """One metric family as operators see it: full sample name, type, label names, help."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


class _Area:
    """Creates an area's metrics on its registry and records (name, type, labels, help) of each."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.specs: list[MetricSpec] = []

    def _add(self, cls: type, kind: str, name: str, doc: str, labels: list[str], **kw: Any) -> Any:
        metric = cls(name, doc, labels, namespace=NAMESPACE, registry=self.registry, **kw)
        full = f"{NAMESPACE}_{name}" + ("_total" if kind == "counter" else "")
        self.specs.append(MetricSpec(full, kind, tuple(labels), doc))
        return metric

    def _counter(self, name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return self._add(Counter, "counter", name, doc, labels or [])

    def _gauge(self, name: str, doc: str, labels: list[str] | None = None) -> Gauge:
        return self._add(Gauge, "gauge", name, doc, labels or [])

    def _histogram(self, name: str, doc: str, labels: list[str] | None = None) -> Histogram:
        return self._add(Histogram, "histogram", name, doc, labels or [], buckets=LATENCY_BUCKETS)


class _BatchedCounter(Counter):
    """A labelled counter whose owner keeps increments in plain ints and adds them up just before
    each collection (`before_collect`): a labels() lookup and a locked inc() per UPDATE were 12%
    of the CPU of a one-prefix-per-UPDATE feed."""

    before_collect: Callable[[], None] | None = None

    def collect(self) -> Iterable[Metric]:
        if self.before_collect is not None:
            self.before_collect()
        return super().collect()


def _family_name(family: Any) -> str:
    """Accept a speaker `Family` or its text name ('ipv4-unicast')."""
    return family if isinstance(family, str) else family.name


class BgpMetrics(_Area):
    """Per-peer session metrics. `peer` is the neighbor address, as in `routemesh bgp status`."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time):
        super().__init__(registry)
        self._clock = clock
        self.session_state = self._gauge(
            "bgp_session_state",
            "1 for the state the BGP session is in, 0 for the other states.",
            ["peer", "state"],
        )
        self.establishments = self._counter(
            "bgp_session_establishments", "Times the session reached Established.", ["peer"]
        )
        self.flaps = self._counter(
            "bgp_session_flaps", "Times an Established session went down.", ["peer"]
        )
        self.messages_received = self._counter(
            "bgp_messages_received", "BGP messages received, by message type.", ["peer", "type"]
        )
        self.messages_sent = self._counter(
            "bgp_messages_sent", "BGP messages sent, by message type.", ["peer", "type"]
        )
        self.prefix_updates_received: _BatchedCounter = self._add(
            _BatchedCounter,
            "counter",
            "bgp_prefix_updates_received",
            "Prefixes announced or withdrawn in UPDATEs received (type announce|withdraw).",
            ["peer", "family", "type"],
        )
        self.prefix_updates_sent: _BatchedCounter = self._add(
            _BatchedCounter,
            "counter",
            "bgp_prefix_updates_sent",
            "Prefixes announced or withdrawn in UPDATEs sent (type announce|withdraw).",
            ["peer", "family", "type"],
        )
        self.prefix_updates_received.before_collect = self.flush_prefix_updates
        self.prefix_updates_sent.before_collect = self.flush_prefix_updates
        # (direction, peer, family) -> [announced, withdrawn, announce child, withdraw child]:
        # the children are bound once per peer and family, the counts added at collection.
        self._pending: dict[tuple[str, str, Any], list[Any]] = {}
        self.prefixes_received = self._gauge(
            "bgp_prefixes_received",
            "Prefixes currently held from the peer, accepted or not.",
            ["peer", "family"],
        )
        self.prefixes_accepted = self._gauge(
            "bgp_prefixes_accepted",
            "Prefixes from the peer that passed import (loop check, policy).",
            ["peer", "family"],
        )
        self.prefixes_advertised = self._gauge(
            "bgp_prefixes_advertised",
            "Prefixes currently advertised to the peer.",
            ["peer", "family"],
        )
        self.last_notification_code = self._gauge(
            "bgp_last_notification_code",
            "Error code of the last NOTIFICATION (type sent|received); absent until one.",
            ["peer", "type"],
        )
        self.last_notification_subcode = self._gauge(
            "bgp_last_notification_subcode",
            "Error subcode of the last NOTIFICATION (type sent|received); absent until one.",
            ["peer", "type"],
        )
        self.hold_timer_expiries = self._counter(
            "bgp_hold_timer_expiries",
            "Times the hold timer expired and the session was torn down.",
            ["peer"],
        )
        self._established_at: dict[str, float] = {}
        self._states: dict[str, str] = {}
        self._families: dict[str, set[str]] = {}
        self._notif_types: dict[str, set[str]] = {}
        # What observe_session saw last, so cumulative FSM counters become counter increments.
        self._seen: dict[str, dict[str, int]] = {}
        registry.register(_UptimeCollector(self))
        self.specs.append(MetricSpec(UPTIME_NAME, "gauge", ("peer",), UPTIME_HELP))

    # -- events -------------------------------------------------------------------------------

    def add_peer(self, peer: str, state: str = State.IDLE.value) -> None:
        """Make a configured neighbor visible (state gauges, zeroed counters) before it connects."""
        self.on_state(peer, state)
        self.establishments.labels(peer)
        self.flaps.labels(peer)
        self.hold_timer_expiries.labels(peer)
        for mtype in MESSAGE_TYPES:
            self.messages_received.labels(peer, mtype)
            self.messages_sent.labels(peer, mtype)

    def on_state(self, peer: str, state: str | State) -> None:
        """The session entered `state` (an RFC 4271 state name, or a `State`)."""
        name = state.value if isinstance(state, State) else state
        if name not in STATES:
            raise ValueError(f"unknown BGP state {name!r}; expected one of {', '.join(STATES)}")
        for s in STATES:
            self.session_state.labels(peer, s).set(1 if s == name else 0)
        previous = self._states.get(peer)
        self._states[peer] = name
        if name == State.ESTABLISHED.value and previous != name:
            self._established_at[peer] = self._clock()
        elif name != State.ESTABLISHED.value:
            self._established_at.pop(peer, None)

    def on_established(self, peer: str) -> None:
        self.establishments.labels(peer).inc()
        self.on_state(peer, State.ESTABLISHED)

    def on_down(
        self,
        peer: str,
        *,
        was_established: bool,
        notification: tuple[int, int] | None = None,
        sent: bool = False,
        hold_timer_expired: bool = False,
    ) -> None:
        """The session went down; a flap when it had been Established."""
        if was_established:
            self.flaps.labels(peer).inc()
        if hold_timer_expired:
            self.hold_timer_expiries.labels(peer).inc()
        if notification is not None:
            self.on_notification(peer, notification[0], notification[1], sent=sent)
        self._established_at.pop(peer, None)
        # Routes learned over a dead session are gone; the daemon re-sets them if it keeps
        # them stale under graceful restart.
        for fam in self._families.get(peer, ()):
            self.prefixes_received.labels(peer, fam).set(0)
            self.prefixes_accepted.labels(peer, fam).set(0)
            self.prefixes_advertised.labels(peer, fam).set(0)

    def on_notification(self, peer: str, code: int, subcode: int, *, sent: bool) -> None:
        kind = "sent" if sent else "received"
        self._notif_types.setdefault(peer, set()).add(kind)
        self.last_notification_code.labels(peer, kind).set(code)
        self.last_notification_subcode.labels(peer, kind).set(subcode)

    def on_message(self, peer: str, direction: str, mtype: str, count: int = 1) -> None:
        """`count` messages of type `mtype` went `direction` ('in' or 'out')."""
        if direction == "in":
            self.messages_received.labels(peer, mtype).inc(count)
        elif direction == "out":
            self.messages_sent.labels(peer, mtype).inc(count)
        else:
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")

    def on_prefix_updates(
        self, peer: str, direction: str, family: Any, announced: int, withdrawn: int
    ) -> None:
        """An UPDATE (or a batch of them) announced and withdrew this many prefixes."""
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', not {direction!r}")
        row = self._pending.get((direction, peer, family)) or self._bind(direction, peer, family)
        row[0] += announced
        row[1] += withdrawn

    def _bind(self, direction: str, peer: str, family: Any) -> list[Any]:
        fam = _family_name(family)
        self._families.setdefault(peer, set()).add(fam)
        metric = self.prefix_updates_received if direction == "in" else self.prefix_updates_sent
        row = [0, 0, metric.labels(peer, fam, "announce"), metric.labels(peer, fam, "withdraw")]
        self._pending[(direction, peer, family)] = row
        return row

    def flush_prefix_updates(self) -> None:
        """Add the prefix counts held since the last collection to their counters."""
        for row in self._pending.values():
            if row[0]:
                row[2].inc(row[0])
                row[0] = 0
            if row[1]:
                row[3].inc(row[1])
                row[1] = 0

    def set_prefixes(
        self, peer: str, family: Any, received: int, accepted: int, advertised: int
    ) -> None:
        fam = _family_name(family)
        self._families.setdefault(peer, set()).add(fam)
        self.prefixes_received.labels(peer, fam).set(received)
        self.prefixes_accepted.labels(peer, fam).set(accepted)
        self.prefixes_advertised.labels(peer, fam).set(advertised)

    def on_event(self, peer: str, event: Event) -> None:
        """Feed one speaker event (what `PeerDriver` hands its owner); others are ignored."""
        if isinstance(event, UpdateReceived):
            self.on_updates(peer, [event.update])
        elif isinstance(event, StateChanged):
            self.on_state(peer, event.new)
        elif isinstance(event, SessionEstablished):
            # The StateChanged before it already moved the state gauge; this counts it once.
            self.establishments.labels(peer).inc()
        elif isinstance(event, SessionDown):
            self.on_down(
                peer,
                was_established=event.was_established,
                notification=event.notification,
                sent=event.sent,
                hold_timer_expired=event.hold_timer_expired,
            )

    def on_updates(self, peer: str, updates: list[Update]) -> None:
        """Count the prefixes of UPDATEs received from `peer` (one read's worth at a time)."""
        # The hot path: plain int additions on rows bound once per peer and family, and looked
        # up once per batch.
        pending = self._pending
        rows: dict[Any, list[Any]] = {}
        for update in updates:
            for fam, nlri in update.announce.items():
                row = rows.get(fam)
                if row is None:
                    row = rows[fam] = pending.get(("in", peer, fam)) or self._bind("in", peer, fam)
                row[0] += len(nlri)
            if update.withdraw:
                for fam, nlri in update.withdraw.items():
                    row = rows.get(fam)
                    if row is None:
                        row = rows[fam] = pending.get(("in", peer, fam)) or self._bind(
                            "in", peer, fam
                        )
                    row[1] += len(nlri)

    def observe_session(self, peer: str, session: Any) -> None:
        """Copy a `bgpd.speaker.fsm.Session`'s cumulative message counters into the counters.

        Call it before each scrape. A replaced Session (counters restarting from zero) is
        detected and its counts are added on top, so the exported counters never go back.
        """
        seen = self._seen.setdefault(peer, {})
        for direction, counts, metric in (
            ("in", session.messages_in, self.messages_received),
            ("out", session.messages_out, self.messages_sent),
        ):
            for mtype, value in counts.items():
                key = f"{direction}:{mtype}"
                last = seen.get(key, 0)
                delta = value - last if value >= last else value
                if delta:
                    metric.labels(peer, mtype).inc(delta)
                else:
                    metric.labels(peer, mtype)
                seen[key] = value

    def remove_peer(self, peer: str) -> None:
        """Drop every series of a neighbor that was removed from the configuration."""
        for s in STATES:
            _remove(self.session_state, peer, s)
        for metric in (self.establishments, self.flaps, self.hold_timer_expiries):
            _remove(metric, peer)
        for mtype in MESSAGE_TYPES:
            _remove(self.messages_received, peer, mtype)
            _remove(self.messages_sent, peer, mtype)
        for fam in self._families.pop(peer, set()):
            for metric in (
                self.prefixes_received,
                self.prefixes_accepted,
                self.prefixes_advertised,
            ):
                _remove(metric, peer, fam)
            for kind in ("announce", "withdraw"):
                _remove(self.prefix_updates_received, peer, fam, kind)
                _remove(self.prefix_updates_sent, peer, fam, kind)
        # Their bound children are gone from the counters: forget them and their counts.
        for key in [k for k in self._pending if k[1] == peer]:
            del self._pending[key]
        for kind in self._notif_types.pop(peer, set()):
            _remove(self.last_notification_code, peer, kind)
            _remove(self.last_notification_subcode, peer, kind)
        self._states.pop(peer, None)
        self._established_at.pop(peer, None)
        self._seen.pop(peer, None)

    def uptimes(self) -> dict[str, float]:
        """Seconds each Established session has been up, by peer."""
        now = self._clock()
        return {peer: max(0.0, now - at) for peer, at in self._established_at.items()}


class _UptimeCollector(Collector):
    """Uptime is computed at scrape time from when the session came up."""

    def __init__(self, bgp: BgpMetrics) -> None:
        self._bgp = bgp

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(UPTIME_NAME, UPTIME_HELP, labels=["peer"])

    def collect(self) -> Iterator[Metric]:
        fam = self._family()
        up = self._bgp.uptimes()
        for peer in sorted(self._bgp._states):
            fam.add_metric([peer], up.get(peer, 0.0))
        yield fam


def _remove(metric: Any, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class RibMetrics(_Area):
    """The speaker's RIB: best routes and paths per family, interned attributes, best-path runs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.routes = self._gauge(
            "rib_routes", "Prefixes with a best path in the Loc-RIB.", ["family"]
        )
        self.paths = self._gauge(
            "rib_paths",
            "Paths held in the RIB (every peer's, before best-path selection).",
            ["family"],
        )
        self.attribute_sets = self._gauge(
            "rib_attribute_sets", "Distinct interned path-attribute sets."
        )
        self.best_path_runs = self._counter(
            "rib_best_path_runs",
            "Best-path selections run (one per prefix whose paths changed).",
            ["family"],
        )

    def set_counts(self, family: Any, routes: int, paths: int) -> None:
        fam = _family_name(family)
        self.routes.labels(fam).set(routes)
        self.paths.labels(fam).set(paths)

    def set_attribute_sets(self, count: int) -> None:
        self.attribute_sets.set(count)

    def on_best_path_runs(self, family: Any, count: int = 1) -> None:
        self.best_path_runs.labels(_family_name(family)).inc(count)


class FibMetrics(_Area):
    """The kernel FIB writer: installed routes, netlink errors, batch latency, reconcile."""

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.time):
        super().__init__(registry)
        self._clock = clock
        self.routes = self._gauge(
            "fib_routes", "Routes of ours installed in the kernel.", ["family"]
        )
        self.netlink_errors = self._counter(
            "fib_netlink_errors", "Netlink requests the kernel refused."
        )
        self.apply_duration = self._histogram(
            "fib_apply_duration_seconds", "Time to apply one batch of route changes to the kernel."
        )
        self.reconcile_repairs = self._counter(
            "fib_reconcile_repairs",
            "Kernel routes the reconcile had to fix (type added|removed|replaced).",
            ["type"],
        )
        self.in_sync = self._gauge(
            "fib_in_sync", "1 when the kernel holds exactly the routes the RIB wants, else 0."
        )
        self.last_sync = self._gauge(
            "fib_last_sync_timestamp_seconds",
            "Unix time of the last complete sync with the kernel.",
        )
        for kind in ("added", "removed", "replaced"):
            self.reconcile_repairs.labels(kind)

    def set_routes(self, family: Any, count: int) -> None:
        self.routes.labels(_family_name(family)).set(count)

    def observe_batch(self, seconds: float, errors: int = 0) -> None:
        self.apply_duration.observe(seconds)
        if errors:
            self.netlink_errors.inc(errors)

    def on_reconcile(self, added: int = 0, removed: int = 0, replaced: int = 0) -> None:
        for kind, n in (("added", added), ("removed", removed), ("replaced", replaced)):
            if n:
                self.reconcile_repairs.labels(kind).inc(n)

    def set_in_sync(self, in_sync: bool) -> None:
        self.in_sync.set(1 if in_sync else 0)
        if in_sync:
            self.last_sync.set(self._clock())


class AgentMetrics(_Area):
    """The per-host dataplane agent: endpoints, ipsets, iptables and the restores that apply them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.endpoints = self._gauge("agent_endpoints", "Workload endpoints plumbed on this host.")
        self.ipsets = self._gauge("agent_ipsets", "IP sets of ours in the kernel.")
        self.ipset_members = self._gauge("agent_ipset_members", "Members across all our IP sets.")
        self.iptables_chains = self._gauge("agent_iptables_chains", "iptables chains of ours.")
        self.iptables_rules = self._gauge("agent_iptables_rules", "Rules in our iptables chains.")
        self.restores = self._counter(
            "agent_restore_calls",
            "iptables-restore / ipset restore runs (type iptables|ipset).",
            ["type"],
        )
        self.restore_errors = self._counter(
            "agent_restore_errors", "Restore runs that failed (type iptables|ipset).", ["type"]
        )
        self.apply_duration = self._histogram(
            "agent_apply_duration_seconds",
            "Time to apply one dataplane update (policy, ipsets, endpoints).",
        )
        for kind in ("iptables", "ipset"):
            self.restores.labels(kind)
            self.restore_errors.labels(kind)

    def set_dataplane(
        self, *, endpoints: int, ipsets: int, ipset_members: int, chains: int, rules: int
    ) -> None:
        self.endpoints.set(endpoints)
        self.ipsets.set(ipsets)
        self.ipset_members.set(ipset_members)
        self.iptables_chains.set(chains)
        self.iptables_rules.set(rules)

    def on_restore(self, kind: str, ok: bool) -> None:
        if kind not in ("iptables", "ipset"):
            raise ValueError(f"restore type must be 'iptables' or 'ipset', not {kind!r}")
        self.restores.labels(kind).inc()
        if not ok:
            self.restore_errors.labels(kind).inc()

    def observe_apply(self, seconds: float) -> None:
        self.apply_duration.observe(seconds)


class IpamMetrics(_Area):
    """IPAM as seen from one host: its blocks, pool usage, allocation latency, CAS conflicts."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.blocks = self._gauge("ipam_blocks", "Blocks affine to this host.")
        self.addresses_in_use = self._gauge(
            "ipam_addresses_in_use", "Allocated addresses per IP pool.", ["pool"]
        )
        self.addresses_free = self._gauge(
            "ipam_addresses_free", "Addresses still free per IP pool.", ["pool"]
        )
        self.allocation_duration = self._histogram(
            "ipam_allocation_duration_seconds",
            "Time to allocate one address, datastore round trips included.",
        )
        self.cas_conflicts = self._counter(
            "ipam_cas_conflicts", "Compare-and-swap writes that lost a race and were retried."
        )

    def set_pool(self, pool: str, in_use: int, free: int) -> None:
        self.addresses_in_use.labels(pool).set(in_use)
        self.addresses_free.labels(pool).set(free)

    def remove_pool(self, pool: str) -> None:
        _remove(self.addresses_in_use, pool)
        _remove(self.addresses_free, pool)

    def set_blocks(self, count: int) -> None:
        self.blocks.set(count)

    def observe_allocation(self, seconds: float) -> None:
        self.allocation_duration.observe(seconds)

    def on_cas_conflict(self, count: int = 1) -> None:
        self.cas_conflicts.inc(count)


class DatastoreMetrics(_Area):
    """The datastore client: how far its watch lags behind the store, and reconnects."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.watch_lag = self._gauge(
            "datastore_watch_lag_revisions",
            "Store revisions written but not yet applied by this daemon's watch.",
        )
        self.watch_events = self._counter(
            "datastore_watch_events", "Watch events applied (type put|delete).", ["type"]
        )
        self.reconnects = self._counter(
            "datastore_reconnects",
            "Times the connection or watch to the datastore was re-established.",
        )
        for kind in ("put", "delete"):
            self.watch_events.labels(kind)

    def set_watch_lag(self, store_revision: int, applied_revision: int) -> None:
        self.watch_lag.set(max(0, store_revision - applied_revision))

    def on_watch_event(self, kind: str) -> None:
        if kind not in ("put", "delete"):
            raise ValueError(f"watch event type must be 'put' or 'delete', not {kind!r}")
        self.watch_events.labels(kind).inc()

    def on_reconnect(self) -> None:
        self.reconnects.inc()


class Metrics:
    """The metric areas one daemon exports, on one registry of its own."""

    def __init__(
        self,
        areas: Iterable[str] = AREAS,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        process: bool = False,
    ) -> None:
        """`process=True` adds the standard process_* metrics (CPU, memory, fds)."""
        # `*_created` series double the series count and no routemesh dashboard uses them.
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        wanted = set(areas)
        unknown = wanted - set(AREAS)
        if unknown:
            raise ValueError(f"unknown metric areas {sorted(unknown)}; known: {', '.join(AREAS)}")
        self.areas = tuple(a for a in AREAS if a in wanted)
        r = self.registry
        self.bgp: BgpMetrics | None = BgpMetrics(r, clock) if "bgp" in wanted else None
        self.rib: RibMetrics | None = RibMetrics(r) if "rib" in wanted else None
        self.fib: FibMetrics | None = FibMetrics(r, clock) if "fib" in wanted else None
        self.agent: AgentMetrics | None = AgentMetrics(r) if "agent" in wanted else None
        self.ipam: IpamMetrics | None = IpamMetrics(r) if "ipam" in wanted else None
        self.datastore: DatastoreMetrics | None = (
            DatastoreMetrics(r) if "datastore" in wanted else None
        )
        if process:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=r)

    def render(self) -> bytes:
        """The text exposition format, as `/metrics` serves it."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's current value (full sample name, e.g. `..._total`), or None."""
        return self.registry.get_sample_value(name, dict(labels or {}))

    def specs(self) -> list[MetricSpec]:
        """Every metric family of the areas this daemon has, sorted by name (for the docs)."""
        out: list[MetricSpec] = []
        for area in (self.bgp, self.rib, self.fib, self.agent, self.ipam, self.datastore):
            if area is not None:
                out.extend(area.specs)
        return sorted(out)


def reference_markdown(metrics: Metrics | None = None) -> str:
    """The metric table of docs/metrics.md, one row per family; the docs test compares them."""
    metrics = metrics if metrics is not None else Metrics()
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in metrics.specs():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        meaning = spec.help.replace("|", "\\|")  # a bare | would end the table cell
        lines.append(f"| `{spec.name}` | {spec.type} | {labels} | {meaning} |")
    return "\n".join(lines) + "\n"
