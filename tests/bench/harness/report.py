"""From runs to figures: medians with min/max, `name: value` lines, the table of ratios against
routemesh, the issue 9 targets (met or missed, and by how much), and the JSON results file.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.bench.harness.scenarios import RunResult

OURS = "routemesh"
# Metrics where smaller is better; all of ours are.
TIME_METRICS = (
    "rib_s",
    "fib_s",
    "settle_s",
    "withdraw_rib_s",
    "withdraw_fib_s",
    "withdraw_settle_s",
    "all_clients_s",
    "withdraw_all_clients_s",
)  # fmt: skip
ALL_METRICS = (*TIME_METRICS, "peak_rss_mib", "cpu_s", "withdraw_cpu_s")


def summarize(values: Sequence[float]) -> dict[str, float] | None:
    """Median, min, max and count of one metric over runs (None when no run has it)."""
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "runs": len(values),
    }


class Results:
    """Runs keyed by scenario and DUT, and everything derived from them."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, list[RunResult]]] = {}

    def add(self, scenario: str, dut: str, run: RunResult) -> None:
        self.runs.setdefault(scenario, {}).setdefault(dut, []).append(run)

    def stats(self, scenario: str, dut: str) -> dict[str, dict[str, float]]:
        runs = self.runs.get(scenario, {}).get(dut, [])
        out: dict[str, dict[str, float]] = {}
        for metric in ALL_METRICS:
            s = summarize([r.metrics[metric] for r in runs if metric in r.metrics])
            if s is not None:
                out[metric] = s
        return out

    def median(self, scenario: str, dut: str, metric: str) -> float | None:
        s = self.stats(scenario, dut).get(metric)
        return None if s is None else s["median"]

    def na(self, scenario: str, dut: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.runs.get(scenario, {}).get(dut, []):
            for k, v in r.na.items():
                out.setdefault(k, v)
        return out

    def failures(self, scenario: str, dut: str) -> list[str]:
        return [f for r in self.runs.get(scenario, {}).get(dut, []) for f in r.failures]

    # -- output ---------------------------------------------------------------------------------

    def lines(self) -> list[str]:
        """`name: value` lines: median first, then min/max and the run count."""
        out = []
        for scenario, per_dut in self.runs.items():
            for dut in per_dut:
                for metric, s in self.stats(scenario, dut).items():
                    out.append(
                        f"{scenario}.{dut}.{metric}: {s['median']:g} "
                        f"(min {s['min']:g}, max {s['max']:g}, runs {s['runs']})"
                    )
                for metric, why in self.na(scenario, dut).items():
                    if metric not in self.stats(scenario, dut):
                        out.append(f"{scenario}.{dut}.{metric}: n/a ({why})")
                fails = self.failures(scenario, dut)
                out.append(f"{scenario}.{dut}.failures: {len(fails)}")
                out += [f"{scenario}.{dut}.failure: {f}" for f in dict.fromkeys(fails)]
        return out

    def curve_lines(self) -> list[str]:
        """Time and memory against size for the reflector grid (rr-KxN) and the mesh
        (mesh-KxM), with the growth exponent between the smallest and largest size:
        1 means linear, 2 quadratic."""
        grid: dict[tuple[str, str], dict[tuple[int, int], str]] = {}
        for scenario in self.runs:
            m = re.fullmatch(r"(rr|mesh)-(\d+)x(\d+)", scenario)
            if m:
                for dut in self.runs[scenario]:
                    key = (int(m.group(2)), int(m.group(3)))
                    grid.setdefault((m.group(1), dut), {})[key] = scenario
        out = []
        metric_of = {"rr": "all_clients_s", "mesh": "rib_s"}
        for (kind, dut), cells in sorted(grid.items()):
            metric = metric_of[kind]
            for axis in (0, 1):
                fixed_values = sorted({k[1 - axis] for k in cells})
                for fixed in fixed_values:
                    row = sorted((k[axis], s) for k, s in cells.items() if k[1 - axis] == fixed)
                    pts = [
                        (size, self.median(s, dut, metric), self.median(s, dut, "peak_rss_mib"))
                        for size, s in row
                    ]
                    pts = [p for p in pts if p[1] is not None]
                    if len(pts) < 2:
                        continue
                    what = ("clients" if kind == "rr" else "nodes") if axis == 0 else "prefixes"
                    other = "prefixes" if axis == 0 else ("clients" if kind == "rr" else "nodes")
                    desc = ", ".join(f"{x}: {t:g}s {r:g}MiB" for x, t, r in pts)
                    (x1, t1, _), (x2, t2, _) = pts[0], pts[-1]
                    grow = math.log(t2 / t1) / math.log(x2 / x1) if t1 > 0 and t2 > 0 else None
                    g = f"time ~ {what}^{grow:.2f}" if grow is not None else "growth n/a"
                    out.append(f"curve.{kind}.{dut}.{other}_{fixed}.by_{what}: {g} ({desc})")
        return out

    def ratio(self, scenario: str, dut: str, metric: str) -> float | None:
        """routemesh's median over ``dut``'s median (< 1: routemesh is better)."""
        ours, theirs = self.median(scenario, OURS, metric), self.median(scenario, dut, metric)
        if ours is None or theirs is None or theirs == 0:
            return None
        return ours / theirs

    def timeout_bound(self, scenario: str, dut: str, metric: str) -> float | None:
        """routemesh's median over the longest timeout ``dut`` hit, when it never finished."""
        ours = self.median(scenario, OURS, metric)
        waits = [
            float(m.group(1))
            for f in self.failures(scenario, dut)
            if (m := re.search(r"timeout after (\d+)s", f))
        ]
        if ours is None or not waits or self.median(scenario, dut, metric) is not None:
            return None
        return ours / max(waits)

    def ratio_table(self) -> str:
        """Markdown: one row per scenario metric, routemesh's value, then routemesh / each DUT."""
        duts = sorted({d for per in self.runs.values() for d in per if d != OURS})
        head = ["scenario", "metric", OURS, *[f"{OURS} / {d}" for d in duts]]
        rows = [head, ["---"] * len(head)]
        for scenario, per_dut in self.runs.items():
            for metric in ALL_METRICS:
                if not any(metric in self.stats(scenario, d) for d in per_dut):
                    continue
                ours = self.median(scenario, OURS, metric)
                cells = [scenario, metric, "n/a" if ours is None else f"{ours:g}"]
                for d in duts:
                    r = self.ratio(scenario, d, metric)
                    theirs = self.median(scenario, d, metric)
                    if r is not None:
                        cells.append(f"{r:.2f}x (of {theirs:g})")
                    else:
                        cells.append("-" if theirs is None else f"n/a (of {theirs:g})")
                rows.append(cells)
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)

    def targets(self, prefixes: int, unique: int) -> list[dict[str, Any]]:
        """The six targets of issue 9, each with its measured ratio and whether it is met."""
        shared, uniq = f"ingest-shared-{prefixes}", f"ingest-unique-{unique}"
        rr = "rr-100x10000"
        checks = [
            ("1_rib_vs_bird", shared, "bird", "rib_s", 1.0),
            ("1_fib_vs_bird", shared, "bird", "fib_s", 1.0),
            ("2_unique_rib_vs_bird", uniq, "bird", "rib_s", 1.5),
            ("3_rss_vs_bird", shared, "bird", "peak_rss_mib", 3.0),
            ("3_rss_vs_gobgp", shared, "gobgp", "peak_rss_mib", 0.25),
            ("4_rr_vs_bird", rr, "bird", "all_clients_s", 1.5),
            ("4_rr_vs_gobgp", rr, "gobgp", "all_clients_s", 0.1),
            ("5_unique_rib_vs_exabgp", uniq, "exabgp", "rib_s", 0.2),
        ]
        out = []
        for name, scenario, other, metric, limit in checks:
            r = self.ratio(scenario, other, metric)
            t = _target(name, f"{scenario} {metric}", r, limit)
            bound = self.timeout_bound(scenario, other, metric)
            if r is None and bound is not None:
                # The other DUT never finished: ours / its timeout is an upper bound on the
                # ratio, which settles the target when the bound is already within it.
                t.update(value=round(bound, 3), bound=True, met=True if bound <= limit else None)
                t["what"] += f" ({other} timed out; value is an upper bound)"
            out.append(t)
        # 5, second half: never slower than ExaBGP anywhere both were timed.
        worst = None
        for scenario in self.runs:
            for metric in TIME_METRICS:
                r = self.ratio(scenario, "exabgp", metric)
                if r is not None and (worst is None or r > worst[0]):
                    worst = (r, f"{scenario} {metric}")
        out.append(
            _target(
                "5_never_slower_than_exabgp", worst[1] if worst else "", worst and worst[0], 1.0
            )
        )
        resets = sum(len(self.failures(s, OURS)) for s in self.runs)
        ran = any(OURS in per for per in self.runs.values())
        out.append(
            {
                "target": "6_no_session_reset",
                "what": "session resets / hold-timer expiries in routemesh runs",
                "value": resets if ran else None,
                "limit": 0,
                "met": (resets == 0) if ran else None,
            }
        )
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for scenario, per_dut in self.runs.items():
            out[scenario] = {
                dut: {
                    "summary": self.stats(scenario, dut),
                    "na": self.na(scenario, dut),
                    "failures": self.failures(scenario, dut),
                    "runs": [asdict(r) for r in runs],
                }
                for dut, runs in per_dut.items()
            }
        return out


def _target(name: str, what: str, ratio: float | None, limit: float) -> dict[str, Any]:
    return {
        "target": name,
        "what": what,
        "value": None if ratio is None else round(ratio, 3),
        "limit": limit,
        "met": None if ratio is None else ratio <= limit,
    }


def target_lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for t in targets:
        if t["value"] is None:
            out.append(f"target_{t['target']}: n/a ({t['what'] or 'not measured'})")
        elif t["met"]:
            out.append(
                f"target_{t['target']}: {t['value']:g} (<= {t['limit']:g}: met; {t['what']})"
            )
        else:
            by = t["value"] / t["limit"] if t["limit"] else float("inf")
            out.append(
                f"target_{t['target']}: {t['value']:g} (<= {t['limit']:g}: MISSED by {by:.2f}x; "
                f"{t['what']})"
            )
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def figures_markdown(payload: dict[str, Any]) -> str:
    """A results JSON as one markdown table per scenario: median [min-max] per DUT."""
    out = []
    for scenario, per_dut in payload["results"].items():
        metrics = [m for m in ALL_METRICS if any(m in d["summary"] for d in per_dut.values())]
        out += [f"**{scenario}**", "", "| DUT | " + " | ".join(metrics) + " |"]
        out.append("|---" * (len(metrics) + 1) + "|")
        for dut, d in per_dut.items():
            cells = []
            for m in metrics:
                s = d["summary"].get(m)
                if s is None:
                    cells.append("n/a" if m in d["na"] or "all" in d["na"] else "-")
                elif s["runs"] > 1:
                    cells.append(f"{s['median']:g} [{s['min']:g}-{s['max']:g}]")
                else:
                    cells.append(f"{s['median']:g}")
            fails = f" ({len(d['failures'])} failed)" if d["failures"] else ""
            out.append(f"| {dut}{fails} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(figures_markdown(json.loads(Path(sys.argv[1]).read_text())))
