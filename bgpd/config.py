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

from bgpd.speaker.types import FAMILIES_BY_NAME, IPV4_UNICAST, IPV6_UNICAST, Family

DEFAULT_CONTROL_SOCKET = "/run/routemesh/bgpd.sock"
ADD_PATH_MODES = ("send", "receive", "both")


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
    next_hop_ipv4: str | None = None
    next_hop_ipv6: str | None = None
    hostname: str = ""
    log_level: str = "info"
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    global_: GlobalConfig
    neighbors: tuple[NeighborConfig, ...]
    originate: tuple[OriginateConfig, ...]


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


def _neighbor(source: str, index: int, table: Any, gl: GlobalConfig) -> NeighborConfig:
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
    )
    chk.finish()
    return nb


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
    gl = GlobalConfig(
        asn=chk.integer("asn", 1, 4294967295, required=True),
        router_id=router_id,
        listen_addresses=tuple(listen),
        listen_port=chk.integer("listen-port", 1, 65535, 179),
        control_socket=chk.get("control-socket", str, DEFAULT_CONTROL_SOCKET),
        hold_time=hold,
        connect_retry=float(retry),
        next_hop_ipv4=chk.address("next-hop-ipv4"),
        next_hop_ipv6=chk.address("next-hop-ipv6"),
        hostname=chk.get("hostname", str, ""),
        log_level=level,
        log_format=fmt,
    )
    chk.finish()
    return gl


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
    top.finish()
    neighbors = tuple(_neighbor(source, i, t, gl) for i, t in enumerate(neighbors_raw))
    seen: set[str] = set()
    for i, nb in enumerate(neighbors):
        if nb.address in seen:
            raise ConfigError(f"{source}: neighbor[{i}].address: {nb.address} is listed twice")
        seen.add(nb.address)
    originate = tuple(_originate(source, i, t) for i, t in enumerate(originate_raw))
    return Config(source, gl, neighbors, originate)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from None
    return parse_config(text, str(p))
