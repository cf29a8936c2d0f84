"""Policy at scale: 1,000 policies, 2,000 endpoints, 10 namespaces. Prints full and
incremental compile and apply times, and proves with a TCP connect that a label change is
enforced by one ipset line and no chain rewrite.

Run: python -m tests.bench.bench_policy   or   pytest -m slow tests/bench/bench_policy.py
Prints `name: value` lines; never asserts a number (DESIGN.md, Performance).
"""

from __future__ import annotations

import time

import pytest

from agent.policy_dataplane import PolicyDataplane, local_runner
from bgpd.model import NetworkPolicy, Profile, Resource
from policy.compiler import PolicyCompiler
from policy.endpoint import Endpoint
from tests.lab.netns import Lab
from tests.lab.require import require_binary, require_netns, require_root
from tests.lab.waiting import wait_for

NAMESPACES = 10
ENDPOINTS = 2000
POLICIES = 1000
APPS = 50
SERVER_PORT = 8080


def resources() -> list[Resource]:
    out: list[Resource] = []
    for n in range(NAMESPACES):
        out.append(
            Profile.model_validate(
                {
                    "metadata": {"name": f"kns.ns{n}"},
                    "spec": {
                        "labelsToApply": {"team": f"t{n % 3}"},
                        "ingress": [{"action": "Allow"}],
                        "egress": [{"action": "Allow"}],
                    },
                }
            )
        )
    per_ns = POLICIES // NAMESPACES
    for i in range(POLICIES):
        n, k = divmod(i, per_ns)
        app = k % APPS
        out.append(
            NetworkPolicy.model_validate(
                {
                    "metadata": {"name": f"p{i}", "namespace": f"ns{n}"},
                    "spec": {
                        "order": k,
                        "selector": f"app == 'app{app}'",
                        "ingress": [
                            {
                                "action": "Allow",
                                "protocol": "TCP",
                                "source": {
                                    "selector": f"role == 'client' && app == 'app{(app + 1) % APPS}'"
                                },
                                "destination": {"ports": [SERVER_PORT, 9000 + k]},
                            },
                            {"action": "Deny", "source": {"nets": [f"198.18.{200 + n}.0/24"]}},
                        ],
                    },
                }
            )
        )
    return out


def endpoints(real: dict[str, tuple[str, str]]) -> list[Endpoint]:
    """Synthetic endpoints; `real` maps endpoint name -> (iface, ip) for the live pair."""
    eps = []
    per_ns = ENDPOINTS // NAMESPACES
    for i in range(ENDPOINTS):
        n, k = divmod(i, per_ns)
        name = f"ep{i}"
        iface, ip = real.get(name, (f"calif{i}", f"10.244.{100 + i // 250}.{i % 250 + 1}"))
        role = "client" if k % 3 == 0 else "server" if k % 3 == 1 else "other"
        eps.append(
            Endpoint.for_pod(name, f"ns{n}", iface, [ip], {"app": f"app{k % APPS}", "role": role})
        )
    return eps


def _build_live(lab: Lab) -> tuple:
    host = lab.netns()
    server_ns, client_ns = lab.netns(), lab.netns()
    # ep1 is app1/server in ns0 (selected by p1, which admits app2 clients); ep2 is app2/other.
    plumbing = {
        "ep1": ("calisrv", "10.244.1.2", server_ns),
        "ep2": ("calicli", "10.244.1.3", client_ns),
    }
    for iface, ip, ns in plumbing.values():
        lab.veth(host, ns, (), f"{ip}/32", name_a=iface, name_b="eth0")
        host.ip("link", "set", iface, "address", "ee:ee:ee:ee:ee:ee")
        host.ip("route", "add", f"{ip}/32", "dev", iface)
        ns.ip("route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        ns.ip("route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        ns.ip("neigh", "add", "169.254.1.1", "lladdr", "ee:ee:ee:ee:ee:ee", "dev", "eth0")
    return host, server_ns, client_ns, {k: (v[0], v[1]) for k, v in plumbing.items()}


CONNECT = (
    "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)"
)


def run(lab: Lab) -> dict[str, float]:
    host, server_ns, client_ns, real = _build_live(lab)
    server_ns.popen(["python3", "-m", "http.server", str(SERVER_PORT), "--bind", "0.0.0.0"])
    wait_for(lambda: server_ns.tcp_listening(SERVER_PORT), timeout=10, what="server")
    res = resources()
    eps = endpoints(real)
    figures: dict[str, float] = {}

    t0 = time.perf_counter()
    compiler = PolicyCompiler(4)
    compiler.set_resources(res)
    compiler.set_endpoints(eps)
    rs = compiler.ruleset()
    t1 = time.perf_counter()
    dp = PolicyDataplane(local_runner(host.name))
    stats = dp.apply(rs)
    t2 = time.perf_counter()
    figures["policy_full_compile_s"] = t1 - t0
    figures["policy_full_apply_s"] = t2 - t1
    figures["policy_full_total_s"] = t2 - t0
    figures["policy_chains"] = len(rs.chains)
    figures["policy_rules"] = sum(len(c) for c in rs.chains.values())
    figures["policy_ipsets"] = len(rs.ipsets)
    figures["policy_full_chains_written"] = len(stats.chains_written)

    def connects() -> bool:
        argv = ["python3", "-c", CONNECT, real["ep1"][1], str(SERVER_PORT)]
        return client_ns.run(argv, check=False, timeout=10).returncode == 0

    before = connects()
    # ep2 becomes a client: it joins the source set of p1's rule and nothing else changes.
    old = next(e for e in eps if e.name == "ep2")
    new = Endpoint.for_pod(
        old.name, old.namespace or "", old.iface, old.ips, {**old.labels, "role": "client"}
    )
    t3 = time.perf_counter()
    compiler.upsert_endpoint(new)
    rs2 = compiler.ruleset()
    t4 = time.perf_counter()
    inc = dp.apply(rs2)
    t5 = time.perf_counter()
    after = wait_for(connects, timeout=5, what="connect after the label change")
    figures["policy_incremental_compile_s"] = t4 - t3
    figures["policy_incremental_apply_s"] = t5 - t4
    figures["policy_incremental_total_s"] = t5 - t3
    figures["policy_incremental_chains_written"] = len(inc.chains_written)
    figures["policy_incremental_ipset_lines"] = inc.ipset_lines
    figures["policy_connect_before"] = float(before)
    figures["policy_connect_after"] = float(bool(after))
    return figures


def _require() -> None:
    require_root()
    require_netns()
    for tool in ("iptables-nft-restore", "ipset"):
        require_binary(tool)


@pytest.mark.slow
def test_policy_scale_label_change_is_one_ipset_line(lab: Lab) -> None:
    _require()
    figures = run(lab)
    for name, value in figures.items():
        print(f"{name}: {value:g}")
    assert figures["policy_connect_before"] == 0.0, "role=other must be refused"
    assert figures["policy_connect_after"] == 1.0
    assert figures["policy_incremental_chains_written"] == 0
    assert figures["policy_incremental_ipset_lines"] == 1


def main() -> None:
    _require()
    with Lab() as lab:
        for name, value in run(lab).items():
            print(f"{name}: {value:g}")


if __name__ == "__main__":
    main()
