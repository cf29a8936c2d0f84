"""tunl0 at the netlink-message level, for kernels without IPIP (this one): the RTM_NEWLINK
our request arguments turn into, encoded to bytes and decoded back with pyroute2's codec."""

from __future__ import annotations

import struct

from pyroute2.iproute.linux import get_arguments_processor
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from agent.tunnels import IPIP_NAME, ipip_link_request


def encode_newlink(kwargs: dict) -> bytes:
    # The same request processing AsyncIPRoute.link("add", ...) applies before sending.
    fields = dict(get_arguments_processor("link", "add", dict(kwargs)))
    msg = ifinfmsg()
    for key, value in fields.items():
        nla = msg.name2nla(key)
        if msg.valid_nla(nla):
            msg["attrs"].append([nla, value])
        else:
            msg[key] = value
    msg.encode()
    return bytes(msg.data)


def test_tunl0_request_is_an_ipip_link_with_any_remote() -> None:
    raw = encode_newlink(ipip_link_request(1480))
    length = struct.unpack_from("=I", raw)[0]
    assert length == len(raw)
    decoded = ifinfmsg(raw)
    decoded.decode()
    assert decoded.get("IFLA_IFNAME") == IPIP_NAME
    assert decoded.get("IFLA_MTU") == 1480
    info = decoded.get("IFLA_LINKINFO")
    assert info.get("IFLA_INFO_KIND") == "ipip"
    data = info.get("IFLA_INFO_DATA")
    # No fixed remote: tunl0 accepts IPIP from any node, and routes pick the far end.
    assert data.get("IFLA_IPIP_REMOTE") == "0.0.0.0"
    assert b"ipip\x00" in raw and b"tunl0\x00" in raw


def test_mtu_is_what_the_caller_derived() -> None:
    decoded = ifinfmsg(encode_newlink(ipip_link_request(8980)))
    decoded.decode()
    assert decoded.get("IFLA_MTU") == 8980
