"""One allocation block: its document in the store and the pure operations on it.

A block is the unit a host claims. Its document holds, like Calico's ``AllocationBlock``, one
slot per address (an index into the attribute list, or null when free), the order in which free
ordinals are handed out (released ordinals go to the back, so an address is not reused at once),
and the attribute list (handle plus attrs, shared by the slots that carry the same pair). The
allocator reads a block, changes it here, and writes it back with a compare-and-swap.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipam.errors import AddressInUseError, IpamError, NotAllocatedError
from ipam.keys import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
AFFINITY_HOST = "host:"


@dataclass(frozen=True, slots=True)
class Attribute:
    handle: str | None
    attrs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"handle": self.handle, "attrs": dict(self.attrs)}


@dataclass(slots=True)
class Block:
    cidr: Network
    affinity: str | None
    allocations: list[int | None]
    unallocated: list[int]
    attributes: list[Attribute]

    @classmethod
    def new(cls, cidr: Network, host: str | None) -> Block:
        size = cidr.num_addresses
        return cls(
            cidr=cidr,
            affinity=AFFINITY_HOST + host if host is not None else None,
            allocations=[None] * size,
            unallocated=list(range(size)),
            attributes=[],
        )

    # --- (de)serialisation ------------------------------------------------------------------

    def to_json(self) -> bytes:
        doc = {
            "cidr": str(self.cidr),
            "affinity": self.affinity,
            "allocations": self.allocations,
            "unallocated": self.unallocated,
            "attributes": [a.to_json() for a in self.attributes],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str = "block") -> Block:
        """Parse a stored block; IpamError naming ``where`` and the field if it is malformed."""
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IpamError(f"{where}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise IpamError(f"{where}: not a JSON object")
        try:
            cidr = ipaddress.ip_network(doc["cidr"])
        except (KeyError, TypeError, ValueError):
            raise IpamError(f"{where}: cidr: missing or not a CIDR") from None
        affinity = doc.get("affinity")
        if affinity is not None and not isinstance(affinity, str):
            raise IpamError(f"{where}: affinity: must be a string or null")
        size = cidr.num_addresses
        allocations = doc.get("allocations")
        if not isinstance(allocations, list) or len(allocations) != size:
            raise IpamError(f"{where}: allocations: must be a list of {size} entries")
        attributes_doc = doc.get("attributes")
        if not isinstance(attributes_doc, list):
            raise IpamError(f"{where}: attributes: must be a list")
        attributes = []
        for i, item in enumerate(attributes_doc):
            if not isinstance(item, dict):
                raise IpamError(f"{where}: attributes[{i}]: must be an object")
            handle, attrs = item.get("handle"), item.get("attrs") or {}
            if handle is not None and not isinstance(handle, str):
                raise IpamError(f"{where}: attributes[{i}].handle: must be a string")
            if not isinstance(attrs, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
            ):
                raise IpamError(f"{where}: attributes[{i}].attrs: must map strings to strings")
            attributes.append(Attribute(handle, attrs))
        for i, slot in enumerate(allocations):
            if slot is not None and not (
                isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < len(attributes)
            ):
                raise IpamError(f"{where}: allocations[{i}]: not an attribute index")
        unallocated = doc.get("unallocated")
        if not isinstance(unallocated, list) or not all(
            isinstance(o, int) and not isinstance(o, bool) and 0 <= o < size for o in unallocated
        ):
            raise IpamError(f"{where}: unallocated: must be a list of ordinals below {size}")
        return cls(cidr, affinity, allocations, unallocated, attributes)

    # --- queries ----------------------------------------------------------------------------

    @property
    def host(self) -> str | None:
        """The host this block is affine to, or None."""
        if self.affinity is not None and self.affinity.startswith(AFFINITY_HOST):
            return self.affinity[len(AFFINITY_HOST) :]
        return None

    def address(self, ordinal: int) -> Address:
        return self.cidr.network_address + ordinal

    def ordinal(self, address: Address) -> int:
        if address not in self.cidr:
            raise IpamError(f"{address} is not in block {self.cidr}")
        return int(address) - int(self.cidr.network_address)

    def in_use(self) -> int:
        return sum(1 for slot in self.allocations if slot is not None)

    def is_empty(self) -> bool:
        return all(slot is None for slot in self.allocations)

    def free_count(self, skip: Container[int] = ()) -> int:
        return sum(1 for o in self.unallocated if o not in skip)

    def allocated(self) -> Iterator[tuple[int, Attribute]]:
        """(ordinal, attribute) for every allocated address, in address order."""
        for ordinal, slot in enumerate(self.allocations):
            if slot is not None:
                yield ordinal, self.attributes[slot]

    def attribute_of(self, ordinal: int) -> Attribute | None:
        slot = self.allocations[ordinal]
        return None if slot is None else self.attributes[slot]

    def ordinals_of(self, handle: str) -> list[int]:
        return [o for o, attr in self.allocated() if attr.handle == handle]

    def problems(self) -> list[str]:
        """Inconsistencies that could hand an address out twice or lose it for good."""
        found = []
        free = set()
        for o in self.unallocated:
            if o in free:
                found.append(f"block {self.cidr}: ordinal {o} is listed as free twice")
            free.add(o)
            if self.allocations[o] is not None:
                found.append(
                    f"block {self.cidr}: {self.address(o)} is allocated and also listed as free"
                )
        for o, slot in enumerate(self.allocations):
            if slot is None and o not in free:
                found.append(f"block {self.cidr}: {self.address(o)} is neither allocated nor free")
        return found

    # --- changes ----------------------------------------------------------------------------

    def _attribute_index(self, handle: str | None, attrs: Mapping[str, str] | None) -> int:
        wanted = Attribute(handle, dict(attrs or {}))
        for i, attr in enumerate(self.attributes):
            if attr == wanted:
                return i
        self.attributes.append(wanted)
        return len(self.attributes) - 1

    def allocate(
        self,
        count: int,
        handle: str | None,
        attrs: Mapping[str, str] | None = None,
        skip: Container[int] = (),
    ) -> list[int]:
        """Take up to ``count`` free ordinals (never one in ``skip``) for ``handle``."""
        taken: list[int] = []
        for o in self.unallocated:
            if len(taken) == count:
                break
            if o not in skip and self.allocations[o] is None:
                taken.append(o)
        if not taken:
            return taken
        index = self._attribute_index(handle, attrs)
        chosen = set(taken)
        self.unallocated = [o for o in self.unallocated if o not in chosen]
        for o in taken:
            self.allocations[o] = index
        return taken

    def assign(self, ordinal: int, handle: str | None, attrs: Mapping[str, str] | None) -> bool:
        """Allocate exactly ``ordinal``; False if the handle already holds it.

        AddressInUseError if another handle holds it.
        """
        current = self.attribute_of(ordinal)
        if current is not None:
            if current.handle == handle:
                return False
            raise AddressInUseError(f"{self.address(ordinal)} is already in use")
        self.allocations[ordinal] = self._attribute_index(handle, attrs)
        self.unallocated = [o for o in self.unallocated if o != ordinal]
        return True

    def release(self, ordinals: list[int]) -> None:
        """Free ``ordinals`` (NotAllocatedError if one is free) and drop unused attributes."""
        for o in ordinals:
            if self.allocations[o] is None:
                raise NotAllocatedError(f"{self.address(o)} is not allocated")
        for o in ordinals:
            self.allocations[o] = None
            self.unallocated.append(o)
        self._compact_attributes()

    def _compact_attributes(self) -> None:
        used = sorted({slot for slot in self.allocations if slot is not None})
        if len(used) == len(self.attributes):
            return
        renumber = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[old] for old in used]
        self.allocations = [None if s is None else renumber[s] for s in self.allocations]
