"""The BGP decision process (RFC 4271 §9.1.2.2 plus the RFC 4456 tie-breaks) as a chain of steps.

Each step takes the paths still in the running and keeps only those it prefers; the step that
leaves a single path is the reason the winner won. One function per step, each tested alone.

Next-hop reachability is the first step. It asks `DecisionConfig.nexthop_reachable(family, nh)`
(default: always True). When reachability changes, the owner re-runs the decision for every
prefix (`LocRib.mark_all()` then decide), which is how the FIB's view of the underlay feeds in.

Multipath: the paths still equal after the eBGP-over-iBGP step (the last step before the pure
tie-breaks) form the multipath set, best first, at most `multipath` long (0 or 1 = best only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bgpd.speaker.rib import ONLY_PATH, Outcome, Path
from bgpd.speaker.types import IPV4_UNICAST, Family

DEFAULT_LOCAL_PREF = 100


def _always(family: Family, nh: int) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class DecisionConfig:
    """What the decision depends on besides the paths themselves."""

    router_id: int = 0
    always_compare_med: bool = False
    multipath: int = 0
    family: Family = IPV4_UNICAST
    nexthop_reachable: Callable[[Family, int], bool] = field(default=_always)


Step = Callable[[list[Path], DecisionConfig], list[Path]]


def local_pref(p: Path) -> int:
    lp = p.attrs.local_pref
    # eBGP-learned paths carry no LOCAL_PREF (it is stripped on import): they get the default.
    return DEFAULT_LOCAL_PREF if lp is None else lp


def neighbor_as(p: Path) -> int:
    """The AS a path entered ours from; 0 (our own AS) for local and confed-only paths."""
    first = p.attrs.first_asn()
    return first if first is not None else 0


def originator(p: Path, cfg: DecisionConfig) -> int:
    """RFC 4456 §9: ORIGINATOR_ID stands in for the BGP Identifier of the advertising peer."""
    if p.attrs.originator_id is not None:
        return p.attrs.originator_id
    return cfg.router_id if p.source.local else p.source.router_id


def _keep_best(paths: list[Path], key: Callable[[Path], int]) -> list[Path]:
    keys = [key(p) for p in paths]
    best = min(keys)
    return [p for p, k in zip(paths, keys, strict=True) if k == best]


# --- the steps, in decision order ---------------------------------------------------------------


def step_nexthop(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.1: a path whose NEXT_HOP cannot be resolved is not a candidate (local always is)."""
    reach = cfg.nexthop_reachable
    if reach is _always:
        return paths
    return [p for p in paths if p.source.local or p.nh is None or reach(cfg.family, p.nh)]


def step_local_pref(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.1: highest degree of preference (LOCAL_PREF)."""
    return _keep_best(paths, lambda p: -local_pref(p))


def step_local_origin(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """A route we originate beats an equal one learned from a peer (GoBGP, BIRD do the same)."""
    return _keep_best(paths, lambda p: 0 if p.source.local else 1)


def step_as_path(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 a: shortest AS_PATH; an AS_SET counts 1, confederation segments count 0."""
    return _keep_best(paths, lambda p: p.attrs.as_path_length())


def step_origin(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 b: lowest ORIGIN (IGP < EGP < INCOMPLETE)."""
    return _keep_best(paths, lambda p: p.attrs.origin if p.attrs.origin is not None else 2)


def step_med(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 c: drop a path when one from the same neighbour AS has a lower MED.

    A missing MED is 0. With always_compare_med every path counts as the same neighbour AS.
    """

    def med(p: Path) -> int:
        return p.attrs.med or 0

    lowest: dict[int, int] = {}
    for p in paths:
        nas = 0 if cfg.always_compare_med else neighbor_as(p)
        m = med(p)
        if nas not in lowest or m < lowest[nas]:
            lowest[nas] = m
    return [p for p in paths if med(p) == lowest[0 if cfg.always_compare_med else neighbor_as(p)]]


def step_ebgp(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 d: prefer paths learned over eBGP to those learned over iBGP."""
    return _keep_best(paths, lambda p: 0 if p.source.ebgp else 1)


def step_router_id(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 f: lowest BGP Identifier, with ORIGINATOR_ID in its place (RFC 4456 §9)."""
    return _keep_best(paths, lambda p: originator(p, cfg))


def step_cluster_list(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """RFC 4456 §9, between f and g: shorter CLUSTER_LIST."""
    return _keep_best(paths, lambda p: len(p.attrs.cluster_list))


def step_peer_address(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """§9.1.2.2 g: lowest peer address (ours counts as 0)."""
    return _keep_best(paths, lambda p: 0 if p.source.local else p.source.address)


# (reason, step). The reason names the step that left one path standing. Multipath equality is
# judged at the end of the steps before MULTIPATH_CUT.
STEPS: tuple[tuple[str, Step], ...] = (
    ("next-hop-reachable", step_nexthop),
    ("local-pref", step_local_pref),
    ("local-origin", step_local_origin),
    ("as-path", step_as_path),
    ("origin", step_origin),
    ("med", step_med),
    ("ebgp-over-ibgp", step_ebgp),
    ("router-id", step_router_id),
    ("cluster-list", step_cluster_list),
    ("peer-address", step_peer_address),
)
MULTIPATH_CUT = 7  # index of the first pure tie-break (router-id)


def run_steps(paths: list[Path], cfg: DecisionConfig) -> tuple[list[Path], str, list[Path]]:
    """(survivors, reason, multipath candidates) after the whole chain."""
    alive = paths
    reason = ONLY_PATH
    equal: list[Path] = []
    for i, (name, step) in enumerate(STEPS):
        if i == MULTIPATH_CUT:
            equal = alive
        if len(alive) <= 1 and i > 0:
            break
        kept = step(alive, cfg)
        if len(kept) < len(alive):
            reason = name
        alive = kept
        if not alive:
            return [], name, []
    if not equal:
        equal = alive
    return alive, reason, equal


def decide(paths: list[Path], cfg: DecisionConfig) -> Outcome:
    """Best path, the reason it won, and the multipath set (best first)."""
    if len(paths) == 1:
        p = paths[0]
        if step_nexthop(paths, cfg):
            return p, ONLY_PATH, (p,)
        return None, "next-hop-reachable", ()
    alive, reason, equal = run_steps(paths, cfg)
    if not alive:
        return None, reason, ()
    best = alive[0]
    if cfg.multipath <= 1 or len(equal) <= 1:
        return best, reason, (best,)
    rest = rank([p for p in equal if p is not best], cfg)
    return best, reason, (best, *rest[: cfg.multipath - 1])


def rank(paths: list[Path], cfg: DecisionConfig) -> list[Path]:
    """Every path in preference order (repeated decision); for display and multipath order."""
    left = list(paths)
    out: list[Path] = []
    while left:
        alive, _, _ = run_steps(left, cfg)
        if not alive:
            out.extend(left)  # unreachable ones last, in arrival order
            break
        out.append(alive[0])
        left.remove(alive[0])
    return out


def make_decider(cfg: DecisionConfig) -> Callable[[Family, list[Path]], Outcome]:
    """A (family, paths) decider for LocRib, bound to cfg."""
    per_family: dict[Family, DecisionConfig] = {}

    def decider(family: Family, paths: list[Path]) -> Outcome:
        c = per_family.get(family)
        if c is None:
            c = per_family[family] = replace(cfg, family=family)
        return decide(paths, c)

    return decider
