"""Our ipsets (`cali40…`/`cali60…`): read them from `ipset save`, and write `ipset restore`
batches that add and delete members, plus the inverse batch that undoes one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from policy.ruleset import IPSet

SET_PREFIXES = ("cali40", "cali60")
# Same prefix, other owner: NAT outgoing (agent/nat.py) keeps these in step with the pools.
OTHER_OWNERS = frozenset(f"cali{v}0{kind}-ipam-pools" for v in (4, 6) for kind in ("masq", "all"))


def is_ours(name: str) -> bool:
    """Policy sets only: NAT's pool sets share the prefix but are reconciled elsewhere."""
    return name.startswith(SET_PREFIXES) and name not in OTHER_OWNERS


def parse_save(text: str, keep: Callable[[str], bool] = is_ours) -> dict[str, IPSet]:
    """The sets ``keep`` selects (by default the policy dataplane's) from `ipset save`."""
    kinds: dict[str, tuple[str, int]] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not keep(parts[1]):
            continue
        if parts[0] == "create":
            family = 6 if "inet6" in parts[3:] else 4
            kinds[parts[1]] = (parts[2], family)
            members.setdefault(parts[1], set())
        elif parts[0] == "add":
            members.setdefault(parts[1], set()).add(parts[2])
    return {
        name: IPSet(name, kind, family, frozenset(members.get(name, ())))  # type: ignore[arg-type]
        for name, (kind, family) in kinds.items()
    }


def _create(s: IPSet) -> str:
    family = "inet6" if s.family == 6 else "inet"
    return f"create {s.name} {s.type} family {family} maxelem 1048576"


@dataclass
class SetDiff:
    """What one apply changes in ipsets. `destroy` runs after iptables stops using them."""

    create: list[IPSet] = field(default_factory=list)
    add: list[tuple[str, str]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)
    destroy: list[str] = field(default_factory=list)

    def restore_text(self) -> str:
        lines = [_create(s) for s in self.create]
        lines += [f"add {name} {member}" for name, member in self.add]
        lines += [f"del {name} {member}" for name, member in self.delete]
        return "".join(line + "\n" for line in lines)

    def undo_text(self) -> str:
        lines = [f"del {name} {member}" for name, member in self.add]
        lines += [f"add {name} {member}" for name, member in self.delete]
        lines += [f"destroy {s.name}" for s in self.create]
        return "".join(line + "\n" for line in lines)

    def destroy_text(self) -> str:
        return "".join(f"destroy {name}\n" for name in self.destroy)

    @property
    def empty(self) -> bool:
        return not (self.create or self.add or self.delete or self.destroy)


def diff(current: Mapping[str, IPSet], desired: Mapping[str, IPSet]) -> SetDiff:
    """The member-level changes from `current` to `desired`; a set whose type or family
    changed is destroyed and created again."""
    d = SetDiff()
    for name in sorted(desired):
        want = desired[name]
        have = current.get(name)
        if have is not None and (have.type != want.type or have.family != want.family):
            raise ValueError(f"ipset {name} changed type; set names must encode their type")
        if have is None:
            d.create.append(want)
            d.add += [(name, m) for m in sorted(want.members)]
            continue
        if have.members != want.members:
            d.add += [(name, m) for m in sorted(want.members - have.members)]
            d.delete += [(name, m) for m in sorted(have.members - want.members)]
    d.destroy = sorted(name for name in current if name not in desired)
    return d
