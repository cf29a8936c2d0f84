"""`routemesh ipam …` output and exit codes, run in-process against a MemoryDatastore."""

from __future__ import annotations

import ipaddress
import json

import pytest

from bgpd.cli.ipam import execute
from bgpd.cli.main import build_parser
from bgpd.datastore.memory import MemoryDatastore
from bgpd.model import load_documents
from ipam import Ipam, IpamError
from ipam.block import Block
from ipam.keys import block_key
from ipam.pools import put_resource, read_config

RESOURCES = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool1}
spec: {cidr: 10.244.0.0/24, blockSize: 29}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-a}
"""


async def run(store: MemoryDatastore, *argv: str) -> tuple[str, str, int]:
    args = build_parser().parse_args(["ipam", *argv])
    return await execute(store, args)


@pytest.fixture
async def store():
    s = MemoryDatastore()
    for r in load_documents(RESOURCES):
        await put_resource(s, r)
    yield s
    await s.close()


async def test_show_counts_per_pool_and_per_block(store):
    ipam = Ipam(store, "node-a")
    await ipam.assign("h1", ipv4=10)
    out, err, code = await run(store, "show")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "| GROUPING | CIDR" in lines[1]
    [row] = [line for line in lines if "IP Pool" in line]
    assert "10.244.0.0/24" in row and "| 256 " in row and "10 (4%)" in row and "246 (96%)" in row
    out, _, _ = await run(store, "show", "--show-blocks")
    block_rows = [line for line in out.splitlines() if line.startswith("| Block")]
    assert len(block_rows) == 2
    assert any("8 (100%)" in r for r in block_rows) and any("2 (25%)" in r for r in block_rows)
    out, _, _ = await run(store, "show", "--show-blocks", "-o", "json")
    rows = json.loads(out)
    assert [r["grouping"] for r in rows] == ["IP Pool", "Block", "Block"]
    assert sum(r["inUse"] for r in rows if r["grouping"] == "Block") == 10


async def test_show_ip_names_the_holder_or_says_it_is_free(store):
    [a] = await Ipam(store, "node-a").assign("k8s-pod-network.c1", attrs={"pod": "web"})
    out, _, code = await run(store, "show", "--ip", str(a))
    assert code == 0
    assert f"IP {a} is in use" in out
    assert "Handle: k8s-pod-network.c1" in out
    assert "pod: web" in out and "node: node-a" in out
    assert "Block affinity: host:node-a" in out
    out, _, _ = await run(store, "show", "--ip", "10.244.0.200")
    assert out == "IP 10.244.0.200 is not currently assigned"
    out, _, _ = await run(store, "show", "--ip", "10.99.0.1")
    assert "in no IP pool" in out
    with pytest.raises(IpamError, match="'bogus' is not an IP address"):
        await run(store, "show", "--ip", "bogus")


def test_main_turns_an_ipam_error_into_exit_1(capsys, monkeypatch):
    from bgpd.cli.main import main

    monkeypatch.setenv("ROUTEMESH_DATASTORE", "memory://")
    assert main(["ipam", "show", "--ip", "bogus"]) == 1
    assert capsys.readouterr().err.strip() == "routemesh: 'bogus' is not an IP address"


async def test_check_is_clean_then_finds_a_double_allocation_and_exits_non_zero(store):
    ipam = Ipam(store, "node-a")
    first, *_ = await ipam.assign("h1", ipv4=3)
    out, _, code = await run(store, "check")
    assert code == 0
    assert "Found 3 allocated IPs (3 unique)." in out
    assert out.endswith("Check complete; found 0 problems.")
    # Corrupt a block the way a lost CAS would: an allocated ordinal also listed as free.
    kv = (await store.list("/routemesh/v1/ipam/blocks/"))[0][0]
    block = Block.from_json(kv.value)
    block.unallocated.append(0)
    await store.put(kv.key, block.to_json())
    out, _, code = await run(store, "check")
    assert code == 1
    assert "is allocated and also listed as free" in out
    # An overlapping second block holding the same address is a double allocation.
    other = Block.new(ipaddress.ip_network(f"{first}/30"), None)
    other.allocate(1, "intruder")
    await store.put(block_key(other.cidr), other.to_json())
    out, _, code = await run(store, "check", "-o", "json")
    report = json.loads(out)
    assert code == 1
    assert report["unique"] == 3 and report["allocated"] == 4
    assert any(f"{first} is allocated 2 times" in d for d in report["doubleAllocations"])


async def test_check_reports_orphans_of_a_node_that_does_not_exist(store):
    await Ipam(store, "ghost").assign("h")
    out, _, code = await run(store, "check")
    assert code == 1
    assert "affine to node ghost, which does not exist" in out


async def test_release_frees_the_address_and_refuses_a_free_one(store):
    [a] = await Ipam(store, "node-a").assign("h")
    out, err, code = await run(store, "release", "--ip", str(a))
    assert (out, err, code) == (f"Successfully released IP address {a}", "", 0)
    out, err, code = await run(store, "release", "--ip", str(a))
    assert code == 1 and err == f"IP address {a} is not assigned"


async def test_configure_sets_strict_affinity_and_max_blocks(store):
    out, _, code = await run(store, "configure", "--strictaffinity=true")
    assert code == 0 and out == "Successfully set StrictAffinity to: true"
    assert (await read_config(store)).strict_affinity is True
    out, _, code = await run(store, "configure", "--max-blocks-per-host", "4")
    assert out == "Successfully set MaxBlocksPerHost to: 4"
    spec = await read_config(store)
    assert spec.strict_affinity is True and spec.max_blocks_per_host == 4
    _, err, code = await run(store, "configure")
    assert code == 2 and "--strictaffinity" in err
    _, err, code = await run(store, "configure", "--max-blocks-per-host", "-1")
    assert code == 2


def test_bad_strictaffinity_value_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["ipam", "configure", "--strictaffinity=maybe"])
    assert info.value.code == 2


def test_main_reports_a_bad_datastore_url(capsys):
    from bgpd.cli.main import main

    assert main(["ipam", "show", "--datastore", "gopher://x"]) == 1
    assert "unknown datastore scheme" in capsys.readouterr().err
