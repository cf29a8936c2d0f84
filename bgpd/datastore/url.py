"""Datastore URLs: which store a command or daemon opens, and from where that choice comes.

``memory://``, ``sqlite:///path/to/store.db``, ``etcd://host:port[,host:port]`` and
``etcds://…?cacert=…&cert=…&key=…`` (any of the three files also means TLS). The choice is
``--datastore``, else ``$ROUTEMESH_DATASTORE``, else ``datastore = "…"`` in
/etc/routemesh/routemesh.toml, else the default SQLite file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from bgpd.datastore.base import Datastore, DatastoreError

DEFAULT_URL = "sqlite:///var/lib/routemesh/store.db"
ENV_VAR = "ROUTEMESH_DATASTORE"
CONFIG_FILE = Path("/etc/routemesh/routemesh.toml")
ETCD_DEFAULT_PORT = 2379
_TLS_PARAMS = ("cacert", "cert", "key")


class DatastoreURLError(DatastoreError):
    """A datastore URL (or the config naming one) is malformed."""


@dataclass(frozen=True)
class DatastoreSpec:
    """A parsed URL: which backend, and its settings."""

    scheme: str  # memory | sqlite | etcd
    path: str | None = None
    endpoints: tuple[str, ...] = ()
    tls: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None


def _endpoint(part: str, url: str) -> str:
    host, port = part, ""
    if part.startswith("["):  # [v6]:port
        end = part.find("]")
        if end < 0:
            raise DatastoreURLError(f"{url}: unterminated IPv6 address in {part!r}")
        host, rest = part[: end + 1], part[end + 1 :]
        if rest and not rest.startswith(":"):
            raise DatastoreURLError(f"{url}: bad endpoint {part!r}")
        port = rest[1:]
    elif ":" in part:
        host, port = part.rsplit(":", 1)
    if not host:
        raise DatastoreURLError(f"{url}: endpoint {part!r} has no host")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise DatastoreURLError(f"{url}: endpoint {part!r} has a bad port")
    return f"{host}:{port or ETCD_DEFAULT_PORT}"


def parse_url(url: str) -> DatastoreSpec:
    """Parse a datastore URL; DatastoreURLError names what is wrong with it."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return DatastoreSpec("memory")
    if scheme == "sqlite":
        if parts.netloc or not parts.path:
            raise DatastoreURLError(
                f"{url}: a SQLite URL is sqlite:///absolute/path (three slashes)"
            )
        return DatastoreSpec("sqlite", path=parts.path)
    if scheme in ("etcd", "etcds"):
        if "@" in parts.netloc:
            # Never echo what sits before the '@': it may be a password.
            raise DatastoreURLError(
                f"{scheme}://…: credentials in the URL are not supported; use client certs"
            )
        if not parts.netloc:
            raise DatastoreURLError(f"{url}: no etcd endpoint (etcd://host:port[,host:port])")
        endpoints = tuple(_endpoint(p.strip(), url) for p in parts.netloc.split(","))
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - set(_TLS_PARAMS))
        if unknown:
            raise DatastoreURLError(
                f"{url}: unknown parameter {unknown[0]!r} (known: {', '.join(_TLS_PARAMS)})"
            )
        files: dict[str, str | None] = {}
        for name in _TLS_PARAMS:
            values = query.get(name)
            if values and (len(values) > 1 or not values[0]):
                raise DatastoreURLError(f"{url}: {name} must be given once, with a file path")
            files[name] = values[0] if values else None
        if (files["cert"] is None) != (files["key"] is None):
            raise DatastoreURLError(f"{url}: cert and key must be given together")
        tls = scheme == "etcds" or any(files.values())
        return DatastoreSpec("etcd", endpoints=endpoints, tls=tls, **files)
    raise DatastoreURLError(
        f"{url!r}: unknown datastore scheme {parts.scheme!r} (memory://, sqlite:///path, "
        "etcd://host:port, etcds://host:port)"
    )


def open_datastore(url: str) -> Datastore:
    """A backend for ``url``. Nothing connects until the first call."""
    spec = parse_url(url)
    if spec.scheme == "memory":
        from bgpd.datastore.memory import MemoryDatastore

        return MemoryDatastore()
    if spec.scheme == "sqlite":
        from bgpd.datastore.sqlite import SqliteDatastore

        assert spec.path is not None
        return SqliteDatastore(spec.path)
    from bgpd.datastore.etcd import EtcdDatastore, EtcdTls

    tls = EtcdTls(ca=spec.cacert, cert=spec.cert, key=spec.key) if spec.tls else None
    return EtcdDatastore(spec.endpoints, tls=tls)


def resolve_url(
    flag: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path = CONFIG_FILE,
) -> str:
    """The datastore URL to use: flag, then environment, then config file, then the default."""
    if flag:
        return flag
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return env[ENV_VAR]
    try:
        text = config_file.read_bytes()
    except FileNotFoundError:
        return DEFAULT_URL
    except OSError as exc:
        raise DatastoreURLError(f"{config_file}: cannot read: {exc.strerror}") from None
    try:
        config = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DatastoreURLError(f"{config_file}: {exc}") from None
    value = config.get("datastore")
    if value is None:
        return DEFAULT_URL
    if not isinstance(value, str) or not value:
        raise DatastoreURLError(f"{config_file}: datastore: must be a non-empty URL string")
    return value
