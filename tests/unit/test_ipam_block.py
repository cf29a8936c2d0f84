"""The block document: allocation order, explicit assignment, release and its JSON guard rails."""

from __future__ import annotations

import ipaddress
import json

import pytest

from ipam.block import Block
from ipam.errors import AddressInUseError, IpamError, NotAllocatedError

NET = ipaddress.ip_network("10.244.1.0/29")


def test_new_block_hands_out_addresses_in_order_and_records_the_handle():
    block = Block.new(NET, "node-a")
    assert block.host == "node-a"
    assert block.allocate(3, "h1", {"pod": "p"}) == [0, 1, 2]
    assert [block.address(o) for o in block.ordinals_of("h1")] == [
        ipaddress.ip_address("10.244.1.0"),
        ipaddress.ip_address("10.244.1.1"),
        ipaddress.ip_address("10.244.1.2"),
    ]
    assert block.in_use() == 3
    assert block.free_count() == 5
    assert block.problems() == []


def test_allocate_never_takes_skipped_ordinals_and_stops_when_full():
    block = Block.new(NET, None)
    got = block.allocate(10, "h", skip={0, 5})
    assert got == [1, 2, 3, 4, 6, 7]
    assert block.free_count({0, 5}) == 0
    assert block.allocate(1, "h2", skip={0, 5}) == []


def test_released_addresses_go_to_the_back_of_the_queue():
    block = Block.new(NET, "n")
    block.allocate(2, "h1")
    block.release([0])
    # 0 was just freed; the next allocation prefers the never-used addresses first.
    assert block.allocate(1, "h2") == [2]
    assert block.unallocated[-1] == 0


def test_assign_takes_exactly_the_ordinal_and_refuses_another_handle():
    block = Block.new(NET, "n")
    assert block.assign(4, "h1", {}) is True
    assert 4 not in block.unallocated
    assert block.assign(4, "h1", {}) is False  # idempotent for the same handle
    with pytest.raises(AddressInUseError, match=r"10\.244\.1\.4"):
        block.assign(4, "h2", {})


def test_release_of_a_free_address_is_refused_and_changes_nothing():
    block = Block.new(NET, "n")
    block.allocate(1, "h")
    before = block.to_json()
    with pytest.raises(NotAllocatedError, match=r"10\.244\.1\.3"):
        block.release([0, 3])
    assert block.to_json() == before


def test_attributes_are_shared_and_compacted_after_release():
    block = Block.new(NET, "n")
    block.allocate(2, "h1", {"pod": "a"})
    block.allocate(1, "h2", {"pod": "b"})
    assert len(block.attributes) == 2
    block.release(block.ordinals_of("h1"))
    assert len(block.attributes) == 1
    assert block.attribute_of(2).handle == "h2"


def test_json_round_trip_keeps_everything():
    block = Block.new(ipaddress.ip_network("fd00:1::/125"), "n6")
    block.allocate(2, "h", {"namespace": "ns", "pod": "p"})
    block.release([0])
    again = Block.from_json(block.to_json())
    assert again == block


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ({"cidr": "nope"}, "cidr"),
        ({"cidr": "10.0.0.0/30", "allocations": [None]}, "allocations"),
        ({"cidr": "10.0.0.0/30", "allocations": [None] * 4}, "attributes"),
        (
            {"cidr": "10.0.0.0/30", "allocations": [0, None, None, None], "attributes": []},
            "allocations[0]",
        ),
        (
            {
                "cidr": "10.0.0.0/30",
                "allocations": [None] * 4,
                "attributes": [],
                "unallocated": [0, 9],
            },
            "unallocated",
        ),
        (
            {
                "cidr": "10.0.0.0/30",
                "allocations": [None] * 4,
                "attributes": [{"handle": 5}],
                "unallocated": [],
            },
            "attributes[0].handle",
        ),
    ],
)
def test_malformed_documents_raise_an_error_naming_the_field(doc, field):
    raw = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    with pytest.raises(IpamError) as info:
        Block.from_json(raw, "/k")
    assert str(info.value).startswith("/k: ")
    assert field in str(info.value)


def test_problems_name_an_address_both_allocated_and_free():
    block = Block.new(NET, "n")
    block.allocate(1, "h")
    block.unallocated.append(0)
    block.unallocated.remove(5)
    found = block.problems()
    assert any("10.244.1.0 is allocated and also listed as free" in p for p in found)
    assert any("10.244.1.5 is neither allocated nor free" in p for p in found)
