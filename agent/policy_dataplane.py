"""Applies compiled rule sets to the kernel: `ipset restore` for members, one
`iptables-nft-restore --noflush` transaction for the chains whose content changed, rollback
and a line-numbered error on failure, and reconcile of our chains and sets against the kernel.

Only names with our prefixes (chains `cali-`, sets `cali40`/`cali60`) and the one hook rule at
the top of FORWARD/INPUT/OUTPUT are ours; everything else in the tables is left alone.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent import ipsets
from agent import iptables as ipt
from policy.ruleset import Chain, IPSet, RuleSet

log = logging.getLogger(__name__)

# filter holds all normal policy; raw (doNotTrack) and mangle (preDNAT) only host endpoints'.
TABLES = ("filter", "raw", "mangle")

Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def local_runner(netns: str | None = None) -> Runner:
    """Runs commands here, or inside the named network namespace."""
    prefix = ["ip", "netns", "exec", netns] if netns else []

    def run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *argv], input=stdin, capture_output=True, text=True, timeout=120
        )

    return run


class ApplyError(RuntimeError):
    """An apply the kernel refused; nothing of the batch stays applied."""

    def __init__(self, tool: str, message: str, line: str | None = None) -> None:
        self.tool = tool
        self.line = line
        text = f"{tool}: {message}"
        if line is not None:
            text += f" (failing line: {line})"
        super().__init__(text)


@dataclass
class ApplyStats:
    """What one apply sent, for logs, metrics and tests."""

    chains_written: list[str] = field(default_factory=list)
    chains_deleted: list[str] = field(default_factory=list)
    ipset_lines: int = 0
    sets_created: list[str] = field(default_factory=list)
    sets_destroyed: list[str] = field(default_factory=list)
    hooks_fixed: list[str] = field(default_factory=list)
    iptables_batch: str = ""
    ipset_batch: str = ""


def _failing_line(stderr: str, batch: str, pattern: str) -> str | None:
    lines = batch.splitlines()
    m = re.search(pattern, stderr)
    line = None
    if m and 0 < int(m.group(1)) <= len(lines):
        line = lines[int(m.group(1)) - 1]
    if line is None or line == "COMMIT":
        # nft checks references at COMMIT; the message quotes what it missed, so point at
        # the first rule that uses it.
        for name in re.findall(r"'([^']+)'", stderr):
            for candidate in lines:
                if candidate.startswith("-") and f" {name}" in candidate:
                    return candidate
    return line


class PolicyDataplane:
    """Owns our chains and ipsets for one IP family in one network namespace."""

    def __init__(self, runner: Runner | None = None, version: int = 4) -> None:
        self.run = runner or local_runner()
        self.version = version
        self._restore = "iptables-nft-restore" if version == 4 else "ip6tables-nft-restore"
        self._save = "iptables-nft-save" if version == 4 else "ip6tables-nft-save"
        self._renderer = ipt.Renderer()
        self._rendered: dict[tuple[str, str], tuple[Chain, ipt.RenderedChain]] = {}
        # What we believe the kernel holds, per table; None until the first read.
        self._tables: dict[str, ipt.SavedState] | None = None
        self._sets: dict[str, IPSet] = {}
        self.status: dict[str, str] = {}

    # --- reading the kernel ----------------------------------------------------------------

    def _read(self) -> None:
        res = self.run([self._save], None)
        if res.returncode != 0:
            raise ApplyError(self._save, res.stderr.strip())
        self._tables = {table: ipt.parse_save(res.stdout, table) for table in TABLES}
        res = self.run(["ipset", "save"], None)
        if res.returncode != 0:
            raise ApplyError("ipset", res.stderr.strip())
        family = 6 if self.version == 6 else 4
        self._sets = {n: s for n, s in ipsets.parse_save(res.stdout).items() if s.family == family}

    def reconcile(self, rs: RuleSet) -> ApplyStats:
        """Compare our chains and sets in the kernel with `rs` and repair what differs."""
        self._read()
        return self.apply(rs)

    # --- applying --------------------------------------------------------------------------

    def apply(self, rs: RuleSet) -> ApplyStats:
        """Make the kernel hold `rs`, touching only what changed since the last apply."""
        if self._tables is None:
            self._read()
        assert self._tables is not None
        for key, problem in sorted(rs.problems.items()):
            if self.status.get(key) != problem:  # log each problem once, not every apply
                log.warning("policy %s is not applied: %s", key, problem)
        for key in sorted(set(self.status) - set(rs.problems)):
            log.info("policy %s is applied again", key)
        self.status = dict(rs.problems)
        stats = ApplyStats()
        wanted = {"filter": rs.chains, **rs.tables}
        sections: list[str] = []
        plans = []
        for table in TABLES:
            state = self._tables[table]
            chains = wanted.get(table, {})
            rendered = {name: self._render(table, name, rules) for name, rules in chains.items()}
            write = [n for n, rc in rendered.items() if state.chains.get(n) != rc.hashes]
            delete = [n for n in state.chains if n not in rendered]
            text, fixed, unhooked = ipt.restore_section(table, rendered, write, delete, state)
            if not text:
                continue
            sections.append(text)
            plans.append((table, rendered, write, delete, fixed, unhooked))
            tag = "" if table == "filter" else f"{table}:"
            stats.chains_written += sorted(tag + n for n in write)
            stats.chains_deleted += sorted(tag + n for n in delete)
            stats.hooks_fixed += [tag + b for b in fixed]
        batch = "".join(sections)
        set_diff = ipsets.diff(self._sets, rs.ipsets)
        stats.iptables_batch = batch
        set_text = set_diff.restore_text()
        stats.ipset_batch = set_text
        stats.ipset_lines = len(set_text.splitlines())
        stats.sets_created = [s.name for s in set_diff.create]
        stats.sets_destroyed = list(set_diff.destroy)
        if set_text:
            res = self.run(["ipset", "restore", "-exist"], set_text)
            if res.returncode != 0:
                self._undo_sets(set_diff)
                line = _failing_line(res.stderr, set_text, r"[Ee]rror in line (\d+)")
                raise ApplyError("ipset restore", res.stderr.strip(), line)
        if batch:
            res = self.run([self._restore, "--noflush"], batch)
            if res.returncode != 0:
                self._undo_sets(set_diff)
                line = _failing_line(res.stderr, batch, r"line:? (\d+)")
                raise ApplyError(self._restore, res.stderr.strip(), line)
        for table, rendered, write, delete, fixed, unhooked in plans:
            state = self._tables[table]
            for name in write:
                state.chains[name] = rendered[name].hashes
            for name in delete:
                del state.chains[name]
            for builtin in fixed:
                state.hook_lines[builtin] = [ipt.hook_line(table, builtin)]
                state.hooks_ok[builtin] = True
            for builtin in unhooked:
                state.hook_lines[builtin] = []
                state.hooks_ok[builtin] = False
        self._sets = dict(rs.ipsets)
        if set_diff.destroy:
            res = self.run(["ipset", "restore", "-exist"], set_diff.destroy_text())
            if res.returncode != 0:
                # The sets are unreferenced now; a later reconcile retries the destroy.
                log.warning("ipset destroy failed: %s", res.stderr.strip())
        return stats

    def _render(self, table: str, name: str, rules: Chain) -> ipt.RenderedChain:
        # The compiler hands back the same tuple for an unchanged chain; skip even the
        # per-rule lookups then.
        hit = self._rendered.get((table, name))
        if hit is not None and hit[0] is rules:
            return hit[1]
        out = self._renderer.chain(name, rules)
        self._rendered[(table, name)] = (rules, out)
        return out

    def _undo_sets(self, set_diff: ipsets.SetDiff) -> None:
        undo = set_diff.undo_text()
        if undo:
            res = self.run(["ipset", "restore", "-exist"], undo)
            if res.returncode != 0:
                log.error("ipset rollback failed: %s", res.stderr.strip())
        # Our belief may now be off; the next apply reads the kernel again.
        self._tables = None

    def remove_all(self) -> None:
        """Take every chain, hook and set of ours out of the kernel (agent uninstall)."""
        self._read()
        assert self._tables is not None
        batch = "".join(ipt.removal_section(t, state) for t, state in self._tables.items())
        if batch:
            out = self.run([self._restore, "--noflush"], batch)
            if out.returncode != 0:
                raise ApplyError(self._restore, out.stderr.strip())
        if self._sets:
            text = "".join(f"destroy {name}\n" for name in sorted(self._sets))
            self.run(["ipset", "restore", "-exist"], text)
        self._tables = None
        self._sets = {}
