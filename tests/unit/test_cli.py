"""CLI formatting and argument parsing that needs no daemon."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bgpd.cli.bgp import format_status
from bgpd.cli.main import main
from bgpd.cli.selector import parse_labels


def row(state: str, uptime: float) -> dict:
    return {
        "peer": "198.18.0.1",
        "remote_asn": 64513,
        "type": "external",
        "state": state,
        "uptime_s": uptime,
        "prefixes_received": 3,
        "prefixes_accepted": 2,
        "prefixes_advertised": 1,
        "last_error": "",
    }


def test_since_column_shows_a_fresh_session_and_hides_a_down_one():
    assert "| 00:00:00 |" in format_status([row("Established", 0.4)])
    assert "| 01:01:01 |" in format_status([row("Established", 3661.9)])
    assert "| Active | -     |" in format_status([row("Active", 0)])
    assert "3/2/1" in format_status([row("Active", 0)])


def test_parse_labels():
    assert parse_labels("org=ami, role = db") == {"org": "ami", "role": "db"}
    assert parse_labels("") == {}
    with pytest.raises(ValueError, match="'org'"):
        parse_labels("org")


@pytest.mark.parametrize(
    ("expr", "labels", "out"),
    [("org == 'ami'", "org=ami", "true"), ("has(org) && !has(x)", "x=1", "false")],
)
def test_selector_eval(capsys, expr, labels, out):
    assert main(["selector", "eval", expr, "--labels", labels]) == 0
    assert capsys.readouterr().out.strip() == out


def test_selector_eval_parse_error_exits_2_with_position(capsys):
    assert main(["selector", "eval", "org == 'ami", "--labels", "org=ami"]) == 2
    err = capsys.readouterr().err
    assert "position 7" in err


def test_the_daemon_command_loads_no_agent_policy_or_demo_code():
    # Every module a daemon imports stays resident for its lifetime (about 24 MiB here).
    code = (
        "import sys\n"
        "from bgpd.cli.main import build_parser\n"
        "build_parser('bgpd').parse_args(['bgpd', '-f', 'x.toml'])\n"
        "import bgpd.standalone, bgpd.daemon\n"
        "heavy = ('agent', 'policy', 'ipam', 'bgpd.demo', 'bgpd.model', 'pydantic', 'pyroute2')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    # The whole parser still knows every verb.
    full = subprocess.run(
        [sys.executable, "-m", "bgpd.cli.main", "--help"], capture_output=True, text=True
    )
    assert full.returncode == 0 and "endpoint" in full.stdout and "ipam" in full.stdout
