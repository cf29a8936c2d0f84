"""Where IPAM state lives in the datastore: every key IPAM writes, and the resource keys it reads.

IPAM owns the prefix ``/routemesh/v1/ipam/`` and nothing else:

- ``/routemesh/v1/ipam/blocks/<net>-<len>``: one block (``10.244.0.64-26``, ``fd00::40-122``).
  The value is the block document of ``ipam.block`` (JSON): its CIDR, its affinity
  (``"host:<name>"`` or null), the allocation array (one slot per address, holding an index into
  the attribute list or null), the order in which free ordinals are handed out, and the attribute
  list (handle + attrs). Every write of a block is a compare-and-swap on its mod_revision; this
  key is the single source of truth for who holds an address.
- ``/routemesh/v1/ipam/affinity/<host>/<block id>``: the host's index of its affine blocks, so an
  allocation need not read every block. Written after the block is created and deleted after the
  block is deleted; a block affine to a host without this key is adopted on the next claim, a key
  whose block is gone or affine elsewhere is removed by GC.
- ``/routemesh/v1/ipam/handles/<quoted handle>``: the blocks that may hold addresses of the
  handle (JSON ``{"handle": ..., "blocks": [...]}``). A block is added *before* the block write
  that allocates in it, so the record may name too many blocks but never too few; release by
  handle only has to read those blocks.
- ``/routemesh/v1/ipam/hosts/<host>``: written once by a host that keeps a liveness lease, so GC
  knows a missing ``/routemesh/v1/ipam/liveness/<host>`` (the leased key) means "lease expired".

Resources are read where ``bgpd.datastore.resources`` stores them:
``/routemesh/v1/resources/<Kind>/<name>`` (namespaced kinds: ``<Kind>/<namespace>/<name>``).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, unquote

from bgpd.datastore import resources

IPAM_PREFIX = "/routemesh/v1/ipam/"
BLOCKS = IPAM_PREFIX + "blocks/"
AFFINITY = IPAM_PREFIX + "affinity/"
HANDLES = IPAM_PREFIX + "handles/"
HOSTS = IPAM_PREFIX + "hosts/"
LIVENESS = IPAM_PREFIX + "liveness/"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def block_id(cidr: Network) -> str:
    """The key-safe name of a block: the CIDR with '/' turned into '-'."""
    return f"{cidr.network_address}-{cidr.prefixlen}"


def block_cidr(ident: str) -> Network:
    """The CIDR a block id names; ValueError if it is not one."""
    addr, _, length = ident.rpartition("-")
    return ipaddress.ip_network(f"{addr}/{length}")


def block_key(cidr: Network) -> str:
    return BLOCKS + block_id(cidr)


def affinity_prefix(host: str) -> str:
    return AFFINITY + quote(host, safe="") + "/"


def affinity_key(host: str, cidr: Network) -> str:
    return affinity_prefix(host) + block_id(cidr)


def parse_affinity_key(key: str) -> tuple[str, Network]:
    """(host, block CIDR) of an affinity key."""
    host, _, ident = key[len(AFFINITY) :].partition("/")
    return unquote(host), block_cidr(ident)


def handle_key(handle: str) -> str:
    # Handles are CNI container ids plus a network name; quote them so a '/' cannot nest keys.
    return HANDLES + quote(handle, safe="")


def host_key(host: str) -> str:
    return HOSTS + quote(host, safe="")


def liveness_key(host: str) -> str:
    return LIVENESS + quote(host, safe="")


def resource_prefix(kind: str) -> str:
    """Key prefix of every stored resource of ``kind`` (``bgpd.datastore.resources`` layout)."""
    return resources.kind_prefix(resources.resource_class(kind))


def resource_key(kind: str, name: str, namespace: str | None = None) -> str:
    return resources.resource_key(resources.resource_class(kind), name, namespace)
