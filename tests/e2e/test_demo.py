"""`routemesh demo` end to end, as the README runs it: session tables, routes and the exact
ping matrix of the tenant-isolation policy, exit 0; then nothing left behind on the host
(namespaces, links, routes, rules, iptables, processes, state), after a plain run, after
`--keep` + `--down` from a fresh process, and on an etcd the demo relays into its namespaces.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgpd.cli.demo import format_matrix
from bgpd.datastore.url import open_datastore
from bgpd.demo.cluster import PODS as POD_SPECS
from bgpd.demo.cluster import Outcome
from tests.lab.etcd import EtcdServer
from tests.lab.require import require_binary, require_link_kind, require_root
from tests.lab.waiting import wait_for

pytestmark = pytest.mark.root

ROUTEMESH = str(Path(sys.executable).parent / "routemesh")
STATE = Path("/run/routemesh-demo")
PODS = ("ami-a/web", "ami-a/api", "ami-b/web", "bmi/web", "bmi/db")
HOST_OF = {"ami-a/web": "host1", "ami-a/api": "host4", "ami-b/web": "host2",
           "bmi/web": "host3", "bmi/db": "host4"}  # fmt: skip
ADDRESS = {"host1": "198.18.0.2", "host2": "198.18.0.3", "host3": "198.18.0.4",
           "host4": "198.18.1.2"}  # fmt: skip
# Written out by hand from tenants.yaml: ami-a and ami-b are org ami, bmi is org bmi, and a
# pod admits only its own org.
EXPECTED = {
    "ami-a/web": ["-", "allowed", "allowed", "denied", "denied"],
    "ami-a/api": ["allowed", "-", "allowed", "denied", "denied"],
    "ami-b/web": ["allowed", "allowed", "-", "denied", "denied"],
    "bmi/web": ["denied", "denied", "denied", "-", "allowed"],
    "bmi/db": ["denied", "denied", "denied", "allowed", "-"],
}
# Names other tests' labs create in the root namespace while we run (the machine is shared).
OTHERS = re.compile(r"\brm-(?:probe-)?\d+-|\brm\d+v\d+\b")


@pytest.fixture
def demo_turn() -> Iterator[None]:
    """The demo's names are fixed, so two test runs on one machine take turns."""
    with open("/tmp/routemesh-demo-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _requirements() -> None:
    require_root()
    require_link_kind("vxlan")
    for binary in ("iptables-nft-restore", "ipset", "ping"):
        require_binary(binary)
    # A demo left by someone's `--keep` (or a killed run) would be part of "before".
    subprocess.run([ROUTEMESH, "demo", "--down"], capture_output=True, timeout=60)


def _lines(argv: list[str]) -> set[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    return {ln.strip() for ln in out.splitlines() if ln.strip() and not OTHERS.search(ln)}


def _iptables(argv: list[str]) -> set[str]:
    # Rules and chains, without the timestamps and packet counters that change on their own.
    return {re.sub(r"\[\d+:\d+\]", "", ln) for ln in _lines(argv) if not ln.startswith("#")}


def _processes() -> set[str]:
    """Command lines of anything the demo starts (nodes, the etcd relay, pings)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "rmdemo-" in cmd or "routemesh-demo" in cmd or "bgpd.demo.proxy" in cmd:
            found.add(cmd)
    return found


def snapshot() -> dict[str, set[str]]:
    """What the demo could leave on the host: namespaces, links, routes, rules, iptables, ipsets,
    processes."""
    links = _lines(["ip", "-o", "link", "show"])
    return {
        "netns": {ln.split()[0] for ln in _lines(["ip", "netns", "list"])},
        # Names only: a link's counters and flags change as the host works.
        "links": {ln.split(":")[1].strip() for ln in links},
        "routes": _lines(["ip", "route", "show", "table", "all"]),
        "routes6": _lines(["ip", "-6", "route", "show", "table", "all"]),
        "rules": _lines(["ip", "rule"]),
        "iptables": _iptables(["iptables-save"]),
        "ipsets": _lines(["ipset", "list", "-n"]),
        "processes": _processes(),
    }


def assert_nothing_left(before: dict[str, set[str]]) -> None:
    after = snapshot()
    assert not STATE.exists(), sorted(p.name for p in STATE.iterdir())
    assert not {n for n in after["netns"] if n.startswith("rmdemo-")}, after["netns"]
    assert not after["processes"], after["processes"]
    for key, items in after.items():
        assert items - before[key] == set(), f"{key} gained {sorted(items - before[key])}"
        if key != "processes":  # a ping of another test may end meanwhile; ours never ran here
            assert before[key] - items == set(), f"{key} lost {sorted(before[key] - items)}"


def demo(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ROUTEMESH, "demo", *args], capture_output=True, text=True, timeout=timeout
    )


def section(out: str, header: str) -> list[str]:
    """The lines after the line starting with ``header``, up to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header))
    body = []
    for ln in lines[start + 1 :]:
        if not ln.strip():
            break
        body.append(ln.strip())
    return body


def check_output(out: str) -> None:
    # The session table of each node: the three others, Established.
    for host, address in ADDRESS.items():
        status = out.split(f"node status --node {host} ", 1)[1].split("\n$ ", 1)[0]
        rows = [ln for ln in status.splitlines() if ln.startswith("| 198.18.")]
        peers = {ln.split("|")[1].strip(): ln.split("|")[4].strip() for ln in rows}
        assert peers == {a: "Established" for h, a in ADDRESS.items() if h != host}, status
        assert f"Address: {address}/24" in status
        assert "Policy: synced" in status and "in sync" in status
    # The routes: own block blackholed, same-subnet blocks via the host, host4 over VXLAN.
    routes = {h: section(out, f"$ ip -n rmdemo-{h} route") for h in ADDRESS}
    blocks = {}
    for host, lines in routes.items():
        (own,) = [ln.split()[1] for ln in lines if ln.startswith("blackhole ")]
        blocks[host] = own
    for host, lines in routes.items():
        for other, block in blocks.items():
            if other == host:
                continue
            (line,) = [ln for ln in lines if ln.startswith(f"{block} ")]
            if "host4" in (host, other):
                assert "dev vxlan.calico proto 80 onlink" in line, line
            else:
                assert f"via {ADDRESS[other]} dev eth0 proto 80" in line, line
        pods = [ln for ln in lines if " proto 81" in ln]
        assert len(pods) == sum(1 for h in HOST_OF.values() if h == host), lines
    # The matrix, cell by cell.
    matrix = section(out, "Ping matrix")
    assert matrix[0].split() == list(PODS)
    for row in matrix[1:6]:
        src, host, *cells = row.split()
        assert HOST_OF[src] == host
        assert cells == EXPECTED[src], row
    assert "The ping matrix matches the tenant-isolation policy" in out


def test_demo_shows_sessions_routes_and_the_policy_matrix_then_leaves_nothing(
    demo_turn: None,
) -> None:
    _requirements()
    before = snapshot()
    res = demo()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    check_output(res.stdout)
    assert "==> " in res.stdout and "12/12 BGP sessions Established" in res.stdout
    assert_nothing_left(before)


def test_demo_keep_then_down_from_a_fresh_process(demo_turn: None) -> None:
    _requirements()
    before = snapshot()
    try:
        res = demo("--keep")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
        check_output(res.stdout)
        assert "demo --down" in res.stdout
        # The exploring commands it prints work while the demo's own process is gone.
        explore = res.stdout.split("still running", 1)[1].splitlines()
        hint = next(ln.strip() for ln in explore if "node status --node host1" in ln)
        argv = hint.split()
        argv[0] = ROUTEMESH
        status = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("Established") == 3
        ping = next(ln for ln in explore if "ip netns exec" in ln and "ping" in ln)
        cmd = ping.split("#")[0].split()
        assert subprocess.run(cmd, capture_output=True, timeout=30).returncode == 1  # denied
        # Denied by the policy, not by a missing route: once no policy selects bmi/db (only
        # its namespace profile, which allows all), the same ping passes.
        store = f"sqlite://{STATE}/store.db"
        for policy in ("tenants-deny-the-rest", "org-bmi-admits-bmi"):
            subprocess.run(
                [ROUTEMESH, "delete", "globalnetworkpolicy", policy, "--datastore", store],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        wait_for(
            lambda: subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0,
            timeout=30,
            what="ami-a/web to reach bmi/db once the deny policy is gone",
        )
    finally:
        down = demo("--down", timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(before)
    # A second --down, with nothing to remove, is fine too.
    assert demo("--down", timeout=60).returncode == 0


def test_down_removes_a_demo_killed_half_way(demo_turn: None) -> None:
    _requirements()
    before = snapshot()
    proc = subprocess.Popen(
        [ROUTEMESH, "demo"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        # Killed once the nodes run: no finally of its own cleans up after SIGKILL.
        wait_for(
            lambda: (
                len(json.loads((STATE / "state.json").read_text())["processes"]) >= 4
                if (STATE / "state.json").exists()
                else False
            ),
            timeout=60,
            what="the demo to start its nodes",
        )
        # A second demo meanwhile would tear this one down (same names): it is refused.
        second = demo()
        assert second.returncode == 1 and "another routemesh demo" in second.stderr
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert any(n.startswith("rmdemo-host") for n in snapshot()["netns"])
    assert snapshot()["processes"]
    down = demo("--down", timeout=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_nothing_left(before)


async def _keys(url: str) -> list[str]:
    store = open_datastore(url)
    try:
        items, _rev = await store.list("/routemesh/")
        return [kv.key for kv in items]
    finally:
        await store.close()


def test_demo_on_etcd_relays_it_into_the_namespaces_and_removes_its_keys(demo_turn: None) -> None:
    _requirements()
    require_binary("etcd")
    with EtcdServer() as etcd:  # on 127.0.0.1 of the host: unreachable from a namespace as is
        before = snapshot()
        res = demo("--datastore", etcd.url)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr
        check_output(res.stdout)
        assert f"relaying {etcd.url}" in res.stdout
        assert asyncio.run(_keys(etcd.url)) == []
        assert_nothing_left(before)
        # An etcd that holds routemesh data already is refused, and nothing is built.
        subprocess.run(
            [ROUTEMESH, "apply", "-f", "configs/demo/cluster.yaml", "--datastore", etcd.url],
            check=True,
            capture_output=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        refused = demo("--datastore", etcd.url)
        assert refused.returncode == 1 and "already holds" in refused.stderr
        assert_nothing_left(before)


def _outcome(flip: tuple[str, str] | None = None) -> Outcome:
    outcome = Outcome(ips={p.label: f"10.244.0.{i + 1}" for i, p in enumerate(POD_SPECS)})
    for src in PODS:
        for j, dst in enumerate(PODS):
            if src != dst:
                outcome.matrix[(src, dst)] = EXPECTED[src][j] == "allowed"
    if flip is not None:
        outcome.matrix[flip] = not outcome.matrix[flip]
    return outcome


def test_a_matrix_that_breaks_the_policy_is_reported_cell_by_cell() -> None:
    assert _outcome().mismatches() == []
    leaky = _outcome(flip=("ami-a/web", "bmi/db"))
    assert leaky.mismatches() == ["ami-a/web -> bmi/db: expected denied, got allowed"]
    rows = format_matrix(leaky).splitlines()
    (row,) = [r for r in rows if r.startswith("ami-a/web ")]
    assert row.split()[2:] == ["-", "allowed", "allowed", "denied", "allowed!"]
    blocked = _outcome(flip=("bmi/db", "bmi/web"))
    assert blocked.mismatches() == ["bmi/db -> bmi/web: expected allowed, got denied"]
