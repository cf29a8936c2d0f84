"""Kubernetes NetworkPolicy translated into Calico rules, as Calico's own converter does:
tier default, order 1000, name `knp.default.<name>`, one Allow rule per peer and protocol."""

from __future__ import annotations

from typing import Any

from bgpd.model.k8s import K8sNetworkPolicy, LabelSelector, NetworkPolicyPeer, NetworkPolicyPort
from bgpd.model.policy import EntityRule, Rule
from policy.selector import All, And, Equals, Has, In, Not, NotIn, Selector

K8S_POLICY_ORDER = 1000.0
K8S_NAME_PREFIX = "knp.default."


def label_selector(sel: LabelSelector | None) -> Selector:
    """A k8s LabelSelector as a Calico selector; an empty one selects everything."""
    if sel is None:
        return All()
    terms: list[Selector] = []
    for key, value in sorted((sel.match_labels or {}).items()):
        terms.append(Equals(key, value))
    for req in sel.match_expressions or ():
        if req.operator == "In":
            terms.append(In(req.key, req.values or ()))
        elif req.operator == "NotIn":
            terms.append(NotIn(req.key, req.values or ()))
        elif req.operator == "Exists":
            terms.append(Has(req.key))
        else:
            terms.append(Not(Has(req.key)))
    if not terms:
        return All()
    return terms[0] if len(terms) == 1 else And(terms)


def _peer_entity(peer: NetworkPolicyPeer | None) -> dict[str, Any]:
    if peer is None:
        return {}
    if peer.ip_block is not None:
        entity: dict[str, Any] = {"nets": [peer.ip_block.cidr]}
        if peer.ip_block.except_:
            entity["not_nets"] = list(peer.ip_block.except_)
        return entity
    entity = {}
    if peer.pod_selector is not None:
        entity["selector"] = str(label_selector(peer.pod_selector))
    if peer.namespace_selector is not None:
        entity["namespace_selector"] = str(label_selector(peer.namespace_selector))
    elif "selector" not in entity:
        entity["selector"] = "all()"
    return entity


def _port_groups(ports: list[NetworkPolicyPort] | None) -> list[tuple[str | None, list[int | str]]]:
    """(protocol, ports) per protocol; an empty port list means every port of the protocol.
    No ports at all is one group matching any protocol."""
    if not ports:
        return [(None, [])]
    groups: dict[str, list[int | str]] = {}
    whole: set[str] = set()
    for p in ports:
        proto = p.protocol or "TCP"
        if p.port is None:
            whole.add(proto)
            continue
        spec: int | str = p.port
        if p.end_port is not None and isinstance(p.port, int) and p.end_port != p.port:
            spec = f"{p.port}:{p.end_port}"
        groups.setdefault(proto, []).append(spec)
    out: list[tuple[str | None, list[int | str]]] = [(proto, []) for proto in sorted(whole)]
    out += [(proto, specs) for proto, specs in sorted(groups.items()) if proto not in whole]
    return out


def _rules(
    peers: list[NetworkPolicyPeer] | None,
    ports: list[NetworkPolicyPort] | None,
    peer_side: str,
) -> list[Rule]:
    rules: list[Rule] = []
    for peer in peers or [None]:
        for proto, specs in _port_groups(ports):
            fields: dict[str, Any] = {"action": "Allow"}
            if proto is not None:
                fields["protocol"] = proto
            peer_entity = _peer_entity(peer)
            port_entity: dict[str, Any] = {"ports": specs} if specs else {}
            if peer_side == "source":
                if peer_entity:
                    fields["source"] = EntityRule(**peer_entity)
                if port_entity:
                    fields["destination"] = EntityRule(**port_entity)
            else:
                merged = {**peer_entity, **port_entity}
                if merged:
                    fields["destination"] = EntityRule(**merged)
            rules.append(Rule(**fields))
    return rules


def translate(policy: K8sNetworkPolicy) -> dict[str, Any]:
    """The Calico policy fields (selector, types, ingress, egress, name) of a k8s policy."""
    spec = policy.spec
    ingress: list[Rule] = []
    for irule in spec.ingress or ():
        ingress += _rules(irule.from_, irule.ports, "source")
    egress: list[Rule] = []
    for erule in spec.egress or ():
        egress += _rules(erule.to, erule.ports, "destination")
    return {
        "name": K8S_NAME_PREFIX + policy.name,
        "selector": label_selector(spec.pod_selector),
        "types": frozenset(spec.effective_policy_types()),
        "ingress": tuple(ingress),
        "egress": tuple(egress),
    }
