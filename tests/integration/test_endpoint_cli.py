"""`routemesh endpoint add|del|list` as an operator runs it on a node (inside a lab host
namespace), with a SQLite datastore: addresses from IPAM or --ip, the record, the kernel."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from agent.endpoint import veth_name
from agent.endpoints import wep_key
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.model import from_dict, to_dict
from tests.lab import Lab, Netns, missing

pytestmark = pytest.mark.root


def routemesh() -> str:
    path = Path(sys.executable).parent / "routemesh"
    if not os.access(path, os.X_OK):
        missing(f"{path} not installed (pip install -e .)")
    return str(path)


async def seed(db: Path) -> None:
    store = SqliteDatastore(db)
    try:
        pool = from_dict(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": "lab-pool"},
                "spec": {"cidr": "100.64.0.0/16", "blockSize": 26},
            }
        )
        await store.put(
            "/routemesh/v1/resources/IPPool/lab-pool", json.dumps(to_dict(pool)).encode()
        )
    finally:
        await store.close()


async def read_wep(db: Path, key: str) -> dict | None:
    store = SqliteDatastore(db)
    try:
        kv = await store.get(key)
        return json.loads(kv.value) if kv else None
    finally:
        await store.close()


def cli(host: Netns, db: Path, *args: str, check: bool = True):
    return host.run(
        [routemesh(), "endpoint", *args, "--datastore", f"sqlite://{db}", "--node", "lab-node"],
        check=check,
        timeout=60,
    )


async def test_add_list_del_round_trip(lab: Lab) -> None:
    host = lab.netns()
    host.ip("link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1")
    host.link_up("uplink1")
    host.link_up("uplink0")
    host.add_address("uplink0", "198.18.0.1/24")
    host.ip("route", "add", "default", "via", "198.18.0.254", "dev", "uplink0", "onlink")
    db = lab.tmpdir("store") / "store.db"
    await seed(db)
    web, fixed = lab.netns(forwarding=False), lab.netns(forwarding=False)

    out = cli(host, db, "add", "--netns", web.name, "--namespace", "shop", "--name", "web-1",
              "--labels", "app=web,tier=front", "--profile", "kns.shop", "-o", "json").stdout  # fmt: skip
    added = json.loads(out)
    assert added["interface"] == veth_name("shop.web-1")
    [address] = added["addresses"]
    assert address.startswith("100.64.") and address.endswith("/32")
    assert web.ping("198.18.0.1")

    cli(host, db, "add", "--netns", fixed.name, "--namespace", "shop", "--name", "db",
        "--ip", "100.64.200.9", "--mtu", "1400")  # fmt: skip
    assert json.loads(fixed.ip("-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1400
    assert web.ping("100.64.200.9"), "two hand-made endpoints reach each other via the host"

    wep = await read_wep(db, wep_key("shop", "lab--node-cli-web--1-eth0"))
    assert wep is not None
    assert wep["metadata"]["labels"]["app"] == "web"
    assert wep["metadata"]["labels"]["projectcalico.org/namespace"] == "shop"
    assert wep["spec"]["profiles"] == ["kns.shop"]
    assert wep["spec"]["ipNetworks"] == [address]
    assert wep["spec"]["interfaceName"] == added["interface"]

    rows = json.loads(cli(host, db, "list", "-o", "json").stdout)
    assert {(r["name"], r["state"]) for r in rows} == {("web-1", "up"), ("db", "up")}
    table = cli(host, db, "list").stdout
    assert "web-1" in table and "100.64.200.9/32" in table

    # A clash is refused with a one-line error, and leaves nothing behind.
    clash = lab.netns(forwarding=False)
    res = cli(host, db, "add", "--netns", clash.name, "--namespace", "shop", "--name", "x",
              "--ip", "100.64.200.9", check=False)  # fmt: skip
    assert res.returncode == 1 and "in use" in res.stderr and "Traceback" not in res.stderr
    assert veth_name("shop.x") not in host.ip("link").stdout

    res = cli(host, db, "add", "--netns", "rm-no-such-ns", "--namespace", "shop", "--name", "y",
              check=False)  # fmt: skip
    assert res.returncode == 1 and "does not exist" in res.stderr

    out = cli(host, db, "del", "--namespace", "shop", "--name", "web-1").stdout
    assert address.split("/")[0] in out
    cli(host, db, "del", "--namespace", "shop", "--name", "web-1")  # idempotent
    rows = json.loads(cli(host, db, "list", "-o", "json").stdout)
    assert [r["name"] for r in rows] == ["db"]
    assert veth_name("shop.web-1") not in host.ip("link").stdout
    assert await read_wep(db, wep_key("shop", "lab--node-cli-web--1-eth0")) is None
