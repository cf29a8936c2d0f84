"""Two of our daemons in one process over loopback: max-prefix warn-only keeps the session, and
import loop checks refuse a path carrying our router-id as ORIGINATOR_ID or our own AS."""

from __future__ import annotations

import asyncio
import logging

from bgpd.config import parse_config
from bgpd.daemon import Daemon
from bgpd.speaker.types import prefix_from_str
from tests.integration.test_rib_fib_hook import free_port, wait


def pair(
    tmp_path, a_nb: str = "", b_nb: str = "", b_asn: int = 64512, global_extra: str = ""
) -> tuple[Daemon, Daemon]:
    pa, pb = free_port(), free_port()

    def cfg(me, asn, other, other_asn, port, other_port, nb_extra, name):
        return parse_config(f"""
[global]
asn = {asn}
router-id = "{me}"
listen-address = "{me}"
listen-port = {port}
control-socket = "{tmp_path / name}.sock"
connect-retry = 1
next-hop-ipv4 = "198.18.91.{me.rsplit(".", 1)[1]}"
{global_extra}
[[neighbor]]
address = "{other}"
remote-asn = {other_asn}
port = {other_port}
hold-time = 9
{nb_extra}
""")  # fmt: skip

    a = Daemon(cfg("127.0.0.1", 64512, "127.0.0.2", b_asn, pa, pb, a_nb, "a"))
    b = Daemon(cfg("127.0.0.2", b_asn, "127.0.0.1", 64512, pb, pa, b_nb, "b"))
    return a, b


async def run_pair(a: Daemon, b: Daemon, body) -> None:
    tasks = [asyncio.create_task(d.run()) for d in (a, b)]
    try:
        await wait(lambda: all(d.peers and all(p.out for p in d.peers.values()) for d in (a, b)))
        await body()
    finally:
        for d in (a, b):
            d.request_stop()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_max_prefix_warn_only_keeps_the_session(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, "routemesh.bgpd")
    a, b = pair(tmp_path, b_nb='max-prefix = 1\nmax-prefix-action = "warn"')

    async def body() -> None:
        fam, p1 = prefix_from_str("10.244.1.0/24")
        _, p2 = prefix_from_str("10.244.2.0/24")
        a.originate(fam, [p1, p2])
        await wait(lambda: b.status()[0]["prefixes_accepted"] == 2)
        assert "2 prefixes, above max-prefix 1" in caplog.text
        (row,) = b.status()
        assert row["state"] == "Established" and row["established_count"] == 1

    await run_pair(a, b, body)


async def test_ebgp_path_with_our_as_is_refused(tmp_path) -> None:
    # B is AS 64513 with an export filter that prepends A's AS: A must refuse the looped path.
    filt = """
[[filter]]
name = "loop"
[[filter.rule]]
action = "Accept"
prepend-as-path = [64512]
"""
    a, b = pair(tmp_path, b_nb='export-filter = "loop"\n' + filt, b_asn=64513)

    async def body() -> None:
        fam, p1 = prefix_from_str("10.244.3.0/24")
        b.originate(fam, [p1])
        await wait(lambda: a.status()[0]["prefixes_received"] == 1)
        (row,) = a.status()
        assert row["prefixes_accepted"] == 0
        assert a.routes() == []

    await run_pair(a, b, body)


async def test_two_restarting_speakers_do_not_wait_for_each_other(tmp_path) -> None:
    """Both sides boot with GR (R bit set): RFC 4724 §4.1 excludes a restarting peer from the
    End-of-RIB wait, so neither holds its routes until select-defer-time (600 s here)."""
    gr = "graceful-restart = true"
    a, b = pair(tmp_path, a_nb=gr, b_nb=gr, global_extra="select-defer-time = 600")
    assert a.restarting and b.restarting

    async def body() -> None:
        fam, p1 = prefix_from_str("10.244.7.0/24")
        a.originate(fam, [p1])
        await wait(lambda: a.converged.is_set() and b.converged.is_set())
        await wait(lambda: b.status()[0]["prefixes_accepted"] == 1)

    await run_pair(a, b, body)
