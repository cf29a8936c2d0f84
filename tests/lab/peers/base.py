"""Common peer API for the lab's real BGP daemons: Neighbor config and the Peer base.

Subclasses in this package fill in config, process start and CLI reads per daemon.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from tests.lab.netns import LabError, Netns
from tests.lab.require import require_binary
from tests.lab.waiting import wait_for

Family = Literal["ipv4", "ipv6"]
Route = tuple[str, str]  # (prefix, next hop), both in Python's compressed text form
# How a peer sees one path of a prefix: (next hop, ORIGINATOR_ID or None, CLUSTER_LIST).
RRView = tuple[str, str | None, tuple[str, ...]]


@dataclass(frozen=True)
class Neighbor:
    """One configured BGP session, as seen from the peer that owns it.

    ``local_address`` is the session's source address; by default the peer's own address of
    the neighbor's family. ``graceful_restart`` is honoured by BirdPeer and GobgpPeer; ``add_paths``
    (receive every path, RFC 7911) by BirdPeer and GobgpPeer.
    """

    address: str
    remote_asn: int
    password: str | None = None
    passive: bool = False
    hold_time: int = 9
    families: tuple[Family, ...] = ("ipv4", "ipv6")
    graceful_restart: bool = False
    local_address: str | None = None
    add_paths: bool = False

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.address).version


def norm_prefix(prefix: str) -> str:
    return ipaddress.ip_network(prefix, strict=False).compressed


def norm_addr(addr: str) -> str:
    return ipaddress.ip_address(addr).compressed


def family_of(prefix: str) -> Family:
    return "ipv4" if ipaddress.ip_network(prefix, strict=False).version == 4 else "ipv6"


class Peer(abc.ABC):
    """Common API of all lab peers. Subclasses fill in config, process start and CLI reads.

    Announced prefixes are remembered, so a restarted peer announces them again.
    """

    kind: ClassVar[str]
    binaries: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        ns: Netns,
        *,
        asn: int,
        router_id: str,
        local_addresses: Sequence[str],
        neighbors: Sequence[Neighbor] = (),
    ) -> None:
        self.ns = ns
        self.lab = ns.lab
        self.asn = asn
        self.router_id = router_id
        # Accept CIDRs too, since tests often have them at hand from veth().
        self.local_addresses = [norm_addr(a.split("/", 1)[0]) for a in local_addresses]
        self.neighbors = list(neighbors)
        self.dir = self.lab.tmpdir(self.kind)
        self.log_path = self.dir / f"{self.kind}.log"
        self.announced: dict[str, str] = {}  # prefix -> next hop
        self.procs: list[subprocess.Popen[bytes]] = []
        # Stop before the lab kills processes, so daemons close sessions and sockets cleanly.
        self.lab.on_cleanup(self.close)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.ns.name}, AS{self.asn}, {self.router_id})"

    # -- helpers for tests ------------------------------------------------------------------

    @classmethod
    def require(cls) -> None:
        """Skip (or fail under CI) unless this peer's binaries are installed."""
        for name in cls.binaries:
            require_binary(name)

    def local_address(self, version: int) -> str | None:
        """This peer's first configured address of IP ``version``."""
        for a in self.local_addresses:
            if ipaddress.ip_address(a).version == version:
                return a
        return None

    def session_source(self, nb: Neighbor) -> str:
        src = nb.local_address or self.local_address(nb.version)
        if src is None:
            raise ValueError(f"{self}: no IPv{nb.version} local address for {nb.address}")
        return src

    def next_hop_for(self, family: Family) -> str:
        nh = self.local_address(4 if family == "ipv4" else 6)
        if nh is None:
            raise ValueError(f"{self}: no local address to use as {family} next hop")
        return nh

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the daemon log(s), for failure messages."""
        out = []
        for path in sorted(self.dir.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(out) or "(no log)"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    @abc.abstractmethod
    def start(self) -> None:
        """Write the config and start the daemon(s); return once the CLI answers."""

    def stop(self) -> None:
        """SIGTERM the daemon(s) and wait; a no-op when not running."""
        for proc in reversed(self.procs):
            self.lab.kill(proc)
        self.procs.clear()

    def close(self) -> None:
        """Stop and remove state kept outside the lab temp dir (the Lab calls this)."""
        self.stop()
        self._remove_external_state()

    def _remove_external_state(self) -> None:
        """Hook: delete sockets/pipes a daemon needs outside our temp dir."""
        return None

    def kill9(self) -> None:
        """SIGKILL the daemon(s): sessions drop without a NOTIFICATION, as after a crash."""
        for proc in reversed(self.procs):
            self.lab.kill9(proc)
        self.procs.clear()

    def restart(self) -> None:
        """Stop and start again with the same config and announcements."""
        self.stop()
        self.start()

    # -- sessions and routes ----------------------------------------------------------------

    @abc.abstractmethod
    def is_established(self, peer_addr: str) -> bool:
        """Whether the session to ``peer_addr`` is Established, per the daemon's own view."""

    def wait_established(self, peer_addr: str, timeout: float = 30.0) -> None:
        """Poll the daemon's CLI until the session to ``peer_addr`` is Established."""
        wait_for(
            lambda: self.running and self.is_established(peer_addr),
            timeout=timeout,
            what=f"{self} session to {peer_addr} Established",
            describe=self.log_tail,
        )

    @abc.abstractmethod
    def routes(self, family: Family = "ipv4") -> set[Route]:
        """Routes learned from BGP neighbors (not our own announcements): {(prefix, nh)}."""

    def wait_routes(self, expected: Iterable[Route], timeout: float = 30.0) -> set[Route]:
        """Wait until every expected (prefix, next hop) is learned; return the full set."""
        want = {(norm_prefix(p), norm_addr(nh)) for p, nh in expected}
        families = {family_of(p) for p, _ in want}

        def probe() -> set[Route] | None:
            have: set[Route] = set()
            for fam in families:
                have |= self.routes(fam)
            return have if want <= have else None

        return wait_for(
            probe,
            timeout=timeout,
            what=f"{self} to learn {sorted(want)}",
            describe=lambda: self._describe_routes(families),
        )

    def wait_no_routes(self, prefixes: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until none of ``prefixes`` is learned any more (after a withdraw)."""
        gone = {norm_prefix(p) for p in prefixes}
        families = {family_of(p) for p in gone}
        wait_for(
            lambda: not any(p in gone for f in families for p, _ in self.routes(f)),
            timeout=timeout,
            what=f"{self} to drop {sorted(gone)}",
            describe=lambda: self._describe_routes(families),
        )

    # Async twins: the blocking waits above would freeze an event loop that runs our own
    # speaker in the same test, so these poll from a worker thread instead.

    async def wait_established_async(self, peer_addr: str, timeout: float = 30.0) -> None:
        """wait_established() without blocking the running event loop."""
        await asyncio.to_thread(self.wait_established, peer_addr, timeout)

    async def wait_routes_async(
        self, expected: Iterable[Route], timeout: float = 30.0
    ) -> set[Route]:
        """wait_routes() without blocking the running event loop."""
        return await asyncio.to_thread(self.wait_routes, list(expected), timeout)

    async def wait_no_routes_async(self, prefixes: Iterable[str], timeout: float = 30.0) -> None:
        """wait_no_routes() without blocking the running event loop."""
        await asyncio.to_thread(self.wait_no_routes, list(prefixes), timeout)

    def _describe_routes(self, families: Iterable[Family]) -> str:
        parts = []
        for fam in sorted(families):
            try:
                parts.append(f"{fam} routes now: {sorted(self.routes(fam))}")
            except Exception as exc:
                parts.append(f"{fam} routes unreadable: {exc!r}")
        return "\n".join(parts) + "\n" + self.log_tail()

    def announce(self, prefixes: Iterable[str], next_hop: str | None = None) -> None:
        """Originate ``prefixes`` (next hop: our own address of each prefix's family)."""
        new = {}
        for p in prefixes:
            p = norm_prefix(p)
            new[p] = norm_addr(next_hop) if next_hop else self.next_hop_for(family_of(p))
        self.announced.update(new)
        if self.running:
            self._apply_announce(new)

    def withdraw(self, prefixes: Iterable[str]) -> None:
        """Stop originating ``prefixes``."""
        gone = {}
        for p in prefixes:
            p = norm_prefix(p)
            if p in self.announced:
                gone[p] = self.announced.pop(p)
        if self.running and gone:
            self._apply_withdraw(gone)

    def rr_view(self, prefix: str) -> set[RRView]:
        """Every learned path of ``prefix`` as (next hop, ORIGINATOR_ID, CLUSTER_LIST)."""
        raise NotImplementedError(f"{type(self).__name__} does not read RR attributes")

    @abc.abstractmethod
    def _apply_announce(self, routes: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _apply_withdraw(self, routes: dict[str, str]) -> None: ...

    def _check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise LabError(f"{self} exited with {proc.returncode}\n{self.log_tail()}")
