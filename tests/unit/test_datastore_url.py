"""Datastore URLs and where the choice comes from (flag, environment, config file, default)."""

from __future__ import annotations

import pytest

from bgpd.datastore.etcd import EtcdDatastore
from bgpd.datastore.memory import MemoryDatastore
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.datastore.url import (
    DEFAULT_URL,
    DatastoreSpec,
    DatastoreURLError,
    open_datastore,
    parse_url,
    resolve_url,
)


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        ("memory://", DatastoreSpec("memory")),
        ("sqlite:///var/lib/x/store.db", DatastoreSpec("sqlite", path="/var/lib/x/store.db")),
        ("etcd://10.0.0.1:2379", DatastoreSpec("etcd", endpoints=("10.0.0.1:2379",))),
        ("etcd://a,b:2380", DatastoreSpec("etcd", endpoints=("a:2379", "b:2380"))),
        ("etcd://[fd00::1]:2379", DatastoreSpec("etcd", endpoints=("[fd00::1]:2379",))),
        ("etcds://h:1", DatastoreSpec("etcd", endpoints=("h:1",), tls=True)),
        (
            "etcd://h:1?cacert=/ca.pem&cert=/c.pem&key=/c.key",
            DatastoreSpec(
                "etcd", endpoints=("h:1",), tls=True, cacert="/ca.pem", cert="/c.pem", key="/c.key"
            ),
        ),
        (
            "etcd://h:1?cacert=/ca.pem",
            DatastoreSpec("etcd", endpoints=("h:1",), tls=True, cacert="/ca.pem"),
        ),
    ],
)
def test_parse_url(url, spec):
    assert parse_url(url) == spec


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://x", "unknown datastore scheme 'redis'"),
        ("sqlite://relative.db", "three slashes"),
        ("etcd://", "no etcd endpoint"),
        ("etcd://h:99999", "bad port"),
        ("etcd://h:1?cacert=/a&timeout=3", "unknown parameter 'timeout'"),
        ("etcd://h:1?cert=/c.pem", "cert and key must be given together"),
        ("etcd://h:1?cacert=", "cacert must be given once"),
    ],
)
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(DatastoreURLError, match=message):
        parse_url(url)


def test_credentials_in_an_etcd_url_are_refused_without_echoing_them():
    with pytest.raises(DatastoreURLError) as err:
        parse_url("etcd://root:hunter2@h:2379")
    assert "hunter2" not in str(err.value)


def test_open_datastore_picks_the_backend(tmp_path):
    assert isinstance(open_datastore("memory://"), MemoryDatastore)
    sq = open_datastore(f"sqlite://{tmp_path}/s.db")
    assert isinstance(sq, SqliteDatastore) and sq.path == tmp_path / "s.db"
    assert isinstance(open_datastore("etcd://127.0.0.1:1,127.0.0.1:2"), EtcdDatastore)


def test_resolve_order_flag_env_config_default(tmp_path):
    conf = tmp_path / "routemesh.toml"
    env = {"ROUTEMESH_DATASTORE": "etcd://env:2379"}
    assert resolve_url("memory://", environ=env, config_file=conf) == "memory://"
    assert resolve_url(None, environ=env, config_file=conf) == "etcd://env:2379"
    assert resolve_url(None, environ={}, config_file=conf) == DEFAULT_URL
    conf.write_text('datastore = "sqlite:///srv/x.db"\n')
    assert resolve_url(None, environ={}, config_file=conf) == "sqlite:///srv/x.db"
    conf.write_text("# nothing here\n")
    assert resolve_url(None, environ={}, config_file=conf) == DEFAULT_URL
    conf.write_text("datastore = 3\n")
    with pytest.raises(DatastoreURLError, match="datastore: must be a non-empty URL string"):
        resolve_url(None, environ={}, config_file=conf)
    conf.write_text("datastore = \n")
    with pytest.raises(DatastoreURLError, match=str(conf)):
        resolve_url(None, environ={}, config_file=conf)
