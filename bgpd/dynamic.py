"""A daemon whose neighbors and local routes are set at run time: the node's speaker.

`bgpd -f` reads its sessions from a file; a node computes them from the datastore and
changes them as nodes come and go. `set_neighbors` adds, removes and replaces sessions by
address and leaves every unchanged one alone; `set_local_routes` sets what we originate,
each prefix with its own attributes (communities from BGPConfiguration). Extra control
commands (`node-status`) are served through `handlers`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from bgpd.config import NeighborConfig
from bgpd.daemon import LOCAL_SOURCE, Daemon
from bgpd.neighbors import Peer
from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.events import Event
from bgpd.speaker.rib import Path as RibPath
from bgpd.speaker.transport import PeerDriver
from bgpd.speaker.types import Family, Prefix

log = logging.getLogger("routemesh.bgpd")

# Cease NOTIFICATION subcode for a peer removed from the configuration (RFC 4486).
PEER_DECONFIGURED = 3


class DynamicDaemon(Daemon):
    """Daemon plus run-time neighbor and origination changes; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._local: dict[Family, dict[Prefix, PathAttributes]] = {}

    def handle_request(self, request: dict[str, Any]) -> Any:
        handler = self.handlers.get(str(request.get("cmd")))
        if handler is not None:
            return handler(request)
        return super().handle_request(request)

    def _on_event(self, driver: PeerDriver, event: Event) -> None:
        peer = self.peers.get(driver.endpoint.address)
        # A removed (or replaced) neighbor's driver may still report its last events.
        if peer is None or peer.driver is not driver:
            return
        super()._on_event(driver, event)

    # -- neighbors ---------------------------------------------------------------------------

    def set_neighbors(self, neighbors: Iterable[NeighborConfig]) -> list[str]:
        """Make the neighbor set exactly ``neighbors``; returns the addresses that changed."""
        want = {nb.address: nb for nb in neighbors}
        changed: list[str] = []
        for address in sorted(self.peers):
            if address not in want or self.peers[address].config != want[address]:
                self._remove_peer(address)
                changed.append(address)
        for address, nb in sorted(want.items()):
            if address not in self.peers:
                self._add_peer(nb)
                if address not in changed:
                    changed.append(address)
        self.config = replace(self.config, neighbors=tuple(want[a] for a in sorted(want)))
        return changed

    def _add_peer(self, nb: NeighborConfig) -> None:
        loop = asyncio.get_running_loop()
        peer = Peer(nb, self._make_driver(nb, loop))
        self.peers[nb.address] = peer
        if nb.password:
            self.listener.set_md5(nb.address, nb.password)
        log.info("peer %s: added (AS %d, %s)", nb.address, nb.remote_asn, nb.description or "-")
        if self._worker is not None:  # running: sessions of the initial set start in run()
            peer.driver.start()

    def _remove_peer(self, address: str) -> None:
        peer = self.peers.pop(address)
        log.info("peer %s: removed", address)
        peer.driver.stop(PEER_DECONFIGURED, "peer de-configured")
        # Let the NOTIFICATION leave before the sockets close.
        asyncio.get_running_loop().call_later(0.5, peer.driver.close_all)
        for handle in (peer.stale_timer, peer.restart_timer):
            if handle is not None:
                handle.cancel()
        for fam in peer.rib_in.families():
            self._flush_peer(peer, fam)
        peer.rib_in.clear()
        peer.out = None
        self._awaiting_eor.discard(address)
        if peer.config.password:
            self.listener.set_md5(address, None)
        self._work.set()

    # -- local routes ------------------------------------------------------------------------

    def set_local_routes(self, fam: Family, routes: Mapping[Prefix, PathAttributes]) -> None:
        """Originate exactly ``routes`` in ``fam`` (prefix → attributes, next hop self)."""
        old = self._local.get(fam, {})
        for prefix in old.keys() - routes.keys():
            self.loc_rib.withdraw(fam, prefix, LOCAL_SOURCE.key, 0)
        for prefix, attrs in routes.items():
            if old.get(prefix) != attrs:
                path = RibPath(LOCAL_SOURCE, self.interner.intern(attrs), ())
                self.loc_rib.update(fam, prefix, path)
        self._local[fam] = dict(routes)
        self._work.set()
