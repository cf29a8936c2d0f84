"""docs/metrics.md cannot drift from bgpd/metrics.py: its table is the module's own rendering."""

from __future__ import annotations

import re
from pathlib import Path

from bgpd.health import BGP_SESSIONS, DATAPLANE_SYNCED, DEFAULT_PORT, FIB_SYNCED
from bgpd.metrics import Metrics, reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _table(text: str) -> str:
    match = re.search(
        r"<!-- BEGIN METRICS TABLE \(generated\) -->\n(.*?)<!-- END METRICS TABLE -->", text, re.S
    )
    assert match, "docs/metrics.md lost its generated-table markers"
    return match.group(1)


def test_metrics_table_matches_the_module():
    expected = reference_markdown()
    assert _table(DOC.read_text()) == expected, (
        "docs/metrics.md is out of date; replace its table with:\n" + expected
    )


def test_every_metric_is_documented_once_and_nothing_else_is():
    text = DOC.read_text()
    documented = re.findall(r"^\| `(routemesh_\w+)` \|", _table(text), re.M)
    assert sorted(documented) == sorted(s.name for s in Metrics().specs())
    assert len(documented) == len(set(documented))
    # Names used elsewhere in the page (queries) exist too.
    known = {s.name for s in Metrics().specs()}
    known |= {s.name + sfx for s in Metrics().specs() for sfx in ("_bucket", "_sum", "_count")}
    for name in set(re.findall(r"\broutemesh_[a-z_]+[a-z]", text)):
        assert name in known, name


def test_health_section_names_the_real_port_and_conditions():
    text = DOC.read_text()
    assert f"**{DEFAULT_PORT}**" in text
    for condition in (BGP_SESSIONS, FIB_SYNCED, DATAPLANE_SYNCED):
        assert f"`{condition}`" in text
