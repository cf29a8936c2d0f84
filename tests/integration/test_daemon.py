"""bgpd as a process: shutdown Cease, strangers refused, config errors, CLI, GTSM, hold time 3 s
kept under a 100k-route exchange. Real processes, in lab namespaces where a network is needed.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bgpd.control import request
from tests.lab.netns import Lab, Netns
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.peers import BirdPeer
from tests.lab.peers import Neighbor as PeerNeighbor
from tests.lab.rawpeer import KEEPALIVE, MSG_KEEPALIVE, MSG_OPEN, RawPeer, build_open
from tests.lab.require import require_root
from tests.lab.waiting import wait_for
from tests.unit.test_config import BAD, GOOD

OUR_ASN, BIRD_ASN, RAW_ASN = 64512, 64513, 65001
OURS, BIRD_ADDR = "198.18.40.1", "198.18.40.2"
OURS_RAW, RAW_ADDR, STRANGER = "198.18.41.1", "198.18.41.2", "198.18.41.3"
OUR_ROUTE = "10.244.1.0/24"


class GtsmBird(BirdPeer):
    """BIRD with RFC 5082 GTSM on every session (sends TTL 255, drops anything lower)."""

    def _neighbor_block(self, nb: PeerNeighbor) -> list[str]:
        block = super()._neighbor_block(nb)
        return [*block[:-1], "  ttl security on;", block[-1]]


def bird_protocol(bird: BirdPeer, addr: str) -> str:
    return bird.birdc("show", "protocols", "all", BirdPeer.proto_name(addr))


def two_peers(
    lab: Lab, *, bird_cls: type[BirdPeer] = BirdPeer, ttl_security: int | None = None
) -> tuple[RoutemeshSpeaker, BirdPeer, Netns]:
    """Our bgpd with BIRD on one link and a passive raw-peer neighbor on another."""
    require_root()
    bird_cls.require()
    dut, bird_ns, raw_ns = lab.netns(), lab.netns(), lab.netns()
    lab.veth(dut, bird_ns, f"{OURS}/24", f"{BIRD_ADDR}/24")
    lab.veth(dut, raw_ns, f"{OURS_RAW}/24", [f"{RAW_ADDR}/24", f"{STRANGER}/24"])
    bird = bird_cls(
        bird_ns,
        asn=BIRD_ASN,
        router_id=BIRD_ADDR,
        local_addresses=[BIRD_ADDR],
        neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",))],
    )
    bird.announce(["10.244.2.0/26"])
    bird.start()
    ours = RoutemeshSpeaker(
        lab,
        dut,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[
            OurNeighbor(BIRD_ADDR, BIRD_ASN, hold_time=9, ttl_security=ttl_security),
            OurNeighbor(RAW_ADDR, RAW_ASN, passive=True, ttl_security=ttl_security),
        ],
        originate=[OUR_ROUTE],
        listen=["0.0.0.0"],
    ).start()
    return ours, bird, raw_ns


# -- shutdown and strangers -------------------------------------------------------------------


def test_sigterm_sends_administrative_shutdown_to_every_peer(lab: Lab) -> None:
    ours, bird, raw_ns = two_peers(lab)
    ours.wait_established(BIRD_ADDR)
    bird.wait_established(OURS)
    with RawPeer(OURS_RAW, netns=raw_ns.name, timeout=10).connect() as raw:
        raw.handshake(build_open(RAW_ASN, RAW_ADDR))
        ours.wait_established(RAW_ADDR)
        assert ours.proc is not None
        ours.proc.send_signal(signal.SIGTERM)
        # RFC 4486 Cease / Administrative Shutdown, no shutdown communication, then EOF.
        assert raw.expect_notification(timeout=10) == (6, 2, b"")
        raw.expect_closed(timeout=10)
    assert ours.proc.wait(10) == 0
    assert "shutting down: sending Cease to every peer" in ours.log_text()
    wait_for(
        lambda: "Received: Administrative shutdown" in bird_protocol(bird, OURS),
        timeout=10,
        what="BIRD to report our Cease",
        describe=lambda: bird_protocol(bird, OURS),
    )
    # The control socket is removed on the way out, so the CLI says nothing runs.
    assert not Path(ours.sock).exists()


def test_unconfigured_address_is_refused_and_logged(lab: Lab) -> None:
    ours, _bird, raw_ns = two_peers(lab)
    ours.wait_established(BIRD_ADDR)
    with RawPeer(OURS_RAW, netns=raw_ns.name, source=STRANGER).connect() as stranger:
        # RFC 4486: no OPEN, just Cease/Connection Rejected, then the close. Without the
        # NOTIFICATION a peer whose RST a firewall drops would wait out its OPEN hold time.
        code, subcode, _ = stranger.expect_notification(timeout=5)
        assert (code, subcode) == (6, 5)
        stranger.expect_closed(timeout=5)
    wait_for(
        lambda: f"refused BGP connection from unconfigured address {STRANGER}" in ours.log_text(),
        timeout=5,
        what="refusal in the log",
        describe=lambda: ours.log_text()[-2000:],
    )
    assert ours.alive()
    # Nothing else was disturbed: the configured raw neighbor still gets a session, BIRD's
    # session is the first one.
    with RawPeer(OURS_RAW, netns=raw_ns.name, source=RAW_ADDR).connect() as raw:
        raw.handshake(build_open(RAW_ASN, RAW_ADDR))
        ours.wait_established(RAW_ADDR)
    assert ours.peer_status(BIRD_ADDR)["established_count"] == 1
    assert STRANGER not in {r["peer"] for r in ours.status()}


# -- configuration errors ---------------------------------------------------------------------


def _free_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


@pytest.mark.parametrize(("name", "old", "new", "key", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_config_file_exits_with_one_line(
    tmp_path: Path, name: str, old: str, new: str, key: str, reason: str
) -> None:
    # The port is held by us: had bgpd got as far as binding, it would fail with a different,
    # listening error. The control socket must never appear.
    with _free_port() as held:
        port = held.getsockname()[1]
        sock = tmp_path / "bgpd.sock"
        good = (
            GOOD.replace('listen-address = "198.18.0.1"', 'listen-address = "127.0.0.1"')
            .replace("listen-port = 1790", f"listen-port = {port}")
            .replace('"/tmp/rm-test.sock"', f'"{sock}"')
        )
        assert old in good
        conf = tmp_path / "bgpd.toml"
        conf.write_text(good.replace(old, new, 1))
        argv = [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(conf)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    (line,) = lines
    assert str(conf) in line and reason in line, line
    if key:
        assert f": {key}: " in line, line
    assert not sock.exists()
    assert res.stdout == ""


def test_good_config_file_checks_ok(tmp_path: Path) -> None:
    conf = tmp_path / "bgpd.toml"
    conf.write_text(GOOD)
    argv = [sys.executable, "-m", "bgpd.cli.main", "bgpd", "-f", str(conf), "--check"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{conf}: OK (2 neighbors)"


# -- the CLI ----------------------------------------------------------------------------------


def test_status_without_daemon_fails_with_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "nobody.sock"
    for extra in ([], ["-o", "json"]):
        argv = [sys.executable, "-m", "bgpd.cli.main", "bgp", "status", "-s", str(sock), *extra]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert res.returncode != 0
        assert res.stdout == ""
        assert res.stderr.strip() == f"routemesh: bgpd is not running (no daemon on {sock})"


def test_status_table_columns(lab: Lab) -> None:
    ours, _bird, _ = two_peers(lab)
    ours.wait_established(BIRD_ADDR)
    wait_for(
        lambda: ours.peer_status(BIRD_ADDR)["prefixes_accepted"] == 1,
        timeout=15,
        what="BIRD route accepted",
    )
    out = ours.cli("status").stdout.splitlines()
    border = out[0]
    assert re.fullmatch(r"(\+-+)+\+", border), out
    headers = [h.strip() for h in out[1].strip("|").split("|")]
    assert headers == ["PEER ADDRESS", "AS", "TYPE", "STATE", "SINCE", "RCV/ACC/ADV", "INFO"]
    rows = {}
    for line in out[3:-1]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells
    assert out[-1] == border and out[2] == border
    bird_row = rows[BIRD_ADDR]
    assert bird_row[1:4] == [str(BIRD_ASN), "external", "Established"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", bird_row[4]), bird_row
    assert bird_row[5] == "1/1/1"
    raw_row = rows[RAW_ADDR]
    assert raw_row[1:4] == [str(RAW_ASN), "external", "Active"]
    assert raw_row[4] == "-"


# -- GTSM -------------------------------------------------------------------------------------


def test_gtsm_direct_neighbor_establishes_and_far_syn_is_dropped(lab: Lab) -> None:
    ours, bird, raw_ns = two_peers(lab, bird_cls=GtsmBird, ttl_security=1)
    ours.wait_established(BIRD_ADDR, timeout=30)
    bird.wait_established(OURS, timeout=30)
    bird.wait_routes({(OUR_ROUTE, OURS)}, timeout=30)
    # Every IPv4 neighbor uses GTSM, so the listening socket itself carries IP_MINTTL: a SYN
    # that arrives with TTL 64 is dropped by the kernel and no handshake ever completes.
    low = RawPeer(OURS_RAW, netns=raw_ns.name, ttl=64, timeout=3)
    with pytest.raises(OSError):
        low.connect()
    assert ours.peer_status(RAW_ADDR)["state"] != "Established"
    assert ours.peer_status(RAW_ADDR)["established_count"] == 0
    # The same neighbor sending with TTL 255 is let in: the filter is the TTL, not the address.
    with RawPeer(OURS_RAW, netns=raw_ns.name, ttl=255, timeout=10).connect() as good:
        good.handshake(build_open(RAW_ASN, RAW_ADDR))
        ours.wait_established(RAW_ADDR)
    assert ours.peer_status(BIRD_ADDR)["established_count"] == 1


def test_gtsm_on_one_neighbor_only_is_enforced_per_connection(lab: Lab) -> None:
    """With a non-GTSM neighbor on the same listener, the limit is set on the accepted socket."""
    require_root()
    BirdPeer.require()
    dut, bird_ns, raw_ns = lab.netns(), lab.netns(), lab.netns()
    lab.veth(dut, bird_ns, f"{OURS}/24", f"{BIRD_ADDR}/24")
    lab.veth(dut, raw_ns, f"{OURS_RAW}/24", f"{RAW_ADDR}/24")
    bird = BirdPeer(
        bird_ns,
        asn=BIRD_ASN,
        router_id=BIRD_ADDR,
        local_addresses=[BIRD_ADDR],
        neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=9, families=("ipv4",))],
    )
    bird.start()
    ours = RoutemeshSpeaker(
        lab,
        dut,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[
            OurNeighbor(BIRD_ADDR, BIRD_ASN, hold_time=9),
            OurNeighbor(RAW_ADDR, RAW_ASN, passive=True, ttl_security=1),
        ],
        listen=["0.0.0.0"],
    ).start()
    ours.wait_established(BIRD_ADDR, timeout=30)
    bird.wait_established(OURS, timeout=30)
    # The handshake completes (the listener can't filter for one peer), but once accepted the
    # socket drops our TTL-64 segments: the KEEPALIVE that would finish OPENCONFIRM never
    # arrives. (The first OPEN may slip in if it was queued before the option was set.)
    with RawPeer(OURS_RAW, netns=raw_ns.name, ttl=64).connect() as low:
        low.send(build_open(RAW_ASN, RAW_ADDR))
        got = {m.type for m in low.drain(quiet=2.0)}
        assert MSG_OPEN in got, got
        if MSG_KEEPALIVE in got:
            low.send(KEEPALIVE)
        time.sleep(2)
        assert ours.peer_status(RAW_ADDR)["state"] in ("OpenSent", "OpenConfirm")
        assert ours.peer_status(RAW_ADDR)["established_count"] == 0
    assert ours.peer_status(BIRD_ADDR)["state"] == "Established"


# -- hold time 3 s under load -----------------------------------------------------------------

ROUTES = 100_000


def route_set(count: int) -> list[str]:
    """``count`` distinct IPv4 prefixes inside 10.244.0.0/16: every /32, then /31s."""
    base = int(ipaddress.IPv4Address("10.244.0.0"))
    out = [f"{ipaddress.IPv4Address(base + i)}/32" for i in range(min(count, 65536))]
    out += [f"{ipaddress.IPv4Address(base + 2 * i)}/31" for i in range(count - len(out))]
    return out


def bird_imported(bird: BirdPeer, addr: str) -> tuple[int, str]:
    """(routes imported from our session, the 'Since' stamp of its state) from BIRD's view."""
    out = bird_protocol(bird, addr)
    m = re.search(r"Routes:\s+(\d+) imported", out)
    first = [ln for ln in out.splitlines() if ln.startswith(BirdPeer.proto_name(addr))]
    assert first and "Established" in first[0], out
    return (int(m.group(1)) if m else 0), first[0].split()[4]


def test_hold_time_3s_stable_while_100k_routes_cross_both_ways(lab: Lab) -> None:
    """Hold time 3 s both sides; 100k routes each way, then BIRD withdraws and re-announces
    all 100k over and over for the rest of a 60 s window; the session must never drop."""
    require_root()
    BirdPeer.require()
    dut, bird_ns = lab.netns(), lab.netns()
    lab.veth(dut, bird_ns, f"{OURS}/24", f"{BIRD_ADDR}/24")
    prefixes = route_set(ROUTES)
    bird = BirdPeer(
        bird_ns,
        asn=BIRD_ASN,
        router_id=BIRD_ADDR,
        local_addresses=[BIRD_ADDR],
        neighbors=[PeerNeighbor(OURS, OUR_ASN, hold_time=3, families=("ipv4",))],
    )
    bird.announce(prefixes)
    bird.start()
    t_start = time.monotonic()
    ours = RoutemeshSpeaker(
        lab,
        dut,
        asn=OUR_ASN,
        router_id=OURS,
        neighbors=[OurNeighbor(BIRD_ADDR, BIRD_ASN, hold_time=3)],
        originate=prefixes,
        listen=["0.0.0.0"],
    ).start()
    ours.wait_established(BIRD_ADDR, timeout=60)
    t0 = time.monotonic()
    timeline: list[str] = [f"bgpd started and Established in {t0 - t_start:.1f}s"]
    since: list[str] = []

    def check() -> tuple[int, int]:
        """Assert both sides still hold the first session; return (accepted, BIRD imported)."""
        # Straight to the control socket: status is cheap for the daemon, a CLI start is not.
        (r,) = request(ours.sock, "status")
        assert r["state"] == "Established" and r["established_count"] == 1, (timeline, r)
        assert r["last_error"] == "" and r["uptime_s"] > 0, (timeline, r)
        imported, bird_since = bird_imported(bird, OURS)
        since.append(bird_since)
        assert since[-1] == since[0], f"BIRD's session restarted: {since[0]} -> {since[-1]}"
        return r["prefixes_accepted"], imported

    phase, cycles = "initial", 0
    while (now := time.monotonic() - t0) < 60:
        acc, imported = check()
        if phase == "initial" and acc == ROUTES and imported == ROUTES:
            timeline.append(f"{now:5.1f}s 100k each way")
            phase = "announced"
        if phase == "announced" and acc == ROUTES:
            bird.withdraw(prefixes)
            phase = "withdrawn"
        elif phase == "withdrawn" and acc == 0:
            bird.announce(prefixes)
            phase = "announced"
            cycles += 1
            timeline.append(f"{now:5.1f}s cycle {cycles}: 100k withdrawn, re-announcing")
        time.sleep(0.5)
    timeline.append(f"{time.monotonic() - t0:5.1f}s window over")
    if phase == "withdrawn":
        bird.announce(prefixes)
    wait_for(lambda: check()[0] == ROUTES, timeout=30, what="100k routes back at the end")
    log = ours.log_text()
    assert "hold timer expired" not in log.lower(), log[-3000:]
    assert "session down" not in log, log[-3000:]
    assert cycles >= 3, f"too few withdraw/announce cycles of 100k in 60 s: {timeline}"
    (r,) = request(ours.sock, "status")
    assert r["prefixes_accepted"] == ROUTES and r["prefixes_advertised"] == ROUTES, r
    assert bird_imported(bird, OURS)[0] == ROUTES
    assert "Last error" not in bird_protocol(bird, OURS)
    print("\n".join(timeline))
