"""CLI formatting and argument parsing that needs no daemon."""

from __future__ import annotations

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
