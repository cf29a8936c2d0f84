"""Resources normalised for the compiler: policies (Calico and translated k8s) with their tier
and sort key, profiles, network sets and tiers, plus the labels Calico derives for endpoints
and namespaces."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from bgpd.model import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    K8sNetworkPolicy,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Resource,
    Tier,
)
from bgpd.model.policy import Rule
from policy import k8s
from policy.endpoint import (
    NAMESPACE_LABEL,
    NAMESPACE_PROFILE_PREFIX,
    SERVICE_ACCOUNT_LABEL,
    Endpoint,
)
from policy.selector import Selector, parse

DEFAULT_TIER = "default"
# Calico puts the default tier last unless an operator orders tiers after it.
DEFAULT_TIER_ORDER = 1_000_000.0
NAMESPACE_LABEL_PREFIX = "pcns."
NAMESPACE_NAME_LABEL = "projectcalico.org/name"


def resource_key(res: Resource) -> str:
    """Identity of a resource: kind (k8s policies apart from Calico's), namespace, name."""
    kind = "K8sNetworkPolicy" if isinstance(res, K8sNetworkPolicy) else res.KIND
    return f"{kind}/{res.namespace}/{res.name}" if res.namespace else f"{kind}/{res.name}"


@dataclass(frozen=True, eq=False)
class PolicyEntry:
    key: str
    display: str  # what operators see: "name" (global), "ns/name" (namespaced)
    tier: str
    order: float
    namespace: str | None
    selector: Selector
    namespace_selector: Selector | None
    sa_selector: Selector | None
    types: frozenset[str]
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    apply_on_forward: bool = False
    pre_dnat: bool = False
    do_not_track: bool = False
    fingerprint: str = ""

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.order, self.display)


@dataclass(frozen=True, eq=False)
class ProfileEntry:
    name: str
    labels_to_apply: dict[str, str]
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    fingerprint: str = ""


@dataclass(frozen=True, eq=False)
class NetworkSetEntry:
    key: str
    namespace: str | None
    labels: dict[str, str]
    nets: tuple[str, ...]


@dataclass(frozen=True)
class TierEntry:
    name: str
    order: float
    default_action: str  # "Deny" or "Pass"


def _default_types(ingress: list[Rule] | None, egress: list[Rule] | None) -> frozenset[str]:
    # Calico: Egress alone when only egress rules exist, both when both do, else Ingress.
    if egress and ingress:
        return frozenset({"Ingress", "Egress"})
    if egress:
        return frozenset({"Egress"})
    return frozenset({"Ingress"})


def _order(value: float | None) -> float:
    return math.inf if value is None else float(value)


def policy_entry(res: Resource) -> PolicyEntry:
    """A policy resource (Calico or k8s) as the compiler sees it."""
    fingerprint = res.model_dump_json()
    if isinstance(res, K8sNetworkPolicy):
        t = k8s.translate(res)
        return PolicyEntry(
            key=resource_key(res),
            display=f"{res.namespace}/{t['name']}",
            tier=DEFAULT_TIER,
            order=k8s.K8S_POLICY_ORDER,
            namespace=res.namespace,
            selector=t["selector"],
            namespace_selector=None,
            sa_selector=None,
            types=t["types"],
            ingress=t["ingress"],
            egress=t["egress"],
            fingerprint=fingerprint,
        )
    if not isinstance(res, NetworkPolicy | GlobalNetworkPolicy):
        raise TypeError(f"{res.KIND} is not a policy")
    spec = res.spec
    is_global = isinstance(res, GlobalNetworkPolicy)
    types = frozenset(spec.types) if spec.types else _default_types(spec.ingress, spec.egress)
    return PolicyEntry(
        key=resource_key(res),
        display=res.name if is_global else f"{res.namespace}/{res.name}",
        tier=spec.tier or DEFAULT_TIER,
        order=_order(spec.order),
        namespace=None if is_global else res.namespace,
        selector=parse(spec.selector or ""),
        namespace_selector=(
            parse(spec.namespace_selector)
            if is_global and spec.namespace_selector is not None  # type: ignore[union-attr]
            else None
        ),
        sa_selector=(
            parse(spec.service_account_selector) if spec.service_account_selector else None
        ),
        types=types,
        ingress=tuple(spec.ingress or ()),
        egress=tuple(spec.egress or ()),
        apply_on_forward=bool(getattr(spec, "apply_on_forward", False)),
        pre_dnat=bool(getattr(spec, "pre_dnat", False)),
        do_not_track=bool(getattr(spec, "do_not_track", False)),
        fingerprint=fingerprint,
    )


def profile_entry(res: Profile) -> ProfileEntry:
    return ProfileEntry(
        name=res.name,
        labels_to_apply=dict(res.spec.labels_to_apply or {}),
        ingress=tuple(res.spec.ingress or ()),
        egress=tuple(res.spec.egress or ()),
        fingerprint=res.model_dump_json(),
    )


def network_set_entry(res: NetworkSet | GlobalNetworkSet) -> NetworkSetEntry:
    labels = dict(res.metadata.labels or {})
    if res.namespace:
        labels.setdefault(NAMESPACE_LABEL, res.namespace)
    return NetworkSetEntry(
        key=resource_key(res),
        namespace=res.namespace,
        labels=labels,
        nets=tuple(res.spec.nets or ()),
    )


def tier_entry(res: Tier) -> TierEntry:
    order = DEFAULT_TIER_ORDER if res.spec.order is None else float(res.spec.order)
    return TierEntry(res.name, order, res.spec.default_action or "Deny")


def namespace_labels(namespace: str, profiles: Mapping[str, ProfileEntry]) -> dict[str, str]:
    """A namespace's labels: its `kns.<ns>` profile's labelsToApply (with Calico's `pcns.`
    prefix removed) and `projectcalico.org/name`."""
    labels: dict[str, str] = {}
    prof = profiles.get(NAMESPACE_PROFILE_PREFIX + namespace)
    if prof is not None:
        for key, value in prof.labels_to_apply.items():
            labels[key.removeprefix(NAMESPACE_LABEL_PREFIX)] = value
    labels[NAMESPACE_NAME_LABEL] = namespace
    return labels


def endpoint_labels(ep: Endpoint, profiles: Mapping[str, ProfileEntry]) -> dict[str, str]:
    """Labels selectors see: inherited profile labels, overridden by the endpoint's own, plus
    the namespace and service-account labels Calico adds."""
    labels: dict[str, str] = {}
    for name in ep.profiles:
        prof = profiles.get(name)
        if prof is not None:
            labels.update(prof.labels_to_apply)
    labels.update(ep.labels)
    if ep.namespace is not None:
        labels[NAMESPACE_LABEL] = ep.namespace
    if ep.service_account is not None:
        labels[SERVICE_ACCOUNT_LABEL] = ep.service_account
    return labels
