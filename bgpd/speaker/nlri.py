"""NLRI prefix lists on the wire: the RFC 4271 / RFC 4760 length-prefixed form, with RFC 7911 path ids."""

from __future__ import annotations

from collections.abc import Iterable

from bgpd.speaker.errors import INVALID_NETWORK_FIELD, UPDATE_MESSAGE_ERROR, NotificationError
from bgpd.speaker.types import AFI_IPV4, AFI_IPV6, NLRI

# Per-width lookup tables, built once so the hot loop does only indexing and one int.from_bytes.
# _SHIFT[width][nbytes]: left shift that turns the significant bytes into a full-width address.
# _MASK[width][plen]: network mask, used to clear host bits a sloppy peer left set (BIRD does the
# same: it masks rather than rejects, so we interoperate with the same peers it does).
_SHIFT: dict[int, tuple[int, ...]] = {
    w: tuple(w - 8 * n for n in range(w // 8 + 1)) for w in (32, 128)
}
_MASK: dict[int, tuple[int, ...]] = {
    w: tuple(((1 << p) - 1) << (w - p) for p in range(w + 1)) for w in (32, 128)
}


def _width(afi: int) -> int:
    if afi == AFI_IPV4:
        return 32
    if afi == AFI_IPV6:
        return 128
    raise ValueError(f"unsupported AFI {afi}")


def _bad(reason: str) -> NotificationError:
    return NotificationError(UPDATE_MESSAGE_ERROR, INVALID_NETWORK_FIELD, b"", reason)


def decode_prefixes(data: bytes | memoryview, afi: int, addpath: bool) -> list[NLRI]:
    """Decode a run of NLRI into (addr, plen, path_id) tuples; path_id is 0 without ADD-PATH.

    Raises NotificationError(UPDATE_MESSAGE_ERROR, INVALID_NETWORK_FIELD) on a prefix length
    beyond the address width or a prefix that overruns the field; the reason names the offset.
    """
    buf = bytes(data)
    end = len(buf)
    width = _width(afi)
    shift = _SHIFT[width]
    mask = _MASK[width]
    from_bytes = int.from_bytes
    out: list[NLRI] = []
    append = out.append
    i = 0
    # Two copies of the loop so the common non-ADD-PATH case pays no per-prefix branch on addpath.
    if not addpath:
        while i < end:
            plen = buf[i]
            if plen > width:
                raise _bad(f"prefix length {plen} > {width} at offset {i}")
            nbytes = (plen + 7) >> 3
            j = i + 1 + nbytes
            if j > end:
                raise _bad(f"prefix /{plen} at offset {i} overruns the field ({end} bytes)")
            addr = from_bytes(buf[i + 1 : j], "big") << shift[nbytes]
            if plen & 7:
                addr &= mask[plen]
            append((addr, plen, 0))
            i = j
        return out
    while i < end:
        if i + 5 > end:
            raise _bad(f"ADD-PATH entry at offset {i} truncated ({end - i} bytes left)")
        path_id = from_bytes(buf[i : i + 4], "big")
        plen = buf[i + 4]
        if plen > width:
            raise _bad(f"prefix length {plen} > {width} at offset {i + 4}")
        nbytes = (plen + 7) >> 3
        j = i + 5 + nbytes
        if j > end:
            raise _bad(f"prefix /{plen} at offset {i + 4} overruns the field ({end} bytes)")
        addr = from_bytes(buf[i + 5 : j], "big") << shift[nbytes]
        if plen & 7:
            addr &= mask[plen]
        append((addr, plen, path_id))
        i = j
    return out


def _entry_table(width: int) -> tuple[tuple[int, int, int, int], ...]:
    """Per prefix length: (plen byte pre-shifted, address shift, entry size, network mask).

    With these an entry is one int (length byte and significant address bytes together)
    turned into bytes by a single to_bytes call, which is what makes encoding cheap.
    """
    rows = []
    for plen in range(width + 1):
        nbytes = (plen + 7) >> 3
        rows.append((plen << (8 * nbytes), width - 8 * nbytes, nbytes + 1, _MASK[width][plen]))
    return tuple(rows)


_ENTRY = {w: _entry_table(w) for w in (32, 128)}


def pack_prefixes(
    nlri: Iterable[NLRI], width: int, addpath: bool, room: int | None = None
) -> list[bytes]:
    """Encode NLRI into runs of at most ``room`` bytes each (one run per UPDATE).

    Host bits beyond the prefix length are masked off: peers such as GoBGP reject them.
    ``room=None`` puts everything in one run. Path ids are written only when addpath is set.
    """
    table = _ENTRY[width]
    limit = room if room is not None else 1 << 62
    extra = 4 if addpath else 0
    runs: list[bytes] = []
    cur: list[bytes] = []
    append = cur.append
    used = 0
    for addr, plen, path_id in nlri:
        if not 0 <= plen <= width:
            raise ValueError(f"prefix length {plen} out of range for a {width}-bit address")
        head, shift, size, mask = table[plen]
        if used + size + extra > limit:
            if not cur:
                raise ValueError("no room for a single prefix in an UPDATE")
            runs.append(b"".join(cur))
            cur = []
            append = cur.append
            used = 0
        if addpath:
            append(
                ((path_id << (8 * size)) | head | ((addr & mask) >> shift)).to_bytes(
                    size + 4, "big"
                )
            )
        else:
            append((head | ((addr & mask) >> shift)).to_bytes(size, "big"))
        used += size + extra
    if cur:
        runs.append(b"".join(cur))
    return runs


def encode_prefixes(nlri: Iterable[NLRI], afi: int, addpath: bool) -> bytes:
    """Encode NLRI tuples back-to-back; path ids are written only when addpath is set."""
    runs = pack_prefixes(nlri, _width(afi), addpath)
    return runs[0] if runs else b""
