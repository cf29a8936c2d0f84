"""`routemesh policy explain` end to end through the command's entry point, on the shared
example manifests plus WorkloadEndpoints written by the test."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bgpd.cli.main import main
from bgpd.datastore.resources import ResourceStore
from bgpd.datastore.url import open_datastore
from bgpd.model import load_documents

# The shared Calico example manifests live next to the checkout, as for test_model_examples.
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"

ENDPOINTS = """
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: pod-a, namespace: ami-a}
spec: {node: n1, interfaceName: calia, ipNetworks: [10.244.1.2/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: pod-b, namespace: ami-b}
spec: {node: n2, interfaceName: calib, ipNetworks: [10.244.2.2/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: pod-m, namespace: bmi}
spec: {node: n2, interfaceName: calim, ipNetworks: [10.244.2.3/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: default, labels: {role: db}}
spec: {node: n1, interfaceName: calidb, ipNetworks: [10.244.1.9/32]}
"""


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    eps = tmp_path / "endpoints.yaml"
    eps.write_text(ENDPOINTS)
    return [
        "-f",
        str(EXAMPLES / "tenant-isolation.yaml"),
        "-f",
        str(EXAMPLES / "k8s-policies.yaml"),
        "-f",
        str(eps),
    ]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["policy", "explain", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_explain_lists_tiers_policies_and_profiles_in_order(capsys, files) -> None:
    rc, out, _ = run(capsys, "ami-a/pod-a", *files)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "endpoint wep/ami-a/pod-a (namespace ami-a, iface calia, ips 10.244.1.2)"
    assert "org=ami" in lines[1]
    first = lines.index(
        "    1. policy allow-within-org-ami (order 100) -> cali-pi-allow-within-org-ami"
    )
    second = lines.index(
        "    2. policy tenants-default-deny (order 1000) -> cali-pi-tenants-default-deny"
    )
    assert (
        lines.index("ingress:")
        < lines.index("  tier default (default action Deny)")
        < first
        < second
    )
    assert "  profile kns.ami-a -> cali-pri-kns.ami-a" in lines
    assert "egress:" in lines and "  no policy selects this endpoint" in lines


def test_explain_names_the_rule_that_allows(capsys, files) -> None:
    rc, out, _ = run(capsys, "pod-a", *files, "--from", "ami-b/pod-b", "--proto", "ICMP")
    assert rc == 0
    assert (
        "flow 10.244.2.2 -> 10.244.1.2 ICMP (ingress of wep/ami-a/pod-a, chain cali-tw-calia):"
        in out
    )
    assert "  ALLOW by policy allow-within-org-ami ingress rule 0" in out


def test_explain_names_the_tier_default_deny(capsys, files) -> None:
    rc, out, _ = run(
        capsys, "pod-a", *files, "--from", "10.244.2.3", "--proto", "TCP", "--port", "80"
    )
    assert rc == 0
    assert "  DENY by tier default default deny: no policy matched" in out


def test_explain_egress_of_a_k8s_policy(capsys, files) -> None:
    rc, out, _ = run(
        capsys, "db", *files, "--to", "198.18.100.7", "--proto", "TCP", "--port", "3306"
    )
    assert rc == 0 and "ALLOW by policy default/knp.default.db-egress egress rule 0" in out
    rc, out, _ = run(
        capsys, "db", *files, "--to", "198.18.100.7", "--proto", "TCP", "--port", "3307"
    )
    assert rc == 0 and "DENY by tier default default deny" in out


def test_unknown_endpoint_exits_2(capsys, files) -> None:
    rc, out, err = run(capsys, "nosuch", *files)
    assert rc == 2 and out == "" and "no endpoint named 'nosuch'" in err


def test_bad_manifest_exits_2_naming_the_field(capsys, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: x}\n"
        "spec:\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [99999]}\n"
    )
    rc, _, err = run(capsys, "x", "-f", str(bad))
    assert rc == 2 and "ports" in err and "bad.yaml" in err


def test_explain_reads_the_datastore_without_f(capsys, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/store.db"
    docs = load_documents((EXAMPLES / "tenant-isolation.yaml").read_text() + "---\n" + ENDPOINTS)

    async def fill() -> None:
        datastore = open_datastore(url)
        try:
            store = ResourceStore(datastore)
            for doc in docs:
                await store.apply(doc)
        finally:
            await datastore.close()

    asyncio.run(fill())
    rc, out, _ = run(capsys, "pod-m", "--datastore", url, "--from", "pod-b", "--proto", "TCP")
    assert rc == 0
    assert "    1. policy allow-within-org-bmi (order 100) -> cali-pi-allow-within-org-bmi" in out
    assert "  DENY by tier default default deny: no policy matched" in out
    rc, out, _ = run(capsys, "pod-b", "--datastore", url, "--from", "pod-a", "--proto", "TCP")
    assert rc == 0 and "ALLOW by policy allow-within-org-ami ingress rule 0" in out


def test_explain_with_an_unreachable_datastore_exits_1(capsys, tmp_path: Path) -> None:
    rc, _, err = run(capsys, "x", "--datastore", "bogus://nowhere")
    assert rc == 1 and "bogus" in err


def test_explain_shows_a_policy_that_could_not_be_rendered(capsys, files, tmp_path: Path) -> None:
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: ghost}\n"
        "spec:\n  order: 1\n  selector: all()\n  ingress:\n  - action: Deny\n    protocol: TCP\n"
        "    destination: {ports: [nosuchport]}\n"
    )
    rc, out, _ = run(capsys, "pod-a", *files, "-f", str(ghost))
    assert rc == 0
    assert (
        "  NOT APPLIED: policy ghost: named port tcp/nosuchport is not exposed by any endpoint"
        in out.splitlines()
    )
    assert "policy ghost (order" not in out
