"""The incremental policy compiler: holds resources and endpoints, keeps which policies select
which endpoint and what each ipset holds, and assembles a `RuleSet` for one IP family.

Each change re-evaluates only what it can affect: an endpoint change re-tests that endpoint
against every policy and set; a policy change re-tests that policy against every endpoint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

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
from policy import layout
from policy.endpoint import Endpoint
from policy.layout import Failsafes, TierPlan, chain_name, iface_ident
from policy.rulegen import RenderError, RuleCompiler
from policy.ruleset import RETURN, Chain, IPSet, Origin, Rule, RuleSet
from policy.selector import Global
from policy.sets import ANY, SetKey, SetMatcher
from policy.view import (
    DEFAULT_TIER,
    DEFAULT_TIER_ORDER,
    NetworkSetEntry,
    PolicyEntry,
    ProfileEntry,
    TierEntry,
    endpoint_labels,
    namespace_labels,
    network_set_entry,
    policy_entry,
    profile_entry,
    resource_key,
    tier_entry,
)

POLICY_KINDS = (NetworkPolicy, GlobalNetworkPolicy, K8sNetworkPolicy)


@dataclass
class Compiled:
    """One policy's or profile's chains, the sets they use and the named ports they need."""

    chains: dict[str, Chain] = field(default_factory=dict)
    sets: dict[SetKey, str] = field(default_factory=dict)
    named_ports: set[tuple[str, str]] = field(default_factory=set)
    problem: str | None = None
    table: str = "filter"


@dataclass
class EndpointChains:
    filter: dict[str, Chain] = field(default_factory=dict)
    tables: dict[str, dict[str, Chain]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    forward: bool = False  # a host endpoint with applyOnForward policies


def _policy_mode(p: PolicyEntry) -> str:
    """The table a policy lives in: raw (doNotTrack), mangle (preDNAT) or filter."""
    return "raw" if p.do_not_track else "mangle" if p.pre_dnat else "filter"


class _NamespaceLabels(Mapping[str, Mapping[str, str]]):
    """Namespace labels looked up lazily from the compiler's profiles."""

    def __init__(self, owner: PolicyCompiler) -> None:
        self.owner = owner

    def __getitem__(self, namespace: str) -> Mapping[str, str]:
        return self.owner.ns_labels(namespace)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _set_ns(key: SetKey) -> str | None:
    return key.scope[1] if key.scope[0] == "ns" else None


def _rid_policy(key: str) -> str:
    return "policy:" + key


def _rid_profile(name: str) -> str:
    return "profile:" + name


class PolicyCompiler:
    """Resources and endpoints in, a RuleSet for one IP family out."""

    def __init__(
        self,
        version: int = 4,
        *,
        node: str | None = None,
        workload_prefix: str = "cali",
        failsafes: Failsafes | None = None,
    ) -> None:
        self.version = version
        self.node = node
        self.workload_prefix = workload_prefix
        self.failsafes = failsafes or Failsafes()
        self.policies: dict[str, PolicyEntry] = {}
        self.profiles: dict[str, ProfileEntry] = {}
        self.netsets: dict[str, NetworkSetEntry] = {}
        self.tiers: dict[str, TierEntry] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._applies: dict[str, set[str]] = {}  # policy key -> endpoint keys it selects
        self._ep_policies: dict[str, set[str]] = {}  # and the reverse
        # Namespaced policies and sets scoped to one namespace only ever see its endpoints.
        self._policies_by_ns: dict[str | None, set[str]] = {}
        self._sets_by_ns: dict[str | None, set[SetKey]] = {}
        # Assembly caches: per-endpoint chains (dropped when the endpoint changes or when any
        # policy, profile or tier does) and per-set members (dropped when a member changes).
        self._gen = 0
        self._cache_token: tuple | None = None
        self._ep_cache: dict[str, EndpointChains] = {}
        self._dirty_eps: set[str] = set()
        self._set_cache: dict[SetKey, IPSet] = {}
        self._compiled: dict[str, Compiled] = {}
        self._last_good: dict[str, Compiled] = {}
        self._set_users: dict[SetKey, set[str]] = {}
        self._matchers: dict[SetKey, SetMatcher] = {}
        self._contrib: dict[SetKey, dict[str, tuple[str, ...]]] = {}
        self._ports: Counter[tuple[str, str]] = Counter()
        self._ns_labels_cache: dict[str, dict[str, str]] = {}
        self._ep_chain_cache: dict[tuple, Chain] = {}

    # --- namespace labels ------------------------------------------------------------------

    def ns_labels(self, namespace: str) -> dict[str, str]:
        labels = self._ns_labels_cache.get(namespace)
        if labels is None:
            labels = namespace_labels(namespace, self.profiles)
            self._ns_labels_cache[namespace] = labels
        return labels

    # --- resources -------------------------------------------------------------------------

    def set_resources(self, resources: Iterable[Resource]) -> None:
        """Replace every policy-related resource; unchanged ones cost one comparison."""
        seen: set[str] = set()
        for res in resources:
            if self.upsert(res):
                seen.add(resource_key(res))
        for key in [k for k in self._resource_keys() if k not in seen]:
            self.delete(key)

    def _resource_keys(self) -> list[str]:
        keys = list(self.policies)
        keys += [f"Profile/{name}" for name in self.profiles]
        keys += list(self.netsets)
        keys += [f"Tier/{name}" for name in self.tiers]
        return keys

    def upsert(self, res: Resource) -> bool:
        """Add or replace one resource; False for kinds policy does not use."""
        if isinstance(res, POLICY_KINDS):
            self._upsert_policy(policy_entry(res))
        elif isinstance(res, Profile):
            self._upsert_profile(profile_entry(res))
        elif isinstance(res, NetworkSet | GlobalNetworkSet):
            self._upsert_netset(network_set_entry(res))
        elif isinstance(res, Tier):
            self.tiers[res.name] = tier_entry(res)
            self._gen += 1
        else:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove a resource by `resource_key`."""
        self._gen += 1
        kind, _, rest = key.partition("/")
        if kind in ("NetworkPolicy", "GlobalNetworkPolicy", "K8sNetworkPolicy"):
            old_policy = self.policies.pop(key, None)
            if old_policy is not None:
                self._policies_by_ns[old_policy.namespace].discard(key)
                for ekey in self._applies.pop(key, ()):
                    self._ep_policies[ekey].discard(key)
                self._drop_compiled(_rid_policy(key))
        elif kind == "Profile":
            old = self.profiles.pop(rest, None)
            if old is not None:
                self._drop_compiled(_rid_profile(rest))
                self._labels_changed(old, None)
        elif kind == "Tier":
            self.tiers.pop(rest, None)
            self._gen += 1
        elif self.netsets.pop(key, None) is not None:
            for set_key in list(self._contrib):
                self._contribute(set_key, key, ())

    def _upsert_policy(self, entry: PolicyEntry) -> None:
        old = self.policies.get(entry.key)
        if old is not None and old.fingerprint == entry.fingerprint:
            return
        self.policies[entry.key] = entry
        self._gen += 1
        self._policies_by_ns.setdefault(entry.namespace, set()).add(entry.key)
        selected = {
            k for k, ep in self.endpoints.items() if self._selects(entry, ep, self._labels[k])
        }
        for ekey in self._applies.get(entry.key, set()) - selected:
            self._ep_policies[ekey].discard(entry.key)
        for ekey in selected:
            self._ep_policies[ekey].add(entry.key)
        self._applies[entry.key] = selected
        self._compile(_rid_policy(entry.key))

    def _upsert_profile(self, entry: ProfileEntry) -> None:
        old = self.profiles.get(entry.name)
        if old is not None and old.fingerprint == entry.fingerprint:
            return
        self.profiles[entry.name] = entry
        self._gen += 1
        self._compile(_rid_profile(entry.name))
        self._labels_changed(old, entry)

    def _labels_changed(self, old: ProfileEntry | None, new: ProfileEntry | None) -> None:
        before = old.labels_to_apply if old else {}
        after = new.labels_to_apply if new else {}
        if before == after:
            return
        name = (old or new).name  # type: ignore[union-attr]
        self._ns_labels_cache.clear()
        ns = name.removeprefix("kns.") if name.startswith("kns.") else None
        for ep in list(self.endpoints.values()):
            if name in ep.profiles or (ns is not None and ep.namespace == ns):
                self._index_endpoint(ep)
        if ns is not None:
            for entry in self.netsets.values():
                if entry.namespace == ns:
                    self._upsert_netset(entry)

    def _upsert_netset(self, entry: NetworkSetEntry) -> None:
        self.netsets[entry.key] = entry
        for key, matcher in self._matchers.items():
            self._contribute(key, entry.key, matcher.netset_members(entry, _NamespaceLabels(self)))

    # --- endpoints -------------------------------------------------------------------------

    def set_endpoints(self, endpoints: Iterable[Endpoint]) -> None:
        new = {ep.key: ep for ep in endpoints}
        for key in [k for k in self.endpoints if k not in new]:
            self.delete_endpoint(key)
        for ep in new.values():
            self.upsert_endpoint(ep)

    def upsert_endpoint(self, ep: Endpoint) -> None:
        if self.endpoints.get(ep.key) == ep:
            return
        self.delete_endpoint(ep.key)
        self.endpoints[ep.key] = ep
        for p in ep.ports:
            self._ports[(p.protocol, p.name)] += 1
        self._index_endpoint(ep)

    def delete_endpoint(self, key: str) -> None:
        ep = self.endpoints.pop(key, None)
        if ep is None:
            return
        self._dirty_eps.add(key)
        for p in ep.ports:
            self._ports[(p.protocol, p.name)] -= 1
        self._labels.pop(key, None)
        for pkey in self._ep_policies.pop(key, ()):
            self._applies[pkey].discard(key)
        for set_key in list(self._contrib):
            self._contribute(set_key, key, ())

    def _index_endpoint(self, ep: Endpoint) -> None:
        self._dirty_eps.add(ep.key)
        labels = endpoint_labels(ep, self.profiles)
        self._labels[ep.key] = labels
        mine = self._ep_policies.setdefault(ep.key, set())
        candidates = self._policies_by_ns.get(None, set())
        if ep.namespace is not None:
            candidates = candidates | self._policies_by_ns.get(ep.namespace, set())
        for pkey in candidates:
            entry = self.policies[pkey]
            if self._selects(entry, ep, labels):
                self._applies[pkey].add(ep.key)
                mine.add(pkey)
            else:
                self._applies[pkey].discard(ep.key)
                mine.discard(pkey)
        nsv = _NamespaceLabels(self)
        keys = self._sets_by_ns.get(None, set())
        if ep.namespace is not None:
            keys = keys | self._sets_by_ns.get(ep.namespace, set())
        for key in keys:
            members = self._matchers[key].endpoint_members(ep, labels, nsv)
            self._contribute(key, ep.key, members)

    def _contribute(self, key: SetKey, who: str, members: tuple[str, ...]) -> None:
        contrib = self._contrib[key]
        if members:
            if contrib.get(who) != members:
                contrib[who] = members
                self._set_cache.pop(key, None)
        elif contrib.pop(who, None) is not None:
            self._set_cache.pop(key, None)

    def _selects(self, p: PolicyEntry, ep: Endpoint, labels: dict[str, str]) -> bool:
        nssel = p.namespace_selector
        if ep.host:
            # Host endpoints are in no namespace: only `namespaceSelector: global()` fits.
            if p.namespace is not None or (nssel is not None and not isinstance(nssel, Global)):
                return False
        else:
            if p.pre_dnat or p.do_not_track:
                return False
            if p.namespace is not None and ep.namespace != p.namespace:
                return False
            if nssel is not None and (
                ep.namespace is None
                or isinstance(nssel, Global)
                or not nssel.evaluate(self.ns_labels(ep.namespace))
            ):
                return False
            if p.sa_selector is not None and (
                ep.service_account is None or not p.sa_selector.evaluate(ep.service_account_labels)
            ):
                return False
        return p.selector.evaluate(labels)

    # --- compiling resources ---------------------------------------------------------------

    @staticmethod
    def _use_set(compiled: Compiled) -> Callable[[SetKey], str]:
        def use(key: SetKey) -> str:
            name = compiled.sets.get(key)
            if name is None:
                name = key.name()
                compiled.sets[key] = name
            return name

        return use

    def _compile(self, rid: str) -> None:
        kind, _, ident = rid.partition(":")
        compiled = Compiled()
        use = self._use_set(compiled)
        try:
            if kind == "policy":
                p = self.policies[ident]
                scope = ("ns", p.namespace) if p.namespace is not None else ANY
                rc = RuleCompiler(self.version, scope, use)  # type: ignore[arg-type]
                compiled.table = _policy_mode(p)
                for direction, rules, ckind in (
                    ("ingress", p.ingress, "pi"),
                    ("egress", p.egress, "po"),
                ):
                    if direction.capitalize() not in p.types:
                        continue
                    chain: list[Rule] = []
                    for i, rule in enumerate(rules):
                        chain += rc.compile(rule, Origin(f"policy {p.display}", direction, i))
                    compiled.chains[chain_name(ckind, p.display)] = tuple(chain)
            else:
                prof = self.profiles[ident]
                rc = RuleCompiler(self.version, ANY, use)
                for direction, rules, ckind in (
                    ("ingress", prof.ingress, "pri"),
                    ("egress", prof.egress, "pro"),
                ):
                    chain = []
                    for i, rule in enumerate(rules):
                        chain += rc.compile(rule, Origin(f"profile {prof.name}", direction, i))
                    compiled.chains[chain_name(ckind, prof.name)] = tuple(chain)
            compiled.named_ports = rc.named_ports
        except RenderError as err:
            compiled = Compiled(problem=str(err))
        self._drop_compiled(rid)
        self._compiled[rid] = compiled
        for key in compiled.sets:
            users = self._set_users.setdefault(key, set())
            if not users:
                self._add_set(key)
            users.add(rid)

    def _drop_compiled(self, rid: str) -> None:
        old = self._compiled.pop(rid, None)
        if old is None:
            return
        for key in old.sets:
            users = self._set_users.get(key)
            if users is None:
                continue
            users.discard(rid)
            last = self._last_good.get(rid)
            if not users and not (last is not None and key in last.sets):
                del self._set_users[key]
                self._matchers.pop(key, None)
                self._sets_by_ns[_set_ns(key)].discard(key)
                self._contrib.pop(key, None)
                self._set_cache.pop(key, None)

    def _add_set(self, key: SetKey) -> None:
        matcher = SetMatcher(key)
        self._matchers[key] = matcher
        self._sets_by_ns.setdefault(_set_ns(key), set()).add(key)
        contrib: dict[str, tuple[str, ...]] = {}
        if key.kind == "nets":
            contrib["nets"] = matcher.static_members()
        else:
            nsv = _NamespaceLabels(self)
            for k, ep in self.endpoints.items():
                members = matcher.endpoint_members(ep, self._labels[k], nsv)
                if members:
                    contrib[k] = members
            for k, entry in self.netsets.items():
                members = matcher.netset_members(entry, nsv)
                if members:
                    contrib[k] = members
        self._contrib[key] = contrib
        self._set_cache.pop(key, None)

    # --- assembly --------------------------------------------------------------------------

    def _effective(self, rid: str, problems: dict[str, str]) -> Compiled | None:
        """The compiled form to apply: current if renderable, else the last good one."""
        compiled = self._compiled.get(rid)
        if compiled is None:
            return None
        problem = compiled.problem
        if problem is None:
            missing = sorted(np for np in compiled.named_ports if self._ports[np] <= 0)
            if missing:
                names = ", ".join(f"{proto.lower()}/{name}" for proto, name in missing)
                problem = f"named port {names} is not exposed by any endpoint"
        if problem is None:
            self._last_good[rid] = compiled
            return compiled
        problems[rid.partition(":")[2]] = problem
        return self._last_good.get(rid)

    def tier_plans(
        self, ep_key: str, direction: str, included: dict[str, Compiled], mode: str = "filter"
    ) -> list[TierPlan]:
        """The tiers and policies that apply to an endpoint in one direction, in order.

        `mode` picks the policies: "filter" (normal), "forward" (applyOnForward), "raw"
        (doNotTrack) or "mangle" (preDNAT). Untracked and pre-DNAT tiers never default-deny:
        traffic no such policy decides goes on to normal policy, as in Calico."""
        by_tier: dict[str, list[PolicyEntry]] = {}
        ckind = "pi" if direction == "ingress" else "po"
        for pkey in self._ep_policies.get(ep_key, ()):
            p = self.policies[pkey]
            if direction.capitalize() not in p.types or _rid_policy(pkey) not in included:
                continue
            if _policy_mode(p) != ("filter" if mode == "forward" else mode):
                continue
            if mode == "forward" and not p.apply_on_forward:
                continue
            by_tier.setdefault(p.tier, []).append(p)
        plans = []
        for tier in sorted(by_tier, key=self._tier_sort_key):
            entry = self.tiers.get(tier)
            action = entry.default_action if entry else "Deny"
            policies = sorted(by_tier[tier], key=lambda p: p.sort_key)
            plans.append(
                TierPlan(
                    tier,
                    "Pass" if mode in ("raw", "mangle") else action,
                    tuple((p.display, chain_name(ckind, p.display)) for p in policies),
                )
            )
        return plans

    def _tier_sort_key(self, name: str) -> tuple[float, str]:
        entry = self.tiers.get(name)
        if entry is not None:
            return (entry.order, name)
        return (DEFAULT_TIER_ORDER if name == DEFAULT_TIER else float("inf"), name)

    def included(self, problems: dict[str, str] | None = None) -> dict[str, Compiled]:
        problems = {} if problems is None else problems
        out: dict[str, Compiled] = {}
        for rid in self._compiled:
            eff = self._effective(rid, problems)
            if eff is not None:
                out[rid] = eff
        return out

    def policies_of(self, ep_key: str) -> set[str]:
        """Keys of the policies whose selectors pick this endpoint, applied or not."""
        return set(self._ep_policies.get(ep_key, ()))

    def is_local(self, ep: Endpoint) -> bool:
        """Endpoints of other nodes feed ipsets only; local ones also get chains."""
        return self.node is None or ep.node is None or ep.node == self.node

    def ruleset(self) -> RuleSet:
        """Every chain and ipset this family needs now. Deterministic: same state, equal set."""
        rs = RuleSet(self.version)
        included = self.included(rs.problems)
        used: set[str] = set()
        token = (self._gen, frozenset(included))
        if token != self._cache_token:
            self._ep_cache.clear()
            self._cache_token = token
        for key in self._dirty_eps:
            self._ep_cache.pop(key, None)
        self._dirty_eps.clear()
        # An endpoint without an interface (yet) has no chains, but still fills ipsets.
        local = [ep for ep in self.endpoints.values() if self.is_local(ep) and ep.iface]
        wl = [ep for ep in local if not ep.host]
        heps = [ep for ep in local if ep.host]
        forward_heps = []
        raw_heps: list[Endpoint] = []
        mangle_heps: list[Endpoint] = []
        for ep in local:
            cached = self._ep_cache.get(ep.key)
            if cached is None:
                cached = self._ep_cache[ep.key] = self._endpoint_chains(ep, included)
            rs.chains.update(cached.filter)
            for table, chains in cached.tables.items():
                rs.tables.setdefault(table, {}).update(chains)
                (raw_heps if table == "raw" else mangle_heps).append(ep)
            used.update(cached.used)
            if cached.forward:
                forward_heps.append(ep)
        rs.chains[layout.FROM_WL] = layout.dispatch(wl, "in", "fw", catch_all=True)
        rs.chains[layout.TO_WL] = layout.dispatch(wl, "out", "tw", catch_all=True)
        if heps:
            rs.chains[layout.FROM_HEP] = layout.dispatch(heps, "in", "fh", catch_all=False)
            rs.chains[layout.TO_HEP] = layout.dispatch(heps, "out", "th", catch_all=False)
        if forward_heps:
            rs.chains[layout.FROM_HEP_FWD] = layout.dispatch(
                forward_heps, "in", "fhfw", catch_all=False
            )
            rs.chains[layout.TO_HEP_FWD] = layout.dispatch(
                forward_heps, "out", "thfw", catch_all=False
            )
        rs.chains.update(
            layout.top_chains(
                self.workload_prefix,
                self.failsafes,
                bool(heps),
                bool(forward_heps),
                self.version,
                have_untracked=bool(raw_heps),
            )
        )
        if raw_heps:
            rs.tables["raw"].update(layout.raw_chains(self.failsafes, raw_heps))
        if mangle_heps:
            rs.tables["mangle"].update(layout.mangle_chains(self.failsafes, mangle_heps))
        set_keys: dict[str, SetKey] = {}
        for compiled in included.values():
            names = [n for n in compiled.chains if n in used]
            if not names:
                continue
            target = rs.chains if compiled.table == "filter" else rs.tables[compiled.table]
            for name in names:
                target[name] = compiled.chains[name]
            for key, set_name in compiled.sets.items():
                set_keys[set_name] = key
        for set_name, key in sorted(set_keys.items()):
            ipset = self._set_cache.get(key)
            if ipset is None:
                contrib = self._contrib.get(key)
                if contrib is None:  # kept alive only by a last-good version
                    self._add_set(key)
                    contrib = self._contrib[key]
                members = frozenset(m for ms in contrib.values() for m in ms)
                ipset = self._set_cache[key] = IPSet(set_name, key.set_type, self.version, members)
            rs.ipsets[set_name] = ipset
        return rs

    def _endpoint_chains(self, ep: Endpoint, included: dict[str, Compiled]) -> EndpointChains:
        """One endpoint's chains in every table, and the policy/profile chains they use."""
        out = EndpointChains()
        if not ep.host:
            for direction, kind in (("ingress", "tw"), ("egress", "fw")):
                out.filter[chain_name(kind, ep.iface)] = self._endpoint_chain(
                    ep, direction, included, out.used
                )
            return out
        ident = iface_ident(ep.iface)
        for direction, kind in (("ingress", "fh"), ("egress", "th")):
            out.filter[chain_name(kind, ident)] = self._endpoint_chain(
                ep, direction, included, out.used
            )
        modes = {
            _policy_mode(self.policies[k]) + ("+fwd" if self.policies[k].apply_on_forward else "")
            for k in self._ep_policies.get(ep.key, ())
        }
        if "filter+fwd" in modes:
            out.forward = True
            for direction, kind in (("ingress", "fhfw"), ("egress", "thfw")):
                out.filter[chain_name(kind, ident)] = self._endpoint_chain(
                    ep, direction, included, out.used, "forward"
                )
        if "raw+fwd" in modes:
            raw = out.tables.setdefault("raw", {})
            for direction, kind in (("ingress", "fh"), ("egress", "th")):
                raw[chain_name(kind, ident)] = self._endpoint_chain(
                    ep, direction, included, out.used, "raw"
                )
        if "mangle+fwd" in modes:
            out.tables.setdefault("mangle", {})[chain_name("fh", ident)] = self._endpoint_chain(
                ep, "ingress", included, out.used, "mangle"
            )
        return out

    def _endpoint_chain(
        self,
        ep: Endpoint,
        direction: str,
        included: dict[str, Compiled],
        used: set[str],
        mode: str = "filter",
    ) -> Chain:
        tiers = self.tier_plans(ep.key, direction, included, mode)
        pkind = "pri" if direction == "ingress" else "pro"
        profiles = []
        for name in ep.profiles:
            chain = chain_name(pkind, name) if _rid_profile(name) in included else None
            profiles.append((name, chain))
        for plan in tiers:
            used.update(chain for _, chain in plan.policies)
        if mode != "filter":
            sig: tuple = (mode, tuple(tiers))
            end = Rule((), RETURN, Origin(f"host endpoint {mode}", note="no policy decided"))
            build = lambda: layout.endpoint_chain(tiers, (), use_profiles=False, end=end)  # noqa: E731
        else:
            used.update(chain for _, chain in profiles if chain is not None)
            sig = (tuple(tiers), tuple(profiles))
            build = lambda: layout.endpoint_chain(tiers, profiles)  # noqa: E731
        chain = self._ep_chain_cache.get(sig)
        if chain is None:
            if len(self._ep_chain_cache) > 10_000:
                self._ep_chain_cache.clear()
            chain = build()
            self._ep_chain_cache[sig] = chain
        return chain
