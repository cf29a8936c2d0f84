"""The `bgpd.toml` file: parsing and validation into frozen settings, or an error naming the key.

The daemon never starts half-configured: every key is checked before anything binds a socket,
and an unknown key is an error rather than a silent no-op, so a typo cannot disable a feature.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgpd.reflector.filters import ACTIONS, MATCH_OPERATORS, PEER_TYPES, Filter, Rule
from bgpd.speaker.types import FAMILIES_BY_NAME, IPV4_UNICAST, IPV6_UNICAST, Family

DEFAULT_CONTROL_SOCKET = "/run/routemesh/bgpd.sock"
ADD_PATH_MODES = ("send", "receive", "both")
NEXT_HOP_MODES = ("auto", "self", "keep")
MAX_PREFIX_ACTIONS = ("teardown", "warn")
WELL_KNOWN_COMMUNITIES = {
    "no-export": 0xFFFFFF01,
    "no-advertise": 0xFFFFFF02,
    "no-export-subconfed": 0xFFFFFF03,
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file, the key and the reason."""


@dataclass(frozen=True, slots=True)
class NeighborConfig:
    address: str
    remote_asn: int
    families: frozenset[Family]
    passive: bool = False
    password: str | None = field(default=None, repr=False)
    ttl_security: int | None = None
    hold_time: int | None = None
    source_address: str | None = None
    add_path: str | None = None
    port: int = 179
    description: str = ""
    next_hop_ipv4: str | None = None
    next_hop_ipv6: str | None = None
    route_reflector_client: bool = False
    next_hop: str = "auto"
    max_prefix: int | None = None
    max_prefix_action: str = "teardown"
    max_prefix_restart: int = 30
    graceful_restart: bool = False
    import_filter: Filter | None = None
    export_filter: Filter | None = None
    remove_private_as: bool = False


@dataclass(frozen=True, slots=True)
class OriginateConfig:
    family: Family
    prefix: tuple[int, int]
    text: str


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    asn: int
    router_id: str
    listen_addresses: tuple[str, ...] = ("0.0.0.0", "::")
    listen_port: int = 179
    control_socket: str = DEFAULT_CONTROL_SOCKET
    hold_time: int = 90
    connect_retry: float = 2.0
    # Attempts back off (doubling) from connect_retry up to this.
    connect_retry_max: float = 60.0
    next_hop_ipv4: str | None = None
    next_hop_ipv6: str | None = None
    hostname: str = ""
    log_level: str = "info"
    log_format: str = "text"
    cluster_id: str | None = None
    multipath: int = 0
    always_compare_med: bool = False
    client_to_client: bool = True
    graceful_restart_time: int = 120
    select_defer_time: int = 60
    # Prometheus /metrics, /livez, /readyz; port 0 leaves them off (see docs/metrics.md).
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 0


@dataclass(frozen=True, slots=True)
class FibSection:
    """`[fib]`: how (and whether) best paths are written to the kernel."""

    enabled: bool = True
    table: int = 254
    protocol: int = 80
    persist: bool = True
    scan_time: int = 30


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    global_: GlobalConfig
    neighbors: tuple[NeighborConfig, ...]
    originate: tuple[OriginateConfig, ...]
    filters: tuple[Filter, ...] = ()
    fib: FibSection = field(default_factory=FibSection)


class _Checker:
    """Reads typed values out of one TOML table, recording the key path for errors."""

    def __init__(self, source: str, path: str, table: Any) -> None:
        self.source, self.path = source, path
        if not isinstance(table, dict):
            self.fail("", "must be a table")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def fail(self, key: str, reason: str) -> None:
        where = f"{self.path}.{key}" if key and self.path else key or self.path
        raise ConfigError(f"{self.source}: {where}: {reason}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required=False):
        self.used.add(key)
        if key not in self.table:
            if required:
                self.fail(key, "is required")
            return default
        value = self.table[key]
        # bool is an int in Python; a boolean where a number belongs is still a mistake.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            self.fail(key, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(value, kind):
            self.fail(key, f"must be {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def integer(self, key: str, lo: int, hi: int, default: int | None = None, required=False):
        value = self.get(key, int, default, required)
        if value is not None and not lo <= value <= hi:
            self.fail(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def address(self, key: str, default: str | None = None, required=False) -> str | None:
        value = self.get(key, str, default, required)
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.fail(key, f"{value!r} is not an IP address")
        return None

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            self.fail(unknown[0], "unknown key")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", bool: "a boolean", list: "a list"}
    names |= {float: "a number", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _families(chk: _Checker, default: frozenset[Family]) -> frozenset[Family]:
    names = chk.get("families", list)
    if names is None:
        return default
    fams = set()
    for name in names:
        if name not in FAMILIES_BY_NAME:
            chk.fail("families", f"unknown family {name!r} (use ipv4-unicast or ipv6-unicast)")
        fams.add(FAMILIES_BY_NAME[name])
    if not fams:
        chk.fail("families", "must name at least one family")
    return frozenset(fams)


def _filter_ref(chk: _Checker, key: str, filters: dict[str, Filter]) -> Filter | None:
    name = chk.get(key, str)
    if name is None:
        return None
    if name not in filters:
        chk.fail(key, f"no [[filter]] named {name!r}")
    return filters[name]


def _neighbor(
    source: str, index: int, table: Any, gl: GlobalConfig, filters: dict[str, Filter]
) -> NeighborConfig:
    chk = _Checker(source, f"neighbor[{index}]", table)
    address = chk.address("address", required=True)
    assert address is not None
    default_fam = IPV6_UNICAST if ":" in address else IPV4_UNICAST
    add_path = chk.get("add-path", str)
    if add_path is not None and add_path not in ADD_PATH_MODES:
        chk.fail("add-path", f"must be one of {', '.join(ADD_PATH_MODES)}")
    password = chk.get("password", str)
    if password is not None and not 0 < len(password.encode()) <= 80:
        chk.fail("password", "must be 1 to 80 bytes (TCP-MD5 key limit)")
    hold = chk.integer("hold-time", 0, 65535)
    if hold is not None and hold in (1, 2):
        chk.fail("hold-time", "must be 0 or at least 3 seconds (RFC 4271)")
    nb = NeighborConfig(
        address=address,
        remote_asn=chk.integer("remote-asn", 1, 4294967295, required=True),
        families=_families(chk, frozenset({default_fam})),
        passive=chk.get("passive", bool, False),
        password=password,
        ttl_security=chk.integer("ttl-security", 1, 254),
        hold_time=hold,
        source_address=chk.address("source-address"),
        add_path=add_path,
        port=chk.integer("port", 1, 65535, 179),
        description=chk.get("description", str, ""),
        next_hop_ipv4=chk.address("next-hop-ipv4"),
        next_hop_ipv6=chk.address("next-hop-ipv6"),
        route_reflector_client=chk.get("route-reflector-client", bool, False),
        next_hop=_choice(chk, "next-hop", NEXT_HOP_MODES, "auto"),
        max_prefix=chk.integer("max-prefix", 1, 4294967295),
        max_prefix_action=_choice(chk, "max-prefix-action", MAX_PREFIX_ACTIONS, "teardown"),
        max_prefix_restart=chk.integer("max-prefix-restart", 0, 86400, 30),
        graceful_restart=chk.get("graceful-restart", bool, False),
        import_filter=_filter_ref(chk, "import-filter", filters),
        export_filter=_filter_ref(chk, "export-filter", filters),
        remove_private_as=chk.get("remove-private-as", bool, False),
    )
    if nb.route_reflector_client and gl.cluster_id is None:
        chk.fail("route-reflector-client", "needs [global] cluster-id (we are not a reflector)")
    if nb.route_reflector_client and nb.remote_asn != gl.asn:
        chk.fail("route-reflector-client", "only an iBGP neighbor can be a reflector client")
    chk.finish()
    return nb


def _choice(chk: _Checker, key: str, choices: tuple[str, ...], default: str) -> str:
    value = chk.get(key, str, default)
    if value not in choices:
        chk.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _community(chk: _Checker, key: str, text: str) -> int:
    if text.lower() in WELL_KNOWN_COMMUNITIES:
        return WELL_KNOWN_COMMUNITIES[text.lower()]
    parts = text.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        hi, lo = int(parts[0]), int(parts[1])
        if hi <= 0xFFFF and lo <= 0xFFFF:
            return (hi << 16) | lo
    chk.fail(key, f"{text!r} is not a community (ASN:VALUE, each 0-65535, or a well-known name)")
    return 0


def _asn_list(chk: _Checker, key: str) -> tuple[int, ...]:
    value = chk.get(key, list, [])
    for asn in value:
        if isinstance(asn, bool) or not isinstance(asn, int) or not 1 <= asn <= 4294967295:
            chk.fail(key, f"must be a list of AS numbers, got {asn!r}")
    return tuple(value)


def _rule(source: str, where: str, table: Any) -> Rule:
    chk = _Checker(source, where, table)
    action = chk.get("action", str, required=True)
    if action not in ACTIONS:
        chk.fail("action", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
    cidr = None
    text = chk.get("cidr", str)
    if text is not None:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            chk.fail("cidr", f"{text!r} is not a network prefix ({err})")
            raise
        cidr = (1 if net.version == 4 else 2, (int(net.network_address), net.prefixlen))
    op = _choice(chk, "match-operator", MATCH_OPERATORS, "In" if cidr else "Equal")
    lo = chk.integer("prefix-length-min", 0, 128)
    hi = chk.integer("prefix-length-max", 0, 128)
    if lo is not None and hi is not None and lo > hi:
        chk.fail("prefix-length-min", f"{lo} is above prefix-length-max {hi}")
    comm = chk.get("community", str)
    peer_type = chk.get("peer-type", str)
    if peer_type is not None and peer_type not in PEER_TYPES:
        chk.fail("peer-type", f"must be one of {', '.join(PEER_TYPES)}, got {peer_type!r}")
    add = chk.get("add-community", (str, list))
    adds = [add] if isinstance(add, str) else list(add or [])
    for a in adds:
        if not isinstance(a, str):
            chk.fail("add-community", "must be a community string or a list of them")
    rule = Rule(
        action=action,
        cidr=cidr,
        match_operator=op,
        prefix_length_min=lo,
        prefix_length_max=hi,
        community=_community(chk, "community", comm) if comm is not None else None,
        as_path_prefix=_asn_list(chk, "as-path-prefix"),
        peer_type=peer_type,
        add_community=tuple(_community(chk, "add-community", a) for a in adds),
        prepend_as_path=_asn_list(chk, "prepend-as-path"),
        set_local_pref=chk.integer("set-local-pref", 0, 4294967295),
    )
    chk.finish()
    return rule


def _filter(source: str, index: int, table: Any) -> Filter:
    chk = _Checker(source, f"filter[{index}]", table)
    name = chk.get("name", str, required=True)
    if not name:
        chk.fail("name", "must not be empty")
    rules_raw = chk.get("rule", list, [])
    chk.finish()
    rules = tuple(_rule(source, f"filter[{index}].rule[{j}]", t) for j, t in enumerate(rules_raw))
    return Filter(name, rules)


def _fib(source: str, table: Any, gl: GlobalConfig) -> FibSection:
    chk = _Checker(source, "fib", table)
    # A dedicated reflector forwards nothing, so it writes no routes unless told to.
    fib = FibSection(
        enabled=chk.get("enabled", bool, gl.cluster_id is None),
        table=chk.integer("table", 1, 4294967295, 254),
        protocol=chk.integer("protocol", 1, 255, 80),
        persist=chk.get("persist", bool, True),
        scan_time=chk.integer("scan-time", 1, 86400, 30),
    )
    chk.finish()
    return fib


def _global(source: str, table: Any) -> GlobalConfig:
    chk = _Checker(source, "global", table)
    router_id = chk.get("router-id", str, required=True)
    try:
        if ipaddress.ip_address(router_id).version != 4:
            raise ValueError
    except ValueError:
        chk.fail("router-id", f"{router_id!r} is not a dotted-quad IPv4 address")
    listen = chk.get("listen-address", (list, str), ["0.0.0.0", "::"])
    if isinstance(listen, str):
        listen = [listen]
    for addr in listen:
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            chk.fail("listen-address", f"{addr!r} is not an IP address")
    hold = chk.integer("hold-time", 0, 65535, 90)
    if hold in (1, 2):
        chk.fail("hold-time", "must be 0 or at least 3 seconds (RFC 4271)")
    level = chk.get("log-level", str, "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        chk.fail("log-level", "must be debug, info, warning or error")
    fmt = chk.get("log-format", str, "text")
    if fmt not in ("text", "json"):
        chk.fail("log-format", "must be text or json")
    retry = chk.get("connect-retry", (int, float), 2.0)
    if retry <= 0:
        chk.fail("connect-retry", "must be positive")
    retry_max = chk.get("connect-retry-max", (int, float), max(60.0, float(retry)))
    if retry_max < retry:
        chk.fail("connect-retry-max", "must not be below connect-retry")
    gl = GlobalConfig(
        asn=chk.integer("asn", 1, 4294967295, required=True),
        router_id=router_id,
        listen_addresses=tuple(listen),
        listen_port=chk.integer("listen-port", 1, 65535, 179),
        control_socket=chk.get("control-socket", str, DEFAULT_CONTROL_SOCKET),
        hold_time=hold,
        connect_retry=float(retry),
        connect_retry_max=float(retry_max),
        next_hop_ipv4=chk.address("next-hop-ipv4"),
        next_hop_ipv6=chk.address("next-hop-ipv6"),
        hostname=chk.get("hostname", str, ""),
        log_level=level,
        log_format=fmt,
        cluster_id=_cluster_id(chk),
        multipath=chk.integer("multipath", 0, 256, 0),
        always_compare_med=chk.get("always-compare-med", bool, False),
        client_to_client=chk.get("client-to-client-reflection", bool, True),
        graceful_restart_time=chk.integer("graceful-restart-time", 1, 4095, 120),
        select_defer_time=chk.integer("select-defer-time", 1, 3600, 60),
        metrics_address=chk.address("metrics-address", "0.0.0.0") or "0.0.0.0",
        metrics_port=chk.integer("metrics-port", 0, 65535, 0),
    )
    chk.finish()
    return gl


def _cluster_id(chk: _Checker) -> str | None:
    value = chk.get("cluster-id", str)
    if value is None:
        return None
    try:
        if ipaddress.ip_address(value).version != 4:
            raise ValueError
    except ValueError:
        chk.fail("cluster-id", f"{value!r} is not a dotted-quad IPv4 address")
    return value


def _originate(source: str, index: int, table: Any) -> OriginateConfig:
    chk = _Checker(source, f"originate[{index}]", table)
    text = chk.get("prefix", str, required=True)
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        chk.fail("prefix", f"{text!r} is not a network prefix ({err})")
        raise
    chk.finish()
    fam = IPV4_UNICAST if net.version == 4 else IPV6_UNICAST
    return OriginateConfig(fam, (int(net.network_address), net.prefixlen), str(net))


def parse_config(text: str, source: str = "<config>") -> Config:
    """Validate a whole config text; raises ConfigError on the first problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    top = _Checker(source, "", doc)
    gl = _global(source, top.get("global", dict, required=True))
    neighbors_raw = top.get("neighbor", list, [])
    originate_raw = top.get("originate", list, [])
    filters_raw = top.get("filter", list, [])
    fib = _fib(source, top.get("fib", dict, {}), gl)
    top.finish()
    filters: dict[str, Filter] = {}
    for i, t in enumerate(filters_raw):
        flt = _filter(source, i, t)
        if flt.name in filters:
            raise ConfigError(f"{source}: filter[{i}].name: {flt.name!r} is defined twice")
        filters[flt.name] = flt
    neighbors = tuple(_neighbor(source, i, t, gl, filters) for i, t in enumerate(neighbors_raw))
    seen: set[str] = set()
    for i, nb in enumerate(neighbors):
        if nb.address in seen:
            raise ConfigError(f"{source}: neighbor[{i}].address: {nb.address} is listed twice")
        seen.add(nb.address)
    originate = tuple(_originate(source, i, t) for i, t in enumerate(originate_raw))
    return Config(source, gl, neighbors, originate, tuple(filters.values()), fib)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    return parse_config(text, str(p))
