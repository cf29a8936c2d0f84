"""The issue 9 harness end to end at a small size: real BIRD and our bgpd in the DUT slot, the
blaster and the reflector clients as separate processes. Asserts that every figure was taken
and that no session reset, never what the figures are (DESIGN.md, Performance).

Run: pytest -m slow tests/bench/test_bench_harness.py -s
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench.__main__ import main as bench_main
from tests.bench.harness.scenarios import ingest_run, rr_run
from tests.lab.require import require_binary, require_netns

pytestmark = pytest.mark.slow


def _require_lab() -> None:
    require_netns()
    require_binary("bird")
    require_binary("birdc")


@pytest.mark.parametrize("dut", ["bird", "routemesh"])
def test_ingest_scenario_measures_rib_cpu_memory_and_withdraw(dut: str) -> None:
    _require_lab()
    res = ingest_run(dut, "shared", 3000, timeout=120)
    assert res.failures == [], res.info.get("dut_log_tail")
    assert res.info["feed"]["updates"] >= 3000 // 500
    for metric in ("rib_s", "withdraw_rib_s"):
        assert res.metrics[metric] > 0
    # Idle is never before the RIB holds everything.
    assert res.metrics["settle_s"] >= res.metrics["rib_s"]
    assert res.metrics["peak_rss_mib"] > 0
    assert res.metrics["cpu_s"] >= 0
    if dut == "bird":
        # BIRD writes the kernel FIB of its namespace; fib_triestat must have seen it.
        assert res.metrics["fib_s"] >= res.metrics["rib_s"] - 0.5
        assert res.metrics["withdraw_fib_s"] > 0
    else:
        assert "fib_s" in res.metrics or "fib_s" in res.na


def test_unique_attribute_feed_reaches_the_rib() -> None:
    _require_lab()
    res = ingest_run("bird", "unique", 1000, timeout=120)
    assert res.failures == []
    assert res.info["feed"]["updates"] == 1000 + 1  # one UPDATE per prefix, then End-of-RIB
    assert res.metrics["rib_s"] > 0


def test_reflector_scenario_times_every_client_holding_every_prefix() -> None:
    _require_lab()
    res = rr_run("bird", 4, 2000, timeout=120)
    assert res.failures == [], res.info.get("dut_log_tail")
    assert res.metrics["all_clients_s"] > 0
    assert res.metrics["withdraw_all_clients_s"] > 0


def test_command_prints_figures_ratios_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_lab()
    out = tmp_path / "results.json"
    rc = bench_main(
        ["--prefixes", "1000", "--runs", "1", "--duts", "bird,routemesh",
         "--scenarios", "ingest-shared", "--timeout", "120", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "ingest-shared-1000.bird.rib_s: " in text
    assert "ingest-shared-1000.routemesh.rib_s: " in text
    assert "| routemesh / bird |" in text
    assert "target_6_no_session_reset: " in text
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    assert "BIRD" in data["versions"]["bird"]
    bird = data["results"]["ingest-shared-1000"]["bird"]
    assert bird["summary"]["rib_s"]["runs"] == 1 and bird["failures"] == []
