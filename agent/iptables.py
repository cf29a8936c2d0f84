"""iptables text for our chains: renders `policy.ruleset` rules to `iptables-restore` lines
tagged with a content hash, reads our chains back from `iptables-save` per table (filter, raw,
mangle), and builds the `--noflush` batch that rewrites only the chains whose hashes changed."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policy.layout import PREFIX, TABLE_HOOKS
from policy.ruleset import (
    ICMP,
    Addr,
    Chain,
    Conntrack,
    Iface,
    InSet,
    Jump,
    Log,
    Mark,
    Match,
    NoTrack,
    Ports,
    Proto,
    Rule,
    SetMark,
    Verdict,
)

_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
HASH_TAG = "cali:"
_HASH_RE = re.compile(r"cali:([a-z2-7]{16})")
HOOK_COMMENT = "cali:hook"


def _neg(negate: bool) -> str:
    return "! " if negate else ""


def render_match(m: Match) -> str:
    if isinstance(m, Proto):
        return f"{_neg(m.negate)}-p {_PROTO_NAMES.get(m.number, str(m.number))}"
    if isinstance(m, Addr):
        flag = "-s" if m.direction == "src" else "-d"
        return f"{_neg(m.negate)}{flag} {m.cidr}"
    if isinstance(m, InSet):
        dirs = f"{m.direction},{m.direction}" if m.with_port else m.direction
        return f"-m set {_neg(m.negate)}--match-set {m.name} {dirs}"
    if isinstance(m, Ports):
        flag = "--sports" if m.direction == "src" else "--dports"
        ports = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in m.ranges)
        return f"-m multiport {_neg(m.negate)}{flag} {ports}"
    if isinstance(m, ICMP):
        value = str(m.type) if m.code is None else f"{m.type}/{m.code}"
        if m.v6:
            return f"-m icmp6 {_neg(m.negate)}--icmpv6-type {value}"
        return f"-m icmp {_neg(m.negate)}--icmp-type {value}"
    if isinstance(m, Mark):
        return f"-m mark --mark {m.value:#x}/{m.mask:#x}"
    if isinstance(m, Iface):
        flag = "-i" if m.direction == "in" else "-o"
        return f"{_neg(m.negate)}{flag} {m.name}"
    if isinstance(m, Conntrack):
        return f"-m conntrack --ctstate {','.join(m.states)}"
    raise TypeError(f"unknown match {m!r}")


def render_action(rule: Rule) -> str:
    a = rule.action
    if isinstance(a, Verdict):
        return f"-j {a.what}"
    if isinstance(a, Jump):
        return f"{'-g' if a.goto else '-j'} {a.chain}"
    if isinstance(a, SetMark):
        return f"-j MARK --set-xmark {a.value:#x}/{a.mask:#x}"
    if isinstance(a, Log):
        return f'-j LOG --log-prefix "{a.prefix}" --log-level 5'
    if isinstance(a, NoTrack):
        return "-j NOTRACK"
    raise TypeError(f"unknown action {a!r}")


def _comment(text: str) -> str:
    clean = text.replace('"', "'").replace("\\", "/")[:250]
    return f'-m comment --comment "{clean}"'


def render_rule(rule: Rule) -> tuple[str, str]:
    """(hash, rule text without -A chain). The hash covers matches, action and origin."""
    body = " ".join([*(render_match(m) for m in rule.matches), render_action(rule)])
    if rule.origin is not None:
        body = f"{_comment(str(rule.origin))} {body}"
    digest = base64.b32encode(hashlib.sha256(body.encode()).digest()).decode().lower()[:16]
    return digest, f"{_comment(HASH_TAG + digest)} {body}"


@dataclass(frozen=True)
class RenderedChain:
    hashes: tuple[str, ...]
    lines: tuple[str, ...]  # "-A chain ..." lines


class Renderer:
    """Renders chains, remembering each distinct chain so unchanged ones cost a dict lookup."""

    def __init__(self) -> None:
        self._rules: dict[Rule, tuple[str, str]] = {}

    def chain(self, name: str, rules: Chain) -> RenderedChain:
        hashes = []
        lines = []
        cache = self._rules
        for rule in rules:
            out = cache.get(rule)
            if out is None:
                if len(cache) > 200_000:
                    cache.clear()
                out = cache[rule] = render_rule(rule)
            hashes.append(out[0])
            lines.append(f"-A {name} {out[1]}")
        return RenderedChain(tuple(hashes), tuple(lines))


@dataclass
class SavedState:
    """Our part of one table in `iptables-save`: chain -> rule hashes ("?" for a rule without
    our tag), our hook rules per built-in chain, and whether each hook is alone at the top."""

    chains: dict[str, tuple[str, ...]]
    hooks_ok: dict[str, bool]
    hook_lines: dict[str, list[str]]


def parse_save(text: str, table: str = "filter") -> SavedState:
    hooks = TABLE_HOOKS[table]
    chains: dict[str, list[str]] = {}
    first_rule: dict[str, str] = {}
    hook_lines: dict[str, list[str]] = {b: [] for b in hooks}
    in_table = False
    for line in text.splitlines():
        if line.startswith("*"):
            in_table = line == f"*{table}"
            continue
        if not in_table:
            continue
        if line.startswith(":"):
            name = line[1:].split(" ", 1)[0]
            if name.startswith(PREFIX):
                chains.setdefault(name, [])
        elif line.startswith("-A "):
            name, _, rest = line[3:].partition(" ")
            if name.startswith(PREFIX):
                m = _HASH_RE.search(rest)
                chains.setdefault(name, []).append(m.group(1) if m else "?")
            elif name in hooks:
                first_rule.setdefault(name, rest)
                if rest.endswith(f"-j {hooks[name]}"):
                    hook_lines[name].append(line)
    hooks_ok = {
        builtin: first_rule.get(builtin, "").endswith(f"-j {target}")
        and len(hook_lines[builtin]) == 1
        for builtin, target in hooks.items()
    }
    return SavedState({k: tuple(v) for k, v in chains.items()}, hooks_ok, hook_lines)


def hook_line(table: str, builtin: str) -> str:
    """Our hook rule as `iptables-save` prints it."""
    return f"-A {builtin} {_comment(HOOK_COMMENT)} -j {TABLE_HOOKS[table][builtin]}"


def restore_section(
    table: str,
    rendered: Mapping[str, RenderedChain],
    write: Iterable[str],
    delete: Iterable[str],
    state: SavedState,
) -> tuple[str, list[str], list[str]]:
    """One table's part of a `--noflush` batch: declare (and so flush) each chain to write or
    delete, append the new rules, fix or drop our hooks, delete stale chains last.

    Returns (text, built-ins hooked again, built-ins unhooked); text is "" if nothing changes.
    """
    write = sorted(write)
    delete = sorted(delete)
    hooks = TABLE_HOOKS[table]
    # A hook may only point at a chain that exists once this batch is in.
    fix = sorted(b for b, ok in state.hooks_ok.items() if not ok and hooks[b] in rendered)
    unhook = sorted(
        b for b, lines in state.hook_lines.items() if lines and hooks[b] not in rendered
    )
    if not write and not delete and not fix and not unhook:
        return "", [], []
    out = [f"*{table}"]
    out += [f":{name} - [0:0]" for name in [*write, *delete]]
    for builtin in [*fix, *unhook]:
        out += ["-D" + line[2:] for line in state.hook_lines[builtin]]
    for name in write:
        out += rendered[name].lines
    for builtin in fix:
        out.append(f"-I {builtin} 1 {_comment(HOOK_COMMENT)} -j {hooks[builtin]}")
    out += [f"-X {name}" for name in delete]
    out.append("COMMIT")
    return "\n".join(out) + "\n", fix, unhook


def removal_section(table: str, state: SavedState) -> str:
    """Remove every chain of ours and our hooks from one table; foreign rules stay."""
    if not state.chains and not any(state.hook_lines.values()):
        return ""
    out = [f"*{table}"]
    for lines in state.hook_lines.values():
        out += ["-D" + line[2:] for line in lines]
    out += [f":{name} - [0:0]" for name in sorted(state.chains)]
    out += [f"-X {name}" for name in sorted(state.chains)]
    out.append("COMMIT")
    return "\n".join(out) + "\n"
