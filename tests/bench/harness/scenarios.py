"""The scenarios: one run each builds source ↔ DUT namespaces over a veth, starts the DUT,
feeds it (blaster, BIRD static routes, or K reflector clients), and measures.

A run returns plain numbers (seconds, MiB, CPU seconds) or a reason in ``na``/``failures``;
report.py turns several runs into medians and ratios.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.bench.harness import procstat
from tests.bench.harness.blaster import BlasterError, BlasterProcess
from tests.bench.harness.duts import DUTS, Dut, DutNeighbor, DutUnavailable
from tests.bench.harness.feeds import prefix_text
from tests.lab.netns import Lab, LabError, Netns, run
from tests.lab.peers import BirdPeer

SRC_ADDR, DUT_ADDR = "198.18.0.1", "198.18.0.2"
SRC_ASN, DUT_ASN = 65001, 65000
CLIENT_BASE = (198 << 24) | (18 << 16) | (8 << 8)  # 198.18.8.0/21: reflector clients
POLL_INTERVAL = 0.05
# A FIB writer that has not added a single route this long after the RIB filled is absent.
FIB_GRACE_S = 10.0
# Reflector clients that receive nothing new for this long mean the DUT does not reflect.
RR_STALL_S = 30.0


@dataclass
class RunResult:
    """One run of one scenario against one DUT."""

    metrics: dict[str, float] = field(default_factory=dict)
    na: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value
    failures: list[str] = field(default_factory=list)  # session resets, timeouts: a failed run
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Topology:
    lab: Lab
    src: Netns
    dut: Netns
    clients: list[str]


def build_topology(lab: Lab, clients: int = 0) -> Topology:
    """Source namespace ↔ DUT namespace over one veth; reflector clients are /32 aliases on
    the source's loopback, routed from the DUT through the veth."""
    src, dut = lab.netns(), lab.netns()
    lab.veth(src, dut, f"{SRC_ADDR}/30", f"{DUT_ADDR}/30")
    addrs = [_client_addr(i) for i in range(clients)]
    if addrs:
        batch = "".join(f"addr add {a}/32 dev lo\n" for a in addrs)
        run(["ip", "-n", src.name, "-batch", "-"], input=batch, timeout=60)
        dut.ip("route", "add", "198.18.8.0/21", "via", SRC_ADDR)
    return Topology(lab, src, dut, addrs)


def _client_addr(i: int) -> str:
    n = CLIENT_BASE + 1 + i
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _start_dut(name: str, topo: Topology, neighbors: list[DutNeighbor], **kw: Any) -> Dut:
    dut = DUTS[name](topo.dut, asn=DUT_ASN, address=DUT_ADDR, neighbors=neighbors, **kw)
    dut.start()
    return dut


class _Poller:
    """Polls the DUT's RIB count and the kernel FIB until both reach their targets."""

    def __init__(self, dut: Dut, count: Callable[[], int], fib_base: int | None) -> None:
        self.dut, self.count, self.fib_base = dut, count, fib_base
        self.trace = CpuTrace(dut.pids())

    def fib_count(self) -> int:
        assert self.fib_base is not None
        return procstat.fib_prefixes(self.dut.fib_pid()) - self.fib_base

    def until(
        self,
        done_rib: Callable[[int], bool],
        done_fib: Callable[[int], bool],
        timeout: float,
        failed: Callable[[], list[str]],
    ) -> tuple[float | None, float | None, str | None, str | None]:
        """(t_rib, t_fib, why_no_rib, why_no_fib): monotonic times each target was seen."""
        deadline = time.monotonic() + timeout
        t_rib = t_fib = None
        why_rib = why_fib = None
        want_fib = self.fib_base is not None
        fib_start = self.fib_count() if want_fib else 0
        while True:
            self.trace.sample()
            if failed():
                return t_rib, t_fib, "session reset", "session reset"
            if t_rib is None and done_rib(self.count()):
                t_rib = time.monotonic()
            if want_fib and t_fib is None:
                n = self.fib_count()
                if done_fib(n):
                    t_fib = time.monotonic()
                elif (
                    t_rib is not None and n == fib_start and time.monotonic() - t_rib > FIB_GRACE_S
                ):
                    why_fib = f"no kernel route change within {FIB_GRACE_S:.0f}s of the RIB"
                    want_fib = False
            if t_rib is not None and (t_fib is not None or not want_fib):
                break
            if time.monotonic() > deadline:
                why_rib = None if t_rib is not None else f"timeout after {timeout:.0f}s"
                if want_fib and t_fib is None:
                    why_fib = f"timeout after {timeout:.0f}s"
                break
            time.sleep(POLL_INTERVAL)
        if self.fib_base is None:
            why_fib = "does not write the kernel FIB"
        return t_rib, t_fib, why_rib, why_fib


class CpuTrace:
    """CPU seconds of the DUT's processes sampled over time, to find when it went idle: the
    start of the first 0.5 s window with under 0.03 CPU seconds. This catches work a daemon
    defers past the counter it reports (best-path slices, export, kernel writes), the same
    way for every DUT."""

    WINDOW, IDLE_CPU = 0.5, 0.03

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, float]] = []
        self.sample()

    def sample(self) -> None:
        self.samples.append((time.monotonic(), procstat.total_cpu_seconds(self.pids)))

    def idle_since(self, after: float) -> float | None:
        """Start of the first idle window that starts at or after ``after``, if seen yet."""
        samples = self.samples
        j = 0
        for i, (t_i, cpu_i) in enumerate(samples):
            if t_i < after:
                continue
            j = max(j, i + 1)
            while j < len(samples) and samples[j][0] - t_i < self.WINDOW:
                j += 1
            if j == len(samples):
                return None
            if samples[j][1] - cpu_i < self.IDLE_CPU:
                return t_i
        return None

    def wait_idle(self, after: float, timeout: float = 60.0) -> float | None:
        """idle_since(after), sampling on every 0.1 s until it is found or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.idle_since(after)
            if found is not None or time.monotonic() > deadline:
                return found
            time.sleep(0.1)
            self.sample()


def _settled(poller: _Poller, t_rib: float, t_fib: float | None) -> float | None:
    """Done and idle: the later of the RIB target, the FIB target and the idle point (a DUT
    whose last work costs under the idle threshold would otherwise look done early)."""
    idle = poller.trace.wait_idle(t_rib)
    return None if idle is None else max(idle, t_rib, t_fib or 0.0)


def _record(res: RunResult, key: str, t: float | None, start: float, why: str | None) -> None:
    if t is not None:
        res.metrics[key] = round(t - start, 3)
    elif why:
        res.na[key] = why
        if why.startswith("session reset") or (why.startswith("timeout") and "fib" not in key):
            res.failures.append(f"{key}: {why}")


def ingest_run(dut_name: str, feed: str, prefixes: int, timeout: float) -> RunResult:
    """The blaster announces ``prefixes`` to the DUT, then withdraws them all."""
    res = RunResult()
    with Lab() as lab:
        topo = build_topology(lab)
        try:
            dut = _start_dut(dut_name, topo, [DutNeighbor(SRC_ADDR, SRC_ASN)])
        except DutUnavailable as exc:
            res.na["all"] = str(exc)
            return res
        blaster = BlasterProcess(
            topo.src,
            ["ingest", "--peer", DUT_ADDR, "--local", SRC_ADDR, "--asn", str(SRC_ASN),
             "--peer-asn", str(DUT_ASN), "--prefixes", str(prefixes), "--feed", feed],
            lab.tmp / "blaster.log",
        )  # fmt: skip
        try:
            res.info["feed"] = blaster.wait("ready", timeout=600)
            _measure_ingest(res, dut, blaster, prefixes, timeout)
        except (BlasterError, LabError) as exc:
            res.failures.append(str(exc).splitlines()[0])
        finally:
            summary = blaster.quit()
            res.failures += [f["reason"] for f in blaster.failures]
            if summary is not None and summary.get("failures"):
                res.failures += [f for f in summary["failures"] if f not in res.failures]
            res.info["dut_log_tail"] = dut.log_tail()[-1500:] if res.failures else ""
    return res


def _measure_ingest(
    res: RunResult, dut: Dut, blaster: BlasterProcess, prefixes: int, timeout: float
) -> None:
    pids = dut.pids()
    fib_base = procstat.fib_prefixes(dut.fib_pid()) if dut.fib else None
    poller = _Poller(dut, lambda: dut.rib_count(SRC_ADDR), fib_base)
    failed = lambda: [f["reason"] for f in blaster.failures]  # noqa: E731
    cpu0 = procstat.total_cpu_seconds(pids)
    blaster.command("connect")
    t_est = blaster.wait("established", timeout=60)["t"]
    t_rib, t_fib, why_rib, why_fib = poller.until(
        lambda n: n >= prefixes, lambda n: n >= prefixes, timeout, failed
    )
    _record(res, "rib_s", t_rib, t_est, why_rib)
    _record(res, "fib_s", t_fib, t_est, why_fib)
    if t_rib is None:
        return
    _record(res, "settle_s", _settled(poller, t_rib, t_fib), t_est, "never idle within 60s")
    res.metrics["cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu0, 2)
    res.metrics["peak_rss_mib"] = round(procstat.total_peak_rss_mib(pids), 1)
    cpu1 = procstat.total_cpu_seconds(pids)
    blaster.command("withdraw")
    t_wd = blaster.wait("withdraw_start", timeout=30)["t"]
    w_rib, w_fib, why_wrib, why_wfib = poller.until(
        lambda n: n <= 0, lambda n: n <= 0, timeout, failed
    )
    if t_fib is None:
        w_fib, why_wfib = None, res.na.get("fib_s")
    _record(res, "withdraw_rib_s", w_rib, t_wd, why_wrib)
    _record(res, "withdraw_fib_s", w_fib, t_wd, why_wfib)
    if w_rib is not None:
        idle = _settled(poller, w_rib, w_fib)
        _record(res, "withdraw_settle_s", idle, t_wd, "never idle within 60s")
    res.metrics["withdraw_cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu1, 2)


# --- BIRD as the source -----------------------------------------------------------------------


class _BirdSource(BirdPeer):
    """BIRD announcing ``prefixes`` static routes to the DUT; per-prefix MED when unique."""

    def __init__(self, ns: Netns, prefixes: int, feed: str) -> None:
        super().__init__(ns, asn=SRC_ASN, router_id=SRC_ADDR, local_addresses=[SRC_ADDR])
        self.count, self.feed = prefixes, feed

    def config_text(self) -> str:
        lines = [
            f"router id {SRC_ADDR};",
            "log stderr { warning, error, fatal };",
            "timeformat protocol iso long ms;",
            "protocol device { scan time 60; }",
            "protocol static st4 {",
            "  ipv4;",
        ]
        if self.feed == "unique":
            lines += [f"  route {prefix_text(i)} blackhole {{ bgp_med = {i}; }};"
                      for i in range(self.count)]  # fmt: skip
        else:
            # About 500 prefixes per attribute set, as from the blaster.
            lines += [f"  route {prefix_text(i)} blackhole {{ bgp_med = {i // 500}; }};"
                      for i in range(self.count)]  # fmt: skip
        lines += [
            "}",
            "protocol bgp dut {",
            f"  local {SRC_ADDR} as {SRC_ASN};",
            f"  neighbor {DUT_ADDR} as {DUT_ASN};",
            "  hold time 9; keepalive time 3;",
            "  connect delay time 1; connect retry time 1;",
            '  ipv4 { import none; export where proto = "st4"; };',
            "}",
        ]
        return "\n".join(lines) + "\n"

    def established_at(self) -> float | None:
        """Wall-clock time the session came up, from BIRD's own ms timestamp."""
        out = self.birdc("show", "protocols", "dut")
        m = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)?\s+Established", out)
        if m is None:
            return None
        whole = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
        return whole + float("0" + (m.group(2) or ""))


def bird_source_run(dut_name: str, feed: str, prefixes: int, timeout: float) -> RunResult:
    """BIRD static routes as the source. BIRD 2.0.12 may hold back its last partial UPDATE
    until its CLI is poked, so the poll loop pokes it (cheap ``show status``) every round."""
    res = RunResult()
    with Lab() as lab:
        topo = build_topology(lab)
        try:
            dut = _start_dut(dut_name, topo, [DutNeighbor(SRC_ADDR, SRC_ASN)])
        except DutUnavailable as exc:
            res.na["all"] = str(exc)
            return res
        pids = dut.pids()
        fib_base = procstat.fib_prefixes(dut.fib_pid()) if dut.fib else None
        cpu0 = procstat.total_cpu_seconds(pids)
        source = _BirdSource(topo.src, prefixes, feed)
        source.start()
        try:
            wall_est = _wait_value(source.established_at, 60, "BIRD source Established")
            # Convert BIRD's wall-clock stamp to our monotonic clock.
            t_est = time.monotonic() - (time.time() - wall_est)
            poller = _Poller(dut, lambda: dut.rib_count(SRC_ADDR), fib_base)

            def failed() -> list[str]:
                source.birdc("show", "status")  # the poke
                up = "Established" in source.birdc("show", "protocols", "dut")
                return [] if up else ["BIRD source session down"]

            t_rib, t_fib, why_rib, why_fib = poller.until(
                lambda n: n >= prefixes, lambda n: n >= prefixes, timeout, failed
            )
            _record(res, "rib_s", t_rib, t_est, why_rib)
            _record(res, "fib_s", t_fib, t_est, why_fib)
            if t_rib is not None:
                idle = _settled(poller, t_rib, t_fib)
                _record(res, "settle_s", idle, t_est, "never idle within 60s")
            res.metrics["cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu0, 2)
            res.metrics["peak_rss_mib"] = round(procstat.total_peak_rss_mib(pids), 1)
        except (LabError, AssertionError) as exc:
            res.failures.append(str(exc).splitlines()[0])
        if res.failures:
            res.info["dut_log_tail"] = dut.log_tail()[-1500:]
    return res


def _wait_value(fn: Callable[[], float | None], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v is not None:
            return v
        time.sleep(0.05)
    raise LabError(f"timed out waiting for {what}")


# --- route reflector --------------------------------------------------------------------------


def rr_run(dut_name: str, clients: int, prefixes: int, timeout: float) -> RunResult:
    """K iBGP clients of the DUT as reflector; client 0 announces, the others must all get
    every prefix; then client 0 withdraws them all."""
    res = RunResult()
    if not DUTS[dut_name].can_reflect:
        res.na["all"] = "not a reflector in this harness"
        return res
    with Lab() as lab:
        topo = build_topology(lab, clients)
        neighbors = [DutNeighbor(a, DUT_ASN, rr_client=True) for a in topo.clients]
        try:
            dut = _start_dut(dut_name, topo, neighbors, cluster_id=DUT_ADDR, fib=False, export=True)
        except DutUnavailable as exc:
            res.na["all"] = str(exc)
            return res
        blaster = BlasterProcess(
            topo.src,
            ["rr", "--peer", DUT_ADDR, "--locals", ",".join(topo.clients),
             "--asn", str(DUT_ASN), "--prefixes", str(prefixes), "--next-hop", SRC_ADDR],
            lab.tmp / "clients.log",
        )  # fmt: skip
        try:
            blaster.wait("ready", timeout=600)
            pids = dut.pids()
            blaster.command("connect")
            blaster.wait("established", timeout=60 + clients)
            cpu0 = procstat.total_cpu_seconds(pids)
            blaster.command("announce")
            t0 = blaster.wait("announce_start", timeout=30)["t"]
            t_all = _wait_clients(dut, blaster, "all_received", timeout)
            res.metrics["all_clients_s"] = round(t_all - t0, 3)
            res.metrics["cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu0, 2)
            res.metrics["peak_rss_mib"] = round(procstat.total_peak_rss_mib(pids), 1)
            cpu1 = procstat.total_cpu_seconds(pids)
            blaster.command("withdraw")
            t1 = blaster.wait("withdraw_start", timeout=30)["t"]
            t_none = _wait_clients(dut, blaster, "all_withdrawn", timeout)
            res.metrics["withdraw_all_clients_s"] = round(t_none - t1, 3)
            res.metrics["withdraw_cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu1, 2)
        except (BlasterError, LabError) as exc:
            res.failures.append(str(exc).splitlines()[0])
        finally:
            blaster.quit()
            res.failures += [
                f["reason"] for f in blaster.failures if f["reason"] not in res.failures
            ]
            if res.failures:
                res.info["dut_log_tail"] = dut.log_tail()[-1500:]
    return res


def _wait_clients(dut: Dut, blaster: BlasterProcess, event: str, timeout: float) -> float:
    """Wait for ``event``; give up early when the clients' counts stop moving."""
    deadline = time.monotonic() + timeout
    last, last_change = None, time.monotonic()
    next_status = time.monotonic() + 1.0
    while True:
        try:
            return blaster.wait(event, timeout=0.1)["t"]
        except BlasterError as exc:
            if "within" not in str(exc):
                raise
        dut.poke()
        if time.monotonic() < next_status:
            continue
        next_status = time.monotonic() + 1.0
        blaster.command("status")
        counts = blaster.wait("status", timeout=10)["counts"]
        if counts != last:
            last, last_change = counts, time.monotonic()
        if time.monotonic() - last_change > RR_STALL_S:
            got = sorted(counts.values())[1:2]
            raise BlasterError(
                f"{event}: clients' counts stalled for {RR_STALL_S:.0f}s (e.g. {got}); "
                "the DUT is not reflecting"
            )
        if time.monotonic() > deadline:
            raise BlasterError(f"{event}: timeout after {timeout:.0f}s")


# --- a full iBGP mesh, simulated in one process --------------------------------------------------


def mesh_run(dut_name: str, peers: int, per_peer: int, timeout: float) -> RunResult:
    """The DUT as one node of a full iBGP mesh: ``peers`` other nodes (one process, one
    session each) announce ``per_peer`` prefixes each at once, then withdraw them."""
    res = RunResult()
    total = peers * per_peer
    with Lab() as lab:
        topo = build_topology(lab, peers)
        neighbors = [DutNeighbor(a, DUT_ASN) for a in topo.clients]
        try:
            dut = _start_dut(dut_name, topo, neighbors, fib=False)
        except DutUnavailable as exc:
            res.na["all"] = str(exc)
            return res
        blaster = BlasterProcess(
            topo.src,
            ["mesh", "--peer", DUT_ADDR, "--locals", ",".join(topo.clients),
             "--asn", str(DUT_ASN), "--prefixes", str(per_peer), "--next-hop", SRC_ADDR],
            lab.tmp / "mesh.log",
        )  # fmt: skip
        try:
            blaster.wait("ready", timeout=600)
            pids = dut.pids()
            blaster.command("connect")
            blaster.wait("established", timeout=60 + peers)
            poller = _Poller(dut, dut.rib_total, None)
            failed = lambda: [f["reason"] for f in blaster.failures]  # noqa: E731
            cpu0 = procstat.total_cpu_seconds(pids)
            blaster.command("announce")
            t0 = blaster.wait("announce_start", timeout=30)["t"]
            t_rib, _, why, _ = poller.until(lambda n: n >= total, bool, timeout, failed)
            _record(res, "rib_s", t_rib, t0, why)
            res.metrics["cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu0, 2)
            res.metrics["peak_rss_mib"] = round(procstat.total_peak_rss_mib(pids), 1)
            if t_rib is not None:
                cpu1 = procstat.total_cpu_seconds(pids)
                blaster.command("withdraw")
                t1 = blaster.wait("withdraw_start", timeout=30)["t"]
                w_rib, _, why, _ = poller.until(lambda n: n <= 0, bool, timeout, failed)
                _record(res, "withdraw_rib_s", w_rib, t1, why)
                res.metrics["withdraw_cpu_s"] = round(procstat.total_cpu_seconds(pids) - cpu1, 2)
        except (BlasterError, LabError) as exc:
            res.failures.append(str(exc).splitlines()[0])
        finally:
            blaster.quit()
            res.failures += [
                f["reason"] for f in blaster.failures if f["reason"] not in res.failures
            ]
            if res.failures:
                res.info["dut_log_tail"] = dut.log_tail()[-1500:]
    return res
