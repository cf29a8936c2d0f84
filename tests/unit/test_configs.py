"""The files in configs/ are accepted by the tools that consume them, and name real metrics.

systemd-analyze verifies the units, promtool checks the Prometheus config and runs the alert
unit tests, our own parsers load the example bgpd, datastore, resource and CNI files.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from agent.cni import parse_config as parse_cni_config
from bgpd.config import load_config
from bgpd.datastore.url import parse_url
from bgpd.metrics import Metrics
from bgpd.model import load_documents
from tests.lab.require import missing, require_binary

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
UNITS = sorted((CONFIGS / "systemd").glob("*.service"))
PROM = CONFIGS / "prometheus"


def unit_directives(path: Path) -> dict[str, list[str]]:
    """Directive -> values, across sections (our units never repeat a name across sections)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def known_series() -> set[str]:
    """Every sample name our metrics can produce, histogram series included."""
    names: set[str] = set()
    for spec in Metrics().specs():
        names.add(spec.name)
        if spec.type == "histogram":
            names.update(spec.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\broutemesh_[a-z0-9_]+", expr))


# -- systemd -------------------------------------------------------------------------------


def test_units_exist():
    assert [u.name for u in UNITS] == ["routemesh-node.service", "routemesh-rr.service"]


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path):
    analyze = require_binary("systemd-analyze")
    bindir = Path(sys.executable).parent
    for script in ("routemesh", "bgpd"):
        if not (bindir / script).exists():
            missing(f"{bindir / script} not installed (pip install -e . in the venv)")
    # verify checks that ExecStart exists; the units name the installed path, the test
    # points them at this checkout's venv.
    for unit in UNITS:
        text = unit.read_text().replace("/usr/local/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
    res = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # verify exits 0 even for unknown keys; it only warns. Any line about our units is a defect.
    complaints = [
        line
        for line in (res.stdout + res.stderr).splitlines()
        if "routemesh" in line or str(tmp_path) in line
    ]
    assert res.returncode == 0 and complaints == [], res.stdout + res.stderr


def test_systemd_analyze_verify_does_complain_about_a_broken_unit(tmp_path: Path):
    """The check above can fail: a misspelt directive is reported."""
    analyze = require_binary("systemd-analyze")
    bindir = Path(sys.executable).parent
    text = UNITS[1].read_text().replace("/usr/local/bin/", f"{bindir}/")
    (tmp_path / "broken.service").write_text(text.replace("Restart=", "Restrat="))
    res = subprocess.run(
        [analyze, "verify", str(tmp_path / "broken.service")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Restrat" in res.stdout + res.stderr


def test_node_unit_is_notify_with_only_network_capabilities():
    d = unit_directives(CONFIGS / "systemd" / "routemesh-node.service")
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(d["CapabilityBoundingSet"][0].split()) == caps
    assert set(d["AmbientCapabilities"][0].split()) == caps
    assert d["EnvironmentFile"] == ["-/etc/default/routemesh"]
    argv = shlex.split(d["ExecStart"][0])
    assert argv[:3] == ["/usr/local/bin/routemesh", "node", "run"]
    assert d["NoNewPrivileges"] == ["yes"]


def test_rr_unit_runs_bgpd_unprivileged():
    d = unit_directives(CONFIGS / "systemd" / "routemesh-rr.service")
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"]
    assert shlex.split(d["ExecStart"][0])[:3] == [
        "/usr/local/bin/bgpd",
        "-f",
        "/etc/routemesh/rr.toml",
    ]
    assert d["User"] == ["routemesh"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["EnvironmentFile"][0].startswith("-/etc/default/")


def test_environment_files_are_plain_key_value_lines():
    for path in (CONFIGS / "default").iterdir():
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", line), (path.name, line)


def test_commented_datastore_override_is_a_valid_url():
    text = (CONFIGS / "default" / "routemesh").read_text()
    (url,) = re.findall(r"^#ROUTEMESH_DATASTORE=(\S+)$", text, re.M)
    spec = parse_url(url)
    assert spec.scheme == "etcd" and spec.tls and len(spec.endpoints) == 3


# -- example configs -------------------------------------------------------------------------


def test_node_datastore_config_is_etcd_with_tls():
    doc = tomllib.loads((CONFIGS / "node" / "routemesh.toml").read_text())
    spec = parse_url(doc["datastore"])
    assert spec.scheme == "etcd" and spec.tls
    assert spec.cacert and spec.cert and spec.key
    assert len(spec.endpoints) == 3


@pytest.mark.parametrize("name", ["rr1.toml", "rr2.toml"])
def test_rr_pair_configs_load_and_share_a_cluster_id(name: str):
    cfg = load_config(CONFIGS / "rr" / name)
    other = load_config(CONFIGS / "rr" / ("rr2.toml" if name == "rr1.toml" else "rr1.toml"))
    assert cfg.global_.cluster_id == other.global_.cluster_id == "244.0.0.1"
    assert cfg.global_.router_id != other.global_.router_id
    by_addr = {nb.address: nb for nb in cfg.neighbors}
    # The reflectors peer with each other as plain iBGP, and reflect for every node.
    assert not by_addr[other.global_.router_id].route_reflector_client
    clients = [nb for nb in cfg.neighbors if nb.route_reflector_client]
    assert len(clients) >= 3 and all(nb.remote_asn == cfg.global_.asn for nb in clients)
    assert not cfg.fib.enabled


def test_resource_manifests_load_as_calico_v3():
    peers = load_documents((CONFIGS / "resources" / "rr-pair-peers.yaml").read_text(), "rr")
    kinds = [type(d).__name__ for d in peers]
    assert kinds == ["BGPConfiguration", "BGPPeer", "BGPPeer"]
    assert peers[0].spec.node_to_node_mesh_enabled is False
    rr_ips = {str(p.spec.peer_ip) for p in peers[1:]}
    rr_toml = {load_config(CONFIGS / "rr" / f).global_.router_id for f in ("rr1.toml", "rr2.toml")}
    assert rr_ips == rr_toml

    tor = load_documents((CONFIGS / "resources" / "tor-bgppeer.yaml").read_text(), "tor")
    peer, flt = tor
    assert type(peer).__name__ == "BGPPeer" and peer.spec.as_number == 65001
    assert peer.spec.filters == [flt.metadata.name]
    # The password is a reference to a secret, never the secret itself.
    assert "secretKeyRef" in (CONFIGS / "resources" / "tor-bgppeer.yaml").read_text()


def test_cni_conflist_plugin_config_parses():
    conflist = json.loads((CONFIGS / "cni" / "10-routemesh.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["routemesh-cni", "portmap", "bandwidth"]
    # The runtime hands each plugin its entry plus the list's name and cniVersion.
    ours = {
        **conflist["plugins"][0],
        "cniVersion": conflist["cniVersion"],
        "name": conflist["name"],
    }
    conf = parse_cni_config(json.dumps(ours).encode())
    assert conf.version == "1.0.0" and conf.mtu == 1450 and conf.nodename == "node1"
    parse_url(conf.datastore)


# -- Prometheus and Grafana ---------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool")
    return subprocess.run([binary, *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_promtool_check_config_and_rules():
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    res = promtool("check", "rules", "routemesh-alerts.yml")
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_promtool_alert_unit_tests_pass():
    res = promtool("test", "rules", "routemesh-alerts.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_cover_the_issue_and_use_real_metrics():
    doc = yaml.safe_load((PROM / "routemesh-alerts.yml").read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    for name in ("RoutemeshBGPSessionDown", "RoutemeshBGPPrefixesDropped", "RoutemeshFIBOutOfSync"):
        assert name in rules
    known = known_series()
    for name, rule in rules.items():
        used = metric_names(rule["expr"])
        assert used <= known, (name, used - known)
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_grafana_dashboard_is_valid_and_uses_real_metrics():
    dash = json.loads((CONFIGS / "grafana" / "routemesh-dashboard.json").read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    known = known_series()
    used: set[str] = set()
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (area & cells), f"panel {p['title']!r} overlaps another"
        cells |= area
        for target in p.get("targets", []):
            names = metric_names(target["expr"])
            assert names, (p["title"], target["expr"])
            assert names <= known, (p["title"], names - known)
            used |= names
    # Every BGP metric the issue lists is on the dashboard.
    for spec in Metrics(areas=("bgp",)).specs():
        assert spec.name in used, spec.name
