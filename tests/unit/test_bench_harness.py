"""The benchmark harness's pure parts: the blaster's pre-encoded feeds, the receive counter,
and the report maths (medians, ratios, targets, fib_triestat parsing)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.capabilities import FourOctetAS, Multiprotocol
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import (
    Open,
    Update,
    decode_message,
    encode_open,
    encode_updates,
    split_messages,
)
from bgpd.speaker.types import IPV4_UNICAST, MAX_MESSAGE_LEN
from tests.bench.harness import feeds
from tests.bench.harness.procstat import parse_fib_triestat
from tests.bench.harness.report import Results, summarize, target_lines
from tests.bench.harness.scenarios import CpuTrace, RunResult
from tests.bench.harness.speaker import KEEPALIVE, PrefixTracker, Session, count_update

CTX = CodecContext()
NH = 0xC6120001  # 198.18.0.1
ATTRS = feeds.base_attributes(65001, ebgp=True)


def _decode_all(messages: list[bytes]) -> list[Update]:
    buf = bytearray(b"".join(messages))
    out = [decode_message(t, body, CTX) for t, body in split_messages(buf, CTX)]
    assert not buf, "a message was cut short"
    return out  # type: ignore[return-value]


def test_shared_feed_announces_every_prefix_once_in_blocks_of_one_attribute_set() -> None:
    n, per_set = 2345, 500
    updates = _decode_all(feeds.shared_updates(CTX, n, NH, ATTRS, per_set=per_set))
    seen: list[tuple[int, int, int]] = []
    by_med: dict[int, int] = {}
    for upd in updates:
        assert upd.attrs is not None and upd.attrs.next_hop == NH
        assert upd.attrs.as_path == ((2, (65001,)),)
        nlri = upd.announce[IPV4_UNICAST]
        seen += nlri
        by_med[upd.attrs.med] = by_med.get(upd.attrs.med, 0) + len(nlri)
    assert seen == feeds.prefixes(n)
    assert sorted(by_med) == list(range(-(-n // per_set)))
    assert all(count <= per_set for count in by_med.values())
    assert sum(by_med.values()) == n


def test_every_feed_message_fits_the_standard_message_size() -> None:
    for msg in feeds.shared_updates(CTX, 5000, NH, ATTRS) + feeds.withdraw_updates(CTX, 5000):
        assert len(msg) <= MAX_MESSAGE_LEN


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=1999))
def test_unique_feed_message_is_what_the_codec_encodes_for_that_prefix(i: int) -> None:
    messages = feeds.unique_updates(CTX, 2000, NH, ATTRS)
    (expected,) = encode_updates(
        CTX, IPV4_UNICAST, replace(ATTRS, med=i), [feeds.prefix_nlri(i)], (NH,)
    )
    assert messages[i] == expected


def test_unique_feed_has_one_attribute_set_per_prefix() -> None:
    updates = _decode_all(feeds.unique_updates(CTX, 700, NH, ATTRS))
    assert [u.announce[IPV4_UNICAST] for u in updates] == [[p] for p in feeds.prefixes(700)]
    assert len({u.attrs for u in updates}) == 700


def test_withdraw_feed_withdraws_every_prefix() -> None:
    updates = _decode_all(feeds.withdraw_updates(CTX, 3001))
    withdrawn = [p for u in updates for p in u.withdraw[IPV4_UNICAST]]
    assert withdrawn == feeds.prefixes(3001)
    assert not any(u.announce for u in updates)


def test_chunks_keep_messages_whole_and_in_order() -> None:
    messages = feeds.shared_updates(CTX, 20_000, NH, ATTRS)
    buffers = feeds.chunks(messages, size=10_000)
    assert len(buffers) > 1
    assert b"".join(buffers) == b"".join(messages)
    for buf in buffers:
        framed = bytearray(buf)
        assert split_messages(framed, CTX)
        assert not framed, "a chunk boundary split a message"


def test_prefix_space_is_bounded() -> None:
    assert feeds.prefix_text(feeds.MAX_PREFIXES - 1) == "100.127.255.248/29"
    with pytest.raises(ValueError):
        feeds.prefix_nlri(feeds.MAX_PREFIXES)


def test_count_update_matches_the_decoder_and_ignores_foreign_prefixes() -> None:
    for msg in feeds.shared_updates(CTX, 1200, NH, ATTRS) + feeds.withdraw_updates(CTX, 1200):
        upd = decode_message(2, msg[19:], CTX)
        assert isinstance(upd, Update)
        want = (
            sum(len(v) for v in upd.announce.values()),
            sum(len(v) for v in upd.withdraw.values()),
        )
        assert count_update(msg[19:]) == want
    # A DUT's own connected route (a /30 outside the pool) is not one of the feed's.
    mixed = encode_updates(
        CTX,
        IPV4_UNICAST,
        PathAttributes(origin=0, local_pref=100),
        [(0xC6120000, 30, 0), feeds.prefix_nlri(7)],
        (NH,),
    )
    assert count_update(mixed[0][19:]) == (1, 0)


def test_tracker_counts_each_prefix_once_and_never_below_zero() -> None:
    tracker = PrefixTracker(1000)
    announce = feeds.shared_updates(CTX, 1000, NH, ATTRS)
    for msg in announce + announce[:1]:  # the first UPDATE repeated: no prefix counts twice
        tracker.apply(msg[19:])
    assert tracker.count == 1000
    for msg in feeds.withdraw_updates(CTX, 1000) + feeds.withdraw_updates(CTX, 10):
        tracker.apply(msg[19:])
    assert tracker.count == 0
    assert not any(tracker.held)


def test_tracker_ignores_foreign_prefixes_and_reads_mixed_lengths() -> None:
    tracker = PrefixTracker(100)
    mixed = encode_updates(
        CTX,
        IPV4_UNICAST,
        PathAttributes(origin=0, local_pref=100),
        [(0xC6120000, 30, 0), feeds.prefix_nlri(3), feeds.prefix_nlri(500)],
        (NH,),
    )
    tracker.apply(mixed[0][19:])
    assert tracker.count == 1 and tracker.held[3] == 1


def test_idle_is_the_first_quiet_half_second_after_the_rib_filled() -> None:
    trace = CpuTrace([])
    # 0.1 s samples: busy (0.05 CPU s per sample) until t=2.0, then quiet.
    trace.samples = [(i / 10, min(i, 20) * 0.05) for i in range(40)]
    assert trace.idle_since(1.0) == pytest.approx(2.0)
    assert trace.idle_since(2.5) == pytest.approx(2.5)
    # Still busy at the end of the samples: not known yet.
    trace.samples = [(i / 10, i * 0.05) for i in range(40)]
    assert trace.idle_since(0.0) is None


async def test_session_counts_a_feed_then_reports_the_dut_going_silent() -> None:
    """A fake DUT on loopback: OPEN (hold 3 s), KEEPALIVE, 800 prefixes, then nothing. The
    session must hold all 800 and then fail on its own hold timer, as a run would."""
    feed = b"".join(feeds.shared_updates(CTX, 800, NH, ATTRS))
    dut_open = encode_open(
        Open(65000, 3, 0xC6120002, (Multiprotocol(IPV4_UNICAST), FourOctetAS(65000)))
    )

    async def fake_dut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(dut_open + KEEPALIVE)
        await reader.read(4096)  # their OPEN (and maybe KEEPALIVE)
        writer.write(feed)
        await writer.drain()
        await asyncio.sleep(30)  # silent from now on

    server = await asyncio.start_server(fake_dut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    session = Session(local_asn=65001, peer_asn=65000, router_id="127.0.0.1", hold_time=9,
                      track=800, on_count=lambda s: None)  # fmt: skip
    try:
        await session.connect("127.0.0.1", port, "127.0.0.1", timeout=10)
        assert session.negotiated_hold == 3
        await asyncio.wait_for(session.closed.wait(), timeout=20)
        assert session.received == 800
        assert session.failures and "hold timer expired" in session.failures[0]
    finally:
        await session.close()
        server.close()


# --- report maths -------------------------------------------------------------------------------


def test_summarize_takes_median_min_max() -> None:
    assert summarize([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0, "runs": 4}
    assert summarize([]) is None


def _results(values: dict[str, dict[str, list[float]]], scenario: str) -> Results:
    res = Results()
    for dut, metrics in values.items():
        runs = max(len(v) for v in metrics.values())
        for i in range(runs):
            res.add(scenario, dut, RunResult(metrics={m: v[i] for m, v in metrics.items()}))
    return res


def test_ratio_is_routemesh_median_over_the_other_median() -> None:
    res = _results(
        {"routemesh": {"rib_s": [4.0, 6.0, 5.0]}, "bird": {"rib_s": [2.0, 2.5, 3.0]}}, "s"
    )
    assert res.ratio("s", "bird", "rib_s") == pytest.approx(5.0 / 2.5)
    assert res.ratio("s", "gobgp", "rib_s") is None
    table = res.ratio_table()
    assert "2.00x" in table and "| s | rib_s | 5 |" in table


def test_targets_report_met_and_missed_with_the_margin() -> None:
    scenario = "ingest-shared-1000"
    res = _results(
        {
            "routemesh": {"rib_s": [3.0], "peak_rss_mib": [100.0]},
            "bird": {"rib_s": [1.5], "peak_rss_mib": [50.0]},
            "gobgp": {"rib_s": [6.0], "peak_rss_mib": [800.0]},
        },
        scenario,
    )
    targets = {t["target"]: t for t in res.targets(1000, 100)}
    assert targets["1_rib_vs_bird"]["value"] == pytest.approx(2.0)
    assert targets["1_rib_vs_bird"]["met"] is False
    assert targets["3_rss_vs_bird"]["met"] is True
    assert targets["3_rss_vs_gobgp"]["value"] == pytest.approx(0.125)
    assert targets["1_fib_vs_bird"]["met"] is None
    assert targets["6_no_session_reset"]["met"] is True
    lines = target_lines(list(targets.values()))
    assert any("1_rib_vs_bird" in ln and "MISSED by 2.00x" in ln for ln in lines)
    assert any("1_fib_vs_bird: n/a" in ln for ln in lines)


def test_a_timed_out_reflector_bounds_the_ratio() -> None:
    res = Results()
    res.add("rr-100x10000", "routemesh", RunResult(metrics={"all_clients_s": 12.0}))
    res.add("rr-100x10000", "gobgp", RunResult(failures=["all_received: timeout after 240s"]))
    res.add("rr-100x10000", "bird", RunResult(metrics={"all_clients_s": 0.5}))
    targets = {t["target"]: t for t in res.targets(1, 1)}
    assert targets["4_rr_vs_gobgp"]["value"] == pytest.approx(12.0 / 240)
    assert targets["4_rr_vs_gobgp"]["met"] is True and targets["4_rr_vs_gobgp"]["bound"]
    assert targets["4_rr_vs_bird"]["met"] is False


def test_a_session_reset_fails_target_6() -> None:
    res = Results()
    res.add("rr-20x10000", "routemesh", RunResult(failures=["hold timer expired"]))
    (t6,) = [t for t in res.targets(1, 1) if t["target"] == "6_no_session_reset"]
    assert t6["met"] is False and t6["value"] == 1


TRIESTAT = """Basic info: size of leaf: 48 bytes, size of tnode: 40 bytes.
Main:
\tAver depth:     2.25
\tMax depth:      3
\tLeaves:         4
\tPrefixes:       500004
\tInternal nodes: 3
\t  1: 1  2: 2
\tPointers: 10
Null ptrs: 4
Total size: 1  kB
Local:
\tAver depth:     2.25
\tPrefixes:       7
"""


def test_parse_fib_triestat_reads_the_main_table() -> None:
    assert parse_fib_triestat(TRIESTAT) == 500004
    with pytest.raises(ValueError):
        parse_fib_triestat("Local:\n\tPrefixes: 3\n")
