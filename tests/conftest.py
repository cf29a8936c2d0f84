"""Shared pytest fixtures. Keep this small: helpers live in tests/lab/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lab.etcd import EtcdServer
from tests.lab.netns import Lab
from tests.lab.require import require_netns


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh Lab (namespaces, peers, processes) torn down after the test, pass or fail."""
    require_netns()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A real etcd on free loopback ports (plaintext); `.url`, `.endpoint`, `.restart()`."""
    with EtcdServer() as server:
        yield server


@pytest.fixture
def etcd_tls_server() -> Iterator[EtcdServer]:
    """A real etcd that requires TLS client certificates; `.tls` holds the PEM paths."""
    with EtcdServer(tls=True) as server:
        yield server
