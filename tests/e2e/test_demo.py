"""`routemesh demo` end to end: it prints sessions and routes, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

from tests.lab.require import require_binary, require_root


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_demo_prints_session_and_routes_and_cleans_up():
    require_root()
    require_binary("bird")
    res = subprocess.run(
        [sys.executable, "-m", "bgpd.cli.main", "demo"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Established" in out
    # Routes both ways: BIRD's in our table, ours in BIRD's.
    for prefix in ("10.244.2.0/26", "10.244.3.0/26", "fd00:10:244:2::/64"):
        assert f"* {prefix}" in out
    assert "[AS64512i]" in out and "via 198.18.0.1" in out
    assert "rmdemo-" not in _netns()


def test_demo_keep_then_down():
    require_root()
    require_binary("bird")
    cmd = [sys.executable, "-m", "bgpd.cli.main", "demo"]
    try:
        res = subprocess.run([*cmd, "--keep"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert "routemesh demo --down" in res.stdout
        assert "rmdemo-host1" in _netns()
    finally:
        down = subprocess.run([*cmd, "--down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0
    assert "rmdemo-" not in _netns()
