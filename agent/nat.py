"""NAT outgoing (Calico's natOutgoing): the `cali40masq-ipam-pools`/`cali40all-ipam-pools` ipsets
(`cali60…` for IPv6), the nat-table chain `cali-nat-outgoing` hooked from POSTROUTING, their
reconcile against the kernel, and the loop that follows IPPools in the datastore.

Traffic from a natOutgoing pool to an address outside every pool leaves with the host's address;
traffic between pools never does. As in Felix, every pool counts in the "all pools" set, a
disabled one too (disabled only stops IPAM handing out new addresses; workloads already in the
pool keep routing, and keep their NAT when the pool has natOutgoing).

We own exactly the two sets of each family, the one chain and our one hook rule at the top of
nat POSTROUTING; nothing else in the nat table or in `ipset` is touched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agent import ipsets
from agent.iptables import HASH_TAG, HOOK_COMMENT, render_match
from agent.policy_dataplane import ApplyError, Runner, local_runner
from bgpd.datastore.base import CompactedError, DatastoreError
from bgpd.datastore.resources import ResourceStore, kind_prefix, parse_key
from bgpd.model import IPPool, ResourceError, from_dict
from policy.ruleset import InSet, IPSet

log = logging.getLogger(__name__)

TABLE = "nat"
CHAIN = "cali-nat-outgoing"
BUILTIN = "POSTROUTING"
MASQ_SET = {4: "cali40masq-ipam-pools", 6: "cali60masq-ipam-pools"}
ALL_SET = {4: "cali40all-ipam-pools", 6: "cali60all-ipam-pools"}
SET_TYPE = "hash:net"

_HASH_RE = re.compile(HASH_TAG + r"([a-z2-7]{16})")
_COMMENT = '-m comment --comment "{}"'


# --- what we want ---------------------------------------------------------------------------


def _member(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    # `ipset save` prints a host-length net without its length; compare in that form.
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def desired_sets(pools: Iterable[IPPool], version: int) -> dict[str, IPSet]:
    """The two sets for one family: natOutgoing pools, and every pool (disabled ones too)."""
    masq: set[str] = set()
    every: set[str] = set()
    for pool in pools:
        net = pool.spec.network
        if net.version != version:
            continue
        every.add(_member(net))
        if pool.spec.nat_outgoing:
            masq.add(_member(net))
    return {
        MASQ_SET[version]: IPSet(MASQ_SET[version], SET_TYPE, version, frozenset(masq)),
        ALL_SET[version]: IPSet(ALL_SET[version], SET_TYPE, version, frozenset(every)),
    }


def _tag(body: str) -> tuple[str, str]:
    digest = base64.b32encode(hashlib.sha256(body.encode()).digest()).decode().lower()[:16]
    return digest, f"{_COMMENT.format(HASH_TAG + digest)} {body}"


def masq_rule(version: int) -> str:
    """The one rule of the chain, without `-A chain` and our hash comment."""
    src = render_match(InSet("src", MASQ_SET[version]))
    dst = render_match(InSet("dst", ALL_SET[version], negate=True))
    return f"{src} {dst} -j MASQUERADE --random-fully"


def desired_chain(version: int) -> tuple[tuple[str, str], ...]:
    """(hash, rule text) for `cali-nat-outgoing`. Felix empties the chain while no pool has
    natOutgoing; we keep the rule (an empty masq set matches nothing) so our sets are always
    referenced: the policy dataplane claims every `cali40…` set and destroys those it did not
    make, which the kernel refuses only while a rule uses them."""
    return (_tag(masq_rule(version)),)


def hook_line() -> str:
    """Our POSTROUTING rule as `iptables-save` prints it."""
    return f"-A {BUILTIN} {_COMMENT.format(HOOK_COMMENT)} -j {CHAIN}"


# --- what the kernel holds ------------------------------------------------------------------


@dataclass
class NatTableState:
    """Our part of the nat table: the chain's rule hashes (None: no chain; "?" for a rule
    without our tag), our hook rules in POSTROUTING, and whether POSTROUTING starts with the
    one and only hook."""

    chain: tuple[str, ...] | None = None
    hook_lines: list[str] = field(default_factory=list)
    hook_ok: bool = False


def parse_nat_save(text: str) -> NatTableState:
    """Read our chain and hook out of `iptables-save -t nat` output; the rest is ignored."""
    chain: list[str] | None = None
    hooks: list[str] = []
    first: str | None = None
    in_nat = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_nat = line == f"*{TABLE}"
            continue
        if not in_nat:
            continue
        if line.startswith(f":{CHAIN} "):
            chain = chain if chain is not None else []
        elif line.startswith(f"-A {CHAIN} "):
            m = _HASH_RE.search(line)
            chain = chain if chain is not None else []
            chain.append(m.group(1) if m else "?")
        elif line.startswith(f"-A {BUILTIN} "):
            if first is None:
                first = line
            if line.endswith(f"-j {CHAIN}"):
                hooks.append(line)
    ok = first is not None and first.endswith(f"-j {CHAIN}") and len(hooks) == 1
    return NatTableState(None if chain is None else tuple(chain), hooks, ok)


# --- the batches ----------------------------------------------------------------------------


def restore_text(state: NatTableState, chain: Sequence[tuple[str, str]]) -> str:
    """The `iptables-restore --noflush` batch that makes the kernel hold `chain` and our hook,
    or "" when it already does. Declaring the chain flushes it, so it is rewritten whole."""
    hashes = tuple(h for h, _ in chain)
    write = state.chain != hashes
    fix = not state.hook_ok
    if not write and not fix:
        return ""
    out = [f"*{TABLE}"]
    if write:
        out.append(f":{CHAIN} - [0:0]")
    if fix:
        # Misplaced or duplicated hooks go; one is inserted again at the top.
        out += ["-D" + line[2:] for line in state.hook_lines]
    if write:
        out += [f"-A {CHAIN} {text}" for _, text in chain]
    if fix:
        out.append(f"-I {BUILTIN} 1 {_COMMENT.format(HOOK_COMMENT)} -j {CHAIN}")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def removal_text(state: NatTableState) -> str:
    """Take our hook and chain out of the nat table; "" when neither is there."""
    if state.chain is None and not state.hook_lines:
        return ""
    out = [f"*{TABLE}"]
    out += ["-D" + line[2:] for line in state.hook_lines]
    if state.chain is not None:
        out += [f":{CHAIN} - [0:0]", f"-X {CHAIN}"]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def failing_line(stderr: str, batch: str) -> str | None:
    """The batch line a restore tool complained about (`line: N`, `Error in line N`); for an
    error nft only finds at COMMIT, the first rule naming what it quotes."""
    lines = batch.splitlines()
    m = re.search(r"line:? (\d+)", stderr)
    line = None
    if m and 0 < int(m.group(1)) <= len(lines):
        line = lines[int(m.group(1)) - 1]
    if line is None or line == "COMMIT":
        names = re.findall(r"'([^']+)'", stderr) + re.findall(r"[Ss]et (\S+) doesn't", stderr)
        for name in names:
            for candidate in lines:
                if candidate.startswith("-") and f" {name}" in candidate:
                    return candidate
    return line


@dataclass
class NatStats:
    """What one apply sent; both empty in a steady state."""

    ipset_batch: str = ""
    iptables_batch: str = ""
    sets_created: list[str] = field(default_factory=list)


# --- the dataplane --------------------------------------------------------------------------


class NatOutgoing:
    """Owns the NAT-outgoing sets, chain and hook for one IP family in one network namespace."""

    def __init__(self, runner: Runner | None = None, version: int = 4) -> None:
        if version not in (4, 6):
            raise ValueError(f"IP version must be 4 or 6, not {version!r}")
        self.run = runner or local_runner()
        self.version = version
        self._restore = "iptables-nft-restore" if version == 4 else "ip6tables-nft-restore"
        self._save = "iptables-nft-save" if version == 4 else "ip6tables-nft-save"
        # What we believe the kernel holds; None until the first read.
        self._table: NatTableState | None = None
        self._sets: dict[str, IPSet] = {}
        self._active: bool | None = None  # for logging only the changes

    @property
    def set_names(self) -> tuple[str, str]:
        return MASQ_SET[self.version], ALL_SET[self.version]

    def _read(self) -> None:
        res = self.run([self._save, "-t", TABLE], None)
        if res.returncode != 0:
            raise ApplyError(self._save, res.stderr.strip())
        self._table = parse_nat_save(res.stdout)
        res = self.run(["ipset", "save"], None)
        if res.returncode != 0:
            raise ApplyError("ipset", res.stderr.strip())
        mine = self.set_names
        self._sets = ipsets.parse_save(res.stdout, keep=lambda name: name in mine)

    def reconcile(self, pools: Iterable[IPPool]) -> NatStats:
        """Read our sets and chain from the kernel and repair whatever differs from `pools`."""
        self._read()
        return self.apply(pools)

    def apply(self, pools: Iterable[IPPool]) -> NatStats:
        """Make the kernel hold the NAT state for `pools`, writing only what changed since the
        last apply or read. A refused batch is undone and raised as ApplyError."""
        if self._table is None:
            self._read()
        assert self._table is not None
        want_sets = desired_sets(pools, self.version)
        active = bool(want_sets[MASQ_SET[self.version]].members)
        chain = desired_chain(self.version)
        try:
            set_diff = ipsets.diff(self._sets, want_sets)
        except ValueError as exc:
            # Someone made one of our names with another type; we cannot fix that under a
            # rule that references it, so say so rather than guess.
            raise ApplyError("ipset", str(exc)) from None
        stats = NatStats(set_diff.restore_text(), restore_text(self._table, chain))
        stats.sets_created = [s.name for s in set_diff.create]
        if stats.ipset_batch:
            res = self.run(["ipset", "restore", "-exist"], stats.ipset_batch)
            if res.returncode != 0:
                self._undo(set_diff)
                raise ApplyError(
                    "ipset restore",
                    res.stderr.strip(),
                    failing_line(res.stderr, stats.ipset_batch),
                )
        if stats.iptables_batch:
            res = self.run([self._restore, "--noflush"], stats.iptables_batch)
            if res.returncode != 0:
                self._undo(set_diff)
                raise ApplyError(
                    self._restore,
                    res.stderr.strip(),
                    failing_line(res.stderr, stats.iptables_batch),
                )
            self._table = NatTableState(tuple(h for h, _ in chain), [hook_line()], True)
        self._sets = dict(want_sets)
        if active != self._active:
            log.info(
                "IPv%d NAT outgoing %s (%d pool(s) masqueraded)",
                self.version,
                "active" if active else "idle",
                len(want_sets[MASQ_SET[self.version]].members),
            )
            self._active = active
        return stats

    def _undo(self, set_diff: ipsets.SetDiff) -> None:
        undo = set_diff.undo_text()
        if undo:
            res = self.run(["ipset", "restore", "-exist"], undo)
            if res.returncode != 0:
                log.error("NAT ipset rollback failed: %s", res.stderr.strip())
        # Our belief may be off now; the next apply reads the kernel again.
        self._table = None

    def remove(self) -> None:
        """Take our hook, chain and both sets out of the kernel (agent uninstall)."""
        self._read()
        assert self._table is not None
        batch = removal_text(self._table)
        if batch:
            res = self.run([self._restore, "--noflush"], batch)
            if res.returncode != 0:
                raise ApplyError(self._restore, res.stderr.strip(), failing_line(res.stderr, batch))
        if self._sets:
            text = "".join(f"destroy {name}\n" for name in sorted(self._sets))
            res = self.run(["ipset", "restore"], text)
            if res.returncode != 0:
                raise ApplyError(
                    "ipset restore", res.stderr.strip(), failing_line(res.stderr, text)
                )
        self._table = None
        self._sets = {}


# --- the loop -------------------------------------------------------------------------------


def _decode_pool(key: str, value: bytes) -> IPPool | None:
    try:
        res = from_dict(json.loads(value), source=key)
    except (ValueError, ResourceError) as exc:
        log.warning("%s: unreadable IPPool, ignored for NAT outgoing: %s", key, exc)
        return None
    return res if isinstance(res, IPPool) else None


class NatOutgoingSync:
    """One task that keeps each family's NatOutgoing equal to the IPPools in the store: list
    and reconcile, apply watch changes (batched while they keep coming), list and reconcile
    again every `interval`, and retry a refused apply after `retry`."""

    def __init__(
        self,
        resources: ResourceStore,
        dataplanes: Mapping[int, NatOutgoing],
        *,
        interval: float = 300.0,
        retry: float = 5.0,
        batch_delay: float = 0.05,
    ) -> None:
        self.datastore = resources.datastore
        self.dataplanes = dict(dataplanes)
        self.interval = interval
        self.retry = min(retry, interval)
        self.batch_delay = batch_delay
        self.pools: dict[str, IPPool] = {}
        self.applies = 0
        self.failed = False

    async def _list(self) -> int:
        # Key by key rather than ResourceStore.list: one broken pool must not stop NAT for all.
        kvs, revision = await self.datastore.list(kind_prefix(IPPool))
        pools = {}
        for kv in kvs:
            if parse_key(kv.key) is None:
                continue
            pool = _decode_pool(kv.key, kv.value)
            if pool is not None:
                pools[kv.key] = pool
        self.pools = pools
        return revision + 1

    async def apply(self, *, reconcile: bool) -> None:
        pools = list(self.pools.values())
        self.failed = False
        for version, dp in self.dataplanes.items():
            try:
                fn = dp.reconcile if reconcile else dp.apply
                # Subprocesses: keep the event loop free while they run.
                await asyncio.to_thread(fn, pools)
            except ApplyError as err:
                log.error("IPv%d NAT outgoing apply failed, will retry: %s", version, err)
                self.failed = True
        if not self.failed:
            self.applies += 1

    async def run(self, stop: asyncio.Event) -> None:
        """List, reconcile and follow the store until `stop` is set; rules stay in place."""
        while not stop.is_set():
            try:
                revision = await self._list()
                await self.apply(reconcile=True)
                await self._follow(revision, stop)
            except CompactedError:
                log.warning("IPPool watch history compacted; listing again")
            except DatastoreError as exc:
                log.warning("NAT outgoing: datastore: %s; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.retry)

    def _event(self, key: str, kind: str, value: bytes | None) -> bool:
        if parse_key(key) is None:
            return False
        if kind == "delete" or value is None:
            return self.pools.pop(key, None) is not None
        pool = _decode_pool(key, value)
        if pool is None:
            return False  # keep the last good version of a pool that turned unreadable
        self.pools[key] = pool
        return True

    async def _follow(self, revision: int, stop: asyncio.Event) -> None:
        """Apply watch events until the resync is due (return) or `stop` is set."""
        events: asyncio.Queue[tuple[str, str, bytes | None]] = asyncio.Queue()

        async def pump() -> None:
            async for ev in self.datastore.watch(kind_prefix(IPPool), start_revision=revision):
                await events.put((ev.key, ev.kind, ev.value))

        pumper = asyncio.create_task(pump())
        stopper = asyncio.create_task(stop.wait())
        try:
            resync_at = time.monotonic() + self.interval
            while True:
                due = resync_at
                if self.failed:
                    due = min(due, time.monotonic() + self.retry)
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait(
                    {get, pumper, stopper},
                    timeout=max(0.0, due - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if get not in done:
                    get.cancel()
                if stopper in done:
                    return
                if pumper in done:
                    pumper.result()  # re-raise CompactedError and friends
                    return
                if get not in done:
                    if time.monotonic() >= resync_at:
                        return  # the caller lists and reconciles: the periodic safety net
                    await self.apply(reconcile=True)
                    continue
                changed = self._event(*get.result())
                changed |= await self._drain(events)
                if changed or self.failed:
                    await self.apply(reconcile=self.failed)
        finally:
            pumper.cancel()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pumper

    async def _drain(self, events: asyncio.Queue[tuple[str, str, bytes | None]]) -> bool:
        """Take every change that arrives within `batch_delay` of the last one."""
        changed = False
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), timeout=self.batch_delay)
            except TimeoutError:
                return changed
            changed |= self._event(*ev)


async def run_nat_outgoing(
    resources: ResourceStore,
    stop: asyncio.Event,
    interval: float = 300.0,
    *,
    netns: str | None = None,
    versions: Sequence[int] = (4, 6),
) -> None:
    """Keep NAT outgoing equal to the store's IPPools (in `netns`, or here) until `stop`."""
    runner = local_runner(netns)
    dataplanes = {v: NatOutgoing(runner, v) for v in versions}
    await NatOutgoingSync(resources, dataplanes, interval=interval).run(stop)
