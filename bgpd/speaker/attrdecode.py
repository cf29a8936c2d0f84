"""Decoding an UPDATE's path attribute field under RFC 7606, and the per-session AttrCache that
lets UPDATEs differing only in MED or LOCAL_PREF share the decoding of the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from bgpd.speaker.attributes import (
    ACTION_DISCARD,
    ACTION_NONE,
    ACTION_RESET,
    ACTION_WITHDRAW,
    AS_TRANS,
    ATTR_AS4_AGGREGATOR,
    ATTR_AS4_PATH,
    ATTR_AS_PATH,
    ATTR_LOCAL_PREF,
    ATTR_MED,
    ATTR_MP_REACH_NLRI,
    ATTR_NEXT_HOP,
    ATTR_ORIGIN,
    ATTRIBUTE_TABLE,
    EMPTY_ATTRIBUTES,
    FLAG_EXTENDED_LENGTH,
    FLAG_OPTIONAL,
    FLAG_PARTIAL,
    FLAG_TRANSITIVE,
    MP_TYPES,
    OPTIONAL_TRANSITIVE,
    AsPath,
    Malformed,
    MpReach,
    MpUnreach,
    PathAttributes,
    attribute_name,
    merge_as4_path,
)
from bgpd.speaker.context import CodecContext
from bgpd.speaker.errors import (
    ATTRIBUTE_FLAGS_ERROR,
    MALFORMED_ATTRIBUTE_LIST,
    OPTIONAL_ATTRIBUTE_ERROR,
    UNRECOGNIZED_WELLKNOWN_ATTRIBUTE,
    UPDATE_MESSAGE_ERROR,
    NotificationError,
)

# When several errors occur the strongest approach wins (RFC 7606 §3 g).
_STRENGTH = {ACTION_NONE: 0, ACTION_DISCARD: 1, ACTION_WITHDRAW: 2, ACTION_RESET: 3}

# Field order of PathAttributes' constructor; the decoder fills a list in this order.
_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PathAttributes) if f.init)
_DEFAULTS: tuple[object, ...] = tuple(getattr(EMPTY_ATTRIBUTES, f) for f in _FIELDS)
_SLOT: dict[str, int] = {f: i for i, f in enumerate(_FIELDS)}


# A MED variant is built by setting PathAttributes' slots through their member descriptors: the
# frozen dataclass __init__ goes through object.__setattr__ per field, twice the cost (1.66 vs
# 0.79 us), and this runs once per UPDATE on one-prefix-per-UPDATE feeds.
_new = object.__new__
_ORIGIN = PathAttributes.origin.__set__  # type: ignore[attr-defined]
_AS_PATH = PathAttributes.as_path.__set__  # type: ignore[attr-defined]
_NEXT_HOP = PathAttributes.next_hop.__set__  # type: ignore[attr-defined]
_MED = PathAttributes.med.__set__  # type: ignore[attr-defined]
_LOCAL_PREF = PathAttributes.local_pref.__set__  # type: ignore[attr-defined]
_ATOMIC = PathAttributes.atomic_aggregate.__set__  # type: ignore[attr-defined]
_AGGREGATOR = PathAttributes.aggregator.__set__  # type: ignore[attr-defined]
_COMMUNITIES = PathAttributes.communities.__set__  # type: ignore[attr-defined]
_ORIGINATOR = PathAttributes.originator_id.__set__  # type: ignore[attr-defined]
_CLUSTER_LIST = PathAttributes.cluster_list.__set__  # type: ignore[attr-defined]
_EXT = PathAttributes.ext_communities.__set__  # type: ignore[attr-defined]
_LARGE = PathAttributes.large_communities.__set__  # type: ignore[attr-defined]
_UNKNOWN = PathAttributes.unknown.__set__  # type: ignore[attr-defined]
_ASNS = PathAttributes._asns.__set__  # type: ignore[attr-defined]


def _vary(t: PathAttributes, med: int | None, local_pref: int | None) -> PathAttributes:
    """t with another MED/LOCAL_PREF (every slot set; test_codec_cache checks against replace)."""
    new = _new(PathAttributes)
    _ORIGIN(new, t.origin)
    _AS_PATH(new, t.as_path)
    _NEXT_HOP(new, t.next_hop)
    _MED(new, med)
    _LOCAL_PREF(new, local_pref)
    _ATOMIC(new, t.atomic_aggregate)
    _AGGREGATOR(new, t.aggregator)
    _COMMUNITIES(new, t.communities)
    _ORIGINATOR(new, t.originator_id)
    _CLUSTER_LIST(new, t.cluster_list)
    _EXT(new, t.ext_communities)
    _LARGE(new, t.large_communities)
    _UNKNOWN(new, t.unknown)
    _ASNS(new, t._asns)
    return new


@dataclass(frozen=True, slots=True)
class AttributeBlock:
    """Everything decoded from an UPDATE's attribute field, with the RFC 7606 outcome.

    action is ACTION_NONE, ACTION_WITHDRAW or ACTION_DISCARD; session resets are raised.
    """

    attrs: PathAttributes
    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    action: str = ACTION_NONE
    diagnostics: tuple[str, ...] = ()


class AttrCache:
    """Interns PathAttributes for one session by their raw bytes (MP attributes excluded).

    The key leaves out the value of the first 4-octet MED and LOCAL_PREF: feeds that give
    every prefix its own MED (one UPDATE per prefix) then decode the rest of the set once, and
    each UPDATE pays only for its MED. An entry holds the set decoded first (the template), the
    attribute types it had, and the last variant made from it, so that UPDATEs with identical
    bytes share one object and the RIB can compare attribute sets by identity first.
    Cleared wholesale when full.
    """

    def __init__(self, maxsize: int = 65536) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        # One table per AS-number size: the same bytes mean different paths under asn4 or not.
        self._tables: tuple[dict[bytes, list], dict[bytes, list]] = ({}, {})
        # The last field served from the cache (see `_last_entry`): a field equal to it outside
        # the MED/LOCAL_PREF values is the same set with another MED, found without walking
        # its headers again.
        self._last: tuple | None = None
        # The last one-next-hop tuple handed out: a run of UPDATEs through one next hop
        # shares it rather than holding a tuple per route.
        self.hops: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self._tables[0]) + len(self._tables[1])

    def clear(self) -> None:
        for table in self._tables:
            table.clear()
        self._last = None

    def _put(self, table: dict[bytes, list], key: bytes, entry: list) -> None:
        if len(table) >= self.maxsize:
            table.clear()
        table[key] = entry


def _reset(subcode: int, reason: str, data: bytes = b"") -> NotificationError:
    return NotificationError(UPDATE_MESSAGE_ERROR, subcode, data, reason)


class _State:
    """Mutable scratch for one decode: outcome and diagnostics accumulate here."""

    __slots__ = ("action", "diags")

    def __init__(self) -> None:
        self.action = ACTION_NONE
        self.diags: list[str] = []

    def fail(self, action: str, text: str) -> None:
        if _STRENGTH[action] > _STRENGTH[self.action]:
            self.action = action
        self.diags.append(f"{action}: {text}")


def decode_attributes(
    data: bytes | memoryview,
    ctx: CodecContext,
    *,
    ipv4_nlri: bool = False,
    cache: AttrCache | None = None,
) -> AttributeBlock:
    """Decode an UPDATE's Path Attributes field under RFC 7606.

    ipv4_nlri says the UPDATE's classic NLRI field is non-empty, which makes NEXT_HOP mandatory.
    Session-reset errors raise NotificationError; weaker outcomes come back in `action`.
    Offsets in diagnostics are relative to the start of the attribute field.
    """
    return AttributeBlock(*decode_attribute_field(bytes(data), ctx, ipv4_nlri, cache))


Entry = tuple[int, int, int, int, int]  # flags, type, header offset, value start, value end


_MANDATORY_V4 = frozenset({ATTR_ORIGIN, ATTR_AS_PATH, ATTR_NEXT_HOP})


def decode_attribute_field(
    buf: bytes, ctx: CodecContext, ipv4_nlri: bool, cache: AttrCache | None
) -> tuple[PathAttributes, MpReach | None, MpUnreach | None, str, tuple[str, ...]]:
    """decode_attributes as a plain tuple (attrs, mp_reach, mp_unreach, action, diagnostics):
    the UPDATE hot path, without building an AttributeBlock.

    The fast path walks the headers only, and serves a well-formed field without MP
    attributes straight from the cache: no entry list, no scratch state (fewer objects for the
    collector, which walks a large RIB). Everything else takes the general path.
    """
    if cache is None:
        return _decode_field(buf, ctx, ipv4_nlri, cache)
    end = len(buf)
    med_at = lp_at = -1
    i = 0
    while i < end:
        flags = buf[i]
        vstart = i + 4 if flags & FLAG_EXTENDED_LENGTH else i + 3
        if vstart > end:
            break
        alen = (buf[i + 2] << 8) | buf[i + 3] if flags & FLAG_EXTENDED_LENGTH else buf[i + 2]
        vend = vstart + alen
        if vend > end:
            break
        atype = buf[i + 1]
        if atype == ATTR_MED:
            if alen == 4 and med_at < 0:
                med_at = vstart
        elif atype == ATTR_LOCAL_PREF:
            if alen == 4 and lp_at < 0:
                lp_at = vstart
        elif atype in MP_TYPES:
            break
        i = vend
    if i == end:
        hit = cache._tables[ctx.asn4].get(_cache_key(buf, (), False, med_at, lp_at))
        # A set lacking a mandatory attribute needs its diagnostics: the general path.
        if hit is not None and (hit[3] or not ipv4_nlri):
            cache.hits += 1
            cache._last = _last_entry(ctx.asn4, buf, med_at, lp_at, hit)
            return _from_hit(hit, buf, med_at, lp_at), None, None, ACTION_NONE, ()
    return _decode_field(buf, ctx, ipv4_nlri, cache)


def cached_attributes(
    buf: bytes, start: int, stop: int, asn4: bool, ipv4_nlri: bool, cache: AttrCache
) -> PathAttributes | None:
    """The attribute field buf[start:stop] from the cache when it equals the last field served
    from it outside the MED/LOCAL_PREF values (what `decode_attribute_field` would return as
    its attributes, with no MP attribute, diagnostic or RFC 7606 action); else None.

    Equal length and equal bytes around those values mean the same headers at the same
    offsets, so the same cache entry. Compared in place: nothing is sliced or walked.
    """
    last = cache._last
    if last is None or last[1] != stop - start or last[0] is not asn4:
        return None
    _, _, head, tail, tail_at, mid, mid_at, med_at, lp_at, hit = last
    if not (buf.startswith(head, start) and buf.startswith(tail, start + tail_at)):
        return None
    if mid is not None and not buf.startswith(mid, start + mid_at):
        return None
    if ipv4_nlri and not hit[3]:
        return None
    cache.hits += 1
    # _from_hit, inlined: this runs once per UPDATE on a feed with a MED per route.
    attrs = hit[0]
    if med_at < 0:
        med = attrs.med
    else:
        med_at += start
        med = int.from_bytes(buf[med_at : med_at + 4], "big")
    if lp_at < 0:
        lp = attrs.local_pref
    else:
        lp_at += start
        lp = int.from_bytes(buf[lp_at : lp_at + 4], "big")
    if attrs.med == med and attrs.local_pref == lp:
        return attrs
    last_variant = hit[2]
    if last_variant.med == med and last_variant.local_pref == lp:
        return last_variant
    attrs = hit[2] = _vary(attrs, med, lp)
    return attrs


def _last_entry(
    asn4: bool, buf: bytes, med_at: int, lp_at: int, hit: list
) -> tuple[bool, int, bytes, bytes, int, bytes | None, int, int, int, list]:
    """`AttrCache._last` for the field `buf` served from `hit`: (asn4, length, the bytes
    before the first of the MED/LOCAL_PREF values, the bytes after the last and where they
    start, the bytes between them (or None) and where those start, MED at, LOCAL_PREF at,
    entry). Without either value the whole field is the head and the tail is empty."""
    end = len(buf)
    cuts = sorted(at for at in (med_at, lp_at) if at >= 0)
    if not cuts:
        return (asn4, end, buf, b"", end, None, 0, med_at, lp_at, hit)
    a, b = cuts[0], cuts[-1]
    mid = buf[a + 4 : b] if len(cuts) == 2 else None
    return (asn4, end, buf[:a], buf[b + 4 :], b + 4, mid, a + 4, med_at, lp_at, hit)


def _from_hit(hit: list, buf: bytes, med_at: int, lp_at: int, base: int = 0) -> PathAttributes:
    """The cached set with this UPDATE's MED/LOCAL_PREF (at those offsets from `base`): the
    template, the last variant made from it when that matches, or a new variant."""
    attrs = hit[0]
    if med_at < 0:
        med = attrs.med
    else:
        med_at += base
        med = int.from_bytes(buf[med_at : med_at + 4], "big")
    if lp_at < 0:
        lp = attrs.local_pref
    else:
        lp_at += base
        lp = int.from_bytes(buf[lp_at : lp_at + 4], "big")
    if attrs.med == med and attrs.local_pref == lp:
        return attrs
    last = hit[2]
    if last.med == med and last.local_pref == lp:
        return last
    attrs = hit[2] = _vary(attrs, med, lp)
    return attrs


def _decode_field(
    buf: bytes, ctx: CodecContext, ipv4_nlri: bool, cache: AttrCache | None
) -> tuple[PathAttributes, MpReach | None, MpUnreach | None, str, tuple[str, ...]]:
    """The general path: every RFC 7606 case, MP attributes, and filling the cache."""
    end = len(buf)
    st = _State()
    # Pass 1: split into entries; note the MP attributes and where the MED/LOCAL_PREF values
    # sit (the cache key leaves those out).
    entries: list[Entry] = []
    append = entries.append
    mp_entries: list[Entry] | None = None
    med_at = lp_at = -1
    overrun = False
    i = 0
    while i < end:
        flags = buf[i]
        if flags & FLAG_EXTENDED_LENGTH:
            vstart = i + 4
            if vstart > end:
                st.fail(ACTION_WITHDRAW, f"attribute header truncated at offset {i} (RFC 7606 §4)")
                overrun = True
                break
            alen = (buf[i + 2] << 8) | buf[i + 3]
        else:
            vstart = i + 3
            if vstart > end:
                st.fail(ACTION_WITHDRAW, f"attribute header truncated at offset {i} (RFC 7606 §4)")
                overrun = True
                break
            alen = buf[i + 2]
        atype = buf[i + 1]
        vend = vstart + alen
        if vend > end:
            st.fail(
                ACTION_WITHDRAW,
                f"{attribute_name(atype)} at offset {i} length {alen} overruns the "
                f"attribute field by {vend - end} (RFC 7606 §4)",
            )
            overrun = True
            break
        entry = (flags, atype, i, vstart, vend)
        if atype == ATTR_MED:
            if alen == 4 and med_at < 0:
                med_at = vstart
        elif atype == ATTR_LOCAL_PREF:
            if alen == 4 and lp_at < 0:
                lp_at = vstart
        elif atype in MP_TYPES:
            if mp_entries is None:
                mp_entries = []
            mp_entries.append(entry)
            i = vend
            continue
        append(entry)
        i = vend

    if mp_entries is not None and len(mp_entries) > 1:
        for t in MP_TYPES:
            hits = [e for e in mp_entries if e[1] == t]
            if len(hits) > 1:
                raise _reset(
                    MALFORMED_ATTRIBUTE_LIST,
                    f"{attribute_name(t)} repeated at offset {hits[1][2]} (RFC 7606 §3 g)",
                )

    attrs: PathAttributes | None = None
    seen: frozenset[int] = frozenset()
    table: dict[bytes, list] | None = None
    key = b""
    if cache is not None and not overrun:
        table = cache._tables[ctx.asn4]
        key = _cache_key(buf, entries, mp_entries is not None, med_at, lp_at)
        hit = table.get(key)
        if hit is None:
            cache.misses += 1
        else:
            cache.hits += 1
            attrs = _from_hit(hit, buf, med_at, lp_at)
            seen = hit[1]

    if attrs is None:
        attrs, seen = _decode_entries(buf, entries, ctx, st)
        if table is not None and st.action == ACTION_NONE:
            attrs.asns()  # once here, shared by every MED variant of this set
            # [template, attribute types present, last variant, has ORIGIN/AS_PATH/NEXT_HOP]
            entry = [attrs, seen, attrs, seen >= _MANDATORY_V4]
            cache._put(table, key, entry)  # type: ignore[union-attr]

    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    if mp_entries is not None:
        mp_reach, mp_unreach = _decode_mp(buf, mp_entries, ctx, st)

    if overrun and not ipv4_nlri and mp_entries is None:
        # RFC 7606 §3 j and §5: treat-as-withdraw needs the NLRI located; with a broken list and
        # no NLRI we cannot know what an unparsed MP_REACH would have carried.
        raise _reset(MALFORMED_ATTRIBUTE_LIST, "; ".join(st.diags) or "attribute list overrun")
    if not overrun and (ipv4_nlri or (mp_reach is not None and mp_reach[2])):
        # RFC 7606 §3 d: a missing well-known attribute is treat-as-withdraw, not a reset.
        if ATTR_ORIGIN not in seen:
            st.fail(ACTION_WITHDRAW, "missing well-known ORIGIN")
        if ATTR_AS_PATH not in seen:
            st.fail(ACTION_WITHDRAW, "missing well-known AS_PATH")
        if ipv4_nlri and ATTR_NEXT_HOP not in seen:
            st.fail(ACTION_WITHDRAW, "missing well-known NEXT_HOP")
    return attrs, mp_reach, mp_unreach, st.action, tuple(st.diags) if st.diags else ()


def _cache_key(
    buf: bytes, entries: Sequence[Entry], has_mp: bool, med_at: int, lp_at: int
) -> bytes:
    """The non-MP attribute bytes without the 4-octet MED and LOCAL_PREF values.

    Unambiguous: the headers stay, and which values are missing follows from them (the first
    MED and the first LOCAL_PREF whose length field says 4), so equal keys mean the attribute
    fields differ in those values only.
    """
    if not has_mp:
        if lp_at < 0:
            return buf if med_at < 0 else buf[:med_at] + buf[med_at + 4 :]
        if med_at < 0:
            return buf[:lp_at] + buf[lp_at + 4 :]
        a, b = (med_at, lp_at) if med_at < lp_at else (lp_at, med_at)
        return buf[:a] + buf[a + 4 : b] + buf[b + 4 :]
    cut = (med_at, lp_at)
    parts = []
    for _, _, off, vstart, vend in entries:
        parts.append(buf[off:vstart] if vstart in cut else buf[off:vend])
    return b"".join(parts)


def _decode_entries(
    buf: bytes, entries: list[Entry], ctx: CodecContext, st: _State
) -> tuple[PathAttributes, frozenset[int]]:
    """The non-MP attributes into a PathAttributes; RFC 7606 outcomes go to st."""
    vals = list(_DEFAULTS)
    unknown: list[tuple[int, int, bytes]] = []
    as4_path: AsPath | None = None
    as4_aggr: tuple[int, int] | None = None
    have_as_path = False
    seen_set: set[int] = set()
    for flags, atype, off, vstart, vend in entries:
        if atype in seen_set:
            # RFC 7606 §3 g: keep the first, drop the rest, carry on.
            st.fail(ACTION_DISCARD, f"duplicate {attribute_name(atype)} at offset {off} discarded")
            continue
        seen_set.add(atype)
        spec = ATTRIBUTE_TABLE.get(atype)
        value = buf[vstart:vend]
        if spec is None:
            if not flags & FLAG_OPTIONAL:
                raise _reset(
                    UNRECOGNIZED_WELLKNOWN_ATTRIBUTE,
                    f"unrecognized well-known attribute {atype} at offset {off}",
                    buf[off:vend],
                )
            if flags & FLAG_TRANSITIVE:
                unknown.append((flags & (OPTIONAL_TRANSITIVE | FLAG_PARTIAL), atype, value))
            continue  # unknown optional non-transitive: quietly dropped (RFC 4271 §5)
        if flags & OPTIONAL_TRANSITIVE != spec.flags:
            # RFC 7606 §3 c: conflicting Optional/Transitive bits make the attribute malformed.
            st.fail(spec.action, f"{spec.name} at offset {off}: flags 0x{flags:02x} conflict")
            continue
        try:
            decoded = spec.decode(value, ctx)
        except Malformed as exc:
            st.fail(spec.action, f"{spec.name} at offset {off}: {exc.reason}")
            continue
        if atype == ATTR_AS4_PATH:
            as4_path = decoded  # type: ignore[assignment]
        elif atype == ATTR_AS4_AGGREGATOR:
            as4_aggr = decoded  # type: ignore[assignment]
        else:
            vals[_SLOT[spec.field]] = decoded  # type: ignore[index]
            if atype == ATTR_AS_PATH:
                have_as_path = True
    if as4_path is not None or as4_aggr is not None:
        _apply_as4(vals, as4_path, as4_aggr, ctx, st, have_as_path)
    if unknown:
        vals[_SLOT["unknown"]] = tuple(unknown)
    attrs = PathAttributes(*vals)  # type: ignore[arg-type]
    if attrs == EMPTY_ATTRIBUTES:
        attrs = EMPTY_ATTRIBUTES  # one object, so UPDATE decoding can test by identity
    return attrs, frozenset(seen_set)


def _decode_mp(
    buf: bytes, mp_entries: list[Entry], ctx: CodecContext, st: _State
) -> tuple[MpReach | None, MpUnreach | None]:
    mp_reach: MpReach | None = None
    mp_unreach: MpUnreach | None = None
    for flags, atype, off, vstart, vend in mp_entries:
        spec = ATTRIBUTE_TABLE[atype]
        if flags & OPTIONAL_TRANSITIVE != spec.flags:
            raise _reset(
                ATTRIBUTE_FLAGS_ERROR,
                f"{spec.name} at offset {off}: flags 0x{flags:02x} conflict",
                buf[off:vend],
            )
        try:
            decoded = spec.decode(buf[vstart:vend], ctx)
        except Malformed as exc:
            # RFC 7606 §3 j / RFC 4760 §7: without the MP NLRI we cannot withdraw; reset.
            raise _reset(
                OPTIONAL_ATTRIBUTE_ERROR, f"{spec.name} at offset {off}: {exc.reason}"
            ) from None
        except NotificationError as exc:
            raise NotificationError(
                exc.code, exc.subcode, exc.data, f"{spec.name} at offset {off}: {exc.reason}"
            ) from None
        if decoded is None:
            st.diags.append(f"{spec.name} at offset {off}: unsupported family ignored")
        elif atype == ATTR_MP_REACH_NLRI:
            mp_reach = decoded  # type: ignore[assignment]
        else:
            mp_unreach = decoded  # type: ignore[assignment]
    return mp_reach, mp_unreach


_AS_PATH_SLOT = _SLOT["as_path"]
_AGGREGATOR_SLOT = _SLOT["aggregator"]


def _apply_as4(
    vals: list[object],
    as4_path: AsPath | None,
    as4_aggr: tuple[int, int] | None,
    ctx: CodecContext,
    st: _State,
    have_as_path: bool,
) -> None:
    if ctx.asn4:
        # RFC 6793 §4.1: a NEW speaker ignores AS4_* from another NEW speaker.
        st.fail(ACTION_DISCARD, "AS4_PATH/AS4_AGGREGATOR from a 4-octet peer discarded")
        return
    aggr = vals[_AGGREGATOR_SLOT]
    if aggr is not None and aggr[0] != AS_TRANS:  # type: ignore[index]
        # §4.2.3: the AGGREGATOR came from a NEW speaker, so AS4_* are stale: ignore both.
        return
    if as4_aggr is not None and aggr is not None:
        vals[_AGGREGATOR_SLOT] = as4_aggr
    if as4_path is not None and have_as_path:
        vals[_AS_PATH_SLOT] = merge_as4_path(vals[_AS_PATH_SLOT], as4_path)  # type: ignore[arg-type]
