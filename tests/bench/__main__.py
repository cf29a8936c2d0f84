"""`python -m tests.bench`: run the issue 9 benchmark harness (needs root and the lab peers).

Prints `name: value` lines, a table of ratios against routemesh and the targets, and writes a
JSON results file. See tests/bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.harness import procstat
from tests.bench.harness.duts import DUTS, RoutemeshDut
from tests.bench.harness.report import Results, target_lines, write_json
from tests.bench.harness.scenarios import (
    RunResult,
    bird_source_run,
    ingest_run,
    mesh_run,
    rr_run,
)

SCENARIOS = ("ingest-shared", "ingest-unique", "bird-shared", "bird-unique", "rr", "mesh")
RR_DUTS = ("bird", "gobgp", "routemesh")
MESH_DUTS = ("bird", "frr", "gobgp", "routemesh")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--prefixes", type=int, default=500_000, help="shared-attribute ingest size")
    p.add_argument("--unique-prefixes", type=int, default=100_000, help="one-set-per-prefix size")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (medians need >= 3)")
    p.add_argument("--duts", default=",".join(DUTS), help="comma list of " + ",".join(DUTS))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=",".join(SCENARIOS))
    p.add_argument("--rr-clients", type=_ints, default=[20, 100], help="e.g. 20,100")
    p.add_argument("--rr-prefixes", type=_ints, default=[10_000, 100_000], help="e.g. 10000,100000")
    p.add_argument("--mesh-nodes", type=_ints, default=[200], help="full-mesh sizes, e.g. 50,200")
    p.add_argument("--mesh-prefixes", type=int, default=50, help="prefixes each mesh node owns")
    p.add_argument("--timeout", type=float, default=300, help="seconds per phase before giving up")
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="run our bgpd under cProfile into DIR"
    )
    p.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON results")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, str, Callable[[], RunResult]]]:
    """(scenario id, dut, run) for one round; rounds repeat ``--runs`` times, interleaved so
    that a noisy neighbour on a shared machine spreads over every DUT alike."""
    duts = [d for d in args.duts.split(",") if d]
    unknown = [d for d in duts if d not in DUTS]
    if unknown:
        raise SystemExit(f"unknown DUT(s): {', '.join(unknown)}")
    wanted = [s for s in args.scenarios.split(",") if s]
    out: list[tuple[str, str, Callable[[], RunResult]]] = []
    n, u, t = args.prefixes, args.unique_prefixes, args.timeout
    for scenario in wanted:
        if scenario not in SCENARIOS:
            raise SystemExit(f"unknown scenario {scenario!r}")
        for dut in duts:
            if scenario == "ingest-shared":
                out.append((f"{scenario}-{n}", dut, lambda d=dut: ingest_run(d, "shared", n, t)))
            elif scenario == "ingest-unique":
                out.append((f"{scenario}-{u}", dut, lambda d=dut: ingest_run(d, "unique", u, t)))
            elif scenario == "bird-shared":
                out.append(
                    (f"{scenario}-{n}", dut, lambda d=dut: bird_source_run(d, "shared", n, t))
                )
            elif scenario == "bird-unique":
                out.append(
                    (f"{scenario}-{u}", dut, lambda d=dut: bird_source_run(d, "unique", u, t))
                )
            elif scenario == "rr" and dut in RR_DUTS:
                for k in args.rr_clients:
                    for m in args.rr_prefixes:
                        out.append((f"rr-{k}x{m}", dut, lambda d=dut, k=k, m=m: rr_run(d, k, m, t)))
            elif scenario == "mesh" and dut in MESH_DUTS:
                m = args.mesh_prefixes
                for k in args.mesh_nodes:
                    # The DUT is one node; the other k - 1 are simulated.
                    out.append(
                        (f"mesh-{k}x{m}", dut, lambda d=dut, k=k, m=m: mesh_run(d, k - 1, m, t))
                    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps = plan(args)
    RoutemeshDut.profile_dir = args.profile
    results = Results()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    mach = procstat.machine()
    versions = {name: cls.version() for name, cls in DUTS.items()}
    print(f"machine: {mach['cpu_model']}, {mach['cores']} cores, {mach['mem_gib']} GiB, "
          f"kernel {mach['kernel']}, load {mach['load_avg_at_start']}")  # fmt: skip
    for name, v in versions.items():
        print(f"version.{name}: {v}")
    gave_up: dict[tuple[str, str], str] = {}
    for rnd in range(args.runs):
        for scenario, dut, fn in steps:
            if (scenario, dut) in gave_up:
                # A run that timed out would time out again: report it once, not --runs times.
                continue
            t0 = time.monotonic()
            try:
                res = fn()
            except Exception as exc:  # one broken run must not lose the others' figures
                res = RunResult(failures=[f"harness error: {exc!r}"])
            results.add(scenario, dut, res)
            if any("timeout" in f or "stalled" in f for f in res.failures):
                gave_up[(scenario, dut)] = f"timed out in run {rnd + 1}; not repeated"
            took = time.monotonic() - t0
            brief = ", ".join(f"{k}={v:g}" for k, v in res.metrics.items()) or "no figures"
            status = f" FAILED: {res.failures[0]}" if res.failures else ""
            if "all" in res.na:
                status = f" n/a: {res.na['all']}"
            print(f"# run {rnd + 1}/{args.runs} {scenario} {dut}: {brief}{status} ({took:.0f}s)",
                  file=sys.stderr, flush=True)  # fmt: skip
    print()
    for line in results.lines():
        print(line)
    for line in results.curve_lines():
        print(line)
    print()
    print(results.ratio_table())
    print()
    targets = results.targets(args.prefixes, args.unique_prefixes)
    for line in target_lines(targets):
        print(line)
    write_json(
        args.out,
        {
            "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": mach,
            "versions": versions,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results.to_json(),
            "targets": targets,
        },
    )
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
