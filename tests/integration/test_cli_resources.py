"""The `routemesh` resource verbs as a real process against a real etcd over mutual TLS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bgpd.datastore.etcd import EtcdDatastore, EtcdTls
from bgpd.datastore.resources import PREFIX, strip_store_metadata
from bgpd.model import load_documents, to_dict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = Path("/work/shared/examples")


def routemesh(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    # The URL comes from the environment here, the way an operator's shell would set it.
    env = {**os.environ, "ROUTEMESH_DATASTORE": url}
    return subprocess.run(
        [sys.executable, "-m", "bgpd.cli.main", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored_keys(server) -> list[str]:
    t = server.tls

    async def read() -> list[str]:
        ds = EtcdDatastore(
            [server.endpoint], tls=EtcdTls(str(t.ca), str(t.client_cert), str(t.client_key))
        )
        try:
            kvs, _ = await ds.list(PREFIX)
            return [kv.key for kv in kvs]
        finally:
            await ds.close()

    return asyncio.run(read())


def test_examples_apply_read_back_and_broken_twins_write_nothing_on_etcd(etcd_tls_server):
    url = etcd_tls_server.url
    for broken in sorted((EXAMPLES / "invalid").glob("*.yaml")):
        res = routemesh(url, "apply", "-f", str(broken))
        assert res.returncode == 1, res.stdout
        assert "spec." in res.stderr, res.stderr
    assert stored_keys(etcd_tls_server) == []

    # Identity -> the last version applied (two files both carry BGPConfiguration default).
    expected: dict[tuple[str, str | None, str], dict] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        originals = load_documents(path.read_text(), str(path))
        res = routemesh(url, "apply", "-f", str(path))
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"Successfully applied {len(originals)} ")
        for orig in originals:
            kind = "knp" if orig.API_VERSION == "networking.k8s.io/v1" else orig.KIND
            expected[(kind, orig.namespace, orig.name)] = strip_store_metadata(to_dict(orig))
    assert len(stored_keys(etcd_tls_server)) == len(expected)
    for kind in sorted({k for k, _, _ in expected}):
        got = routemesh(url, "get", kind, "-A", "-o", "yaml")
        assert got.returncode == 0, got.stderr
        back = {
            (kind, r.namespace, r.name): strip_store_metadata(to_dict(r))
            for r in load_documents(got.stdout)
        }
        assert back == {k: v for k, v in expected.items() if k[0] == kind}

    res = routemesh(url, "create", "-f", str(EXAMPLES / "cluster.yaml"))
    assert res.returncode == 1
    assert "resource already exists" in res.stderr
