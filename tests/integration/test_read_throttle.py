"""Flow control: a table that arrives faster than the kernel takes it waits in the peer's TCP
window, not in our queues. A raw peer writes 300k routes as fast as TCP takes them into a
bgpd that writes its FIB; reading pauses, every route still reaches the kernel, and the
session never resets."""

from __future__ import annotations

import threading

from bgpd.speaker.attributes import PathAttributes
from bgpd.speaker.context import CodecContext
from bgpd.speaker.messages import encode_updates
from bgpd.speaker.types import IPV4_UNICAST
from bgpd.throttle import PAUSE_ABOVE
from tests.lab.netns import Lab, Netns
from tests.lab.ours import Neighbor as OurNeighbor
from tests.lab.ours import RoutemeshSpeaker
from tests.lab.rawpeer import RawPeer, build_open
from tests.lab.require import require_netns, require_root
from tests.lab.waiting import wait_for

OUR_ASN, PEER_ASN = 64512, 64513
DUT, RAW = "198.18.40.1", "198.18.40.2"
ROUTES = 3 * PAUSE_ABOVE + 12_000  # /29s from 100.64.0.0/10: more than the pause mark thrice


def _updates() -> bytes:
    nlri = [(0x64400000 + (i << 3), 29, 0) for i in range(ROUTES)]
    nh = (int.from_bytes(bytes(int(x) for x in RAW.split(".")), "big"),)
    out = []
    for k in range(0, ROUTES, 500):
        attrs = PathAttributes(origin=0, as_path=((2, (PEER_ASN,)),), med=k)
        out += encode_updates(CodecContext(), IPV4_UNICAST, attrs, nlri[k : k + 500], nh)
    return b"".join(out)


def _fib_count(ns: Netns) -> int:
    # /proc/net/fib_triestat is cheap at 300k, where `ip route` is not.
    text = ns.run(["cat", "/proc/net/fib_triestat"]).stdout
    main = text.split("Main:")[1] if "Main:" in text else text
    for line in main.splitlines():
        if "Prefixes:" in line:
            return int(line.split(":")[1])
    raise AssertionError(text)


def test_a_table_faster_than_the_kernel_pauses_reading_and_all_of_it_lands() -> None:
    require_root()
    require_netns()
    payload = _updates()
    with Lab() as lab:
        dut, raw_ns = lab.netns(), lab.netns()
        lab.veth(dut, raw_ns, f"{DUT}/24", f"{RAW}/24")
        ours = RoutemeshSpeaker(
            lab,
            dut,
            asn=OUR_ASN,
            router_id=DUT,
            neighbors=[OurNeighbor(RAW, PEER_ASN, passive=True, families=("ipv4-unicast",))],
            listen=["0.0.0.0"],
            extra_toml="[fib]\nenabled = true",
        ).start()
        base = _fib_count(dut)
        peer = RawPeer(DUT, netns=raw_ns.name, timeout=30).connect()
        peer.handshake(build_open(PEER_ASN, RAW, families=(IPV4_UNICAST,)))
        ours.wait_established(RAW, timeout=10)
        # The write blocks while bgpd does not read: that is the flow control under test.
        done = threading.Event()
        sender = threading.Thread(target=lambda: (peer.send(payload), done.set()))
        sender.start()
        wait_for(done.is_set, timeout=120, what="all UPDATEs taken by TCP")
        sender.join()
        wait_for(
            lambda: ours.peer_status(RAW)["prefixes_accepted"] == ROUTES,
            timeout=120,
            what=f"{ROUTES} routes in the RIB",
        )
        wait_for(
            lambda: _fib_count(dut) - base >= ROUTES,
            timeout=120,
            what=f"{ROUTES} routes in the kernel",
        )
        row = ours.peer_status(RAW)
        assert row["read_pauses"] > 0, row
        assert row["established_count"] == 1 and row["state"] == "Established", row
        assert ours.alive()
        peer.close()
