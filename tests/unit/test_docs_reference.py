"""The reference pages match the code: docs/bgpd-toml.md names exactly the keys the config
checker accepts, with defaults and ranges the checker really has, and its examples load; and
docs/cli.md names every subcommand and option the argument parsers define."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from bgpd import config as config_mod
from bgpd.cli import bgp
from bgpd.cli.main import build_parser
from bgpd.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
TOML_DOC = ROOT / "docs" / "bgpd-toml.md"
CLI_DOC = ROOT / "docs" / "cli.md"

# The smallest file that reaches every table the checker knows, each with its required keys.
PROBE: dict[str, Any] = {
    "global": {"asn": 64512, "router-id": "198.18.0.1"},
    "neighbor": [{"address": "198.18.0.2", "remote-asn": 64512}],
    "originate": [{"prefix": "10.244.0.0/26"}],
    "filter": [{"name": "f", "rule": [{"action": "Accept"}]}],
    "fib": {},
}


def to_toml(doc: dict[str, Any]) -> str:
    """TOML for a dict of plain values (inline tables and arrays), enough for the probes."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"

    return "\n".join(f"{k} = {value(v)}" for k, v in doc.items()) + "\n"


def _table_name(path: str) -> str:
    """`neighbor[3]` -> `neighbor`, `filter[0].rule[1]` -> `filter.rule`, `` -> `` (the top)."""
    return re.sub(r"\[\d+\]", "", path)


def accepted_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Every key the checker reads, per table, recorded while it parses the probe.

    The checker marks a key as known only by reading it (`_Checker.get`); anything it did not
    read is refused as unknown. So the keys read while parsing a file that reaches every table
    are exactly the keys a file may hold.
    """
    seen: dict[str, set[str]] = {}
    original = config_mod._Checker.get

    def recording_get(self, key, *args, **kwargs):
        seen.setdefault(_table_name(self.path), set()).add(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(config_mod._Checker, "get", recording_get)
    parse_config(to_toml(PROBE), "probe.toml")
    monkeypatch.undo()
    return seen


def _nested(doc: dict[str, Any], table: str) -> dict[str, Any]:
    """The probe's (first) table named `filter.rule`, `neighbor`, `global`…"""
    node: Any = doc
    for part in table.split("."):
        node = node[part]
        if isinstance(node, list):
            node = node[0]
    return node


def _probe_with(table: str, key: str, raw: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(PROBE))
    _nested(doc, table)[key] = raw
    return doc


def documented_keys() -> dict[str, dict[str, dict[str, str]]]:
    """table -> key -> {type, default, range, meaning} from the reference tables of the doc."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    current = None
    for line in TOML_DOC.read_text().splitlines():
        heading = re.match(r"^## `\[{1,2}([\w.]+)\]{1,2}`$", line)
        if heading:
            current = tables.setdefault(heading.group(1), {})
            continue
        if line.startswith("## "):
            current = None
        row = re.match(r"^\| `([a-z0-9-]+)` \|(.*)\|$", line)
        if row and current is not None:
            cells = [c.strip() for c in row.group(2).split("|")]
            assert len(cells) == 4, f"bgpd-toml.md: row {row.group(1)!r} needs 5 columns"
            current[row.group(1)] = dict(zip(("type", "default", "range", "meaning"), cells))
    return tables


def test_the_doc_names_exactly_the_keys_the_checker_accepts(monkeypatch):
    accepted = accepted_keys(monkeypatch)
    top = accepted.pop("")
    # The probe must reach every table the top level and [[filter]] hold, or keys would hide.
    assert top == {"global", "neighbor", "originate", "filter", "fib"}
    assert set(accepted) == top | {"filter.rule"}
    documented = {table: set(keys) for table, keys in documented_keys().items()}
    assert set(documented) == set(accepted), "tables documented vs accepted"
    for table, keys in accepted.items():
        missing = keys - documented[table]
        extra = documented[table] - keys
        assert not missing, f"bgpd-toml.md lacks [{table}] keys {sorted(missing)}"
        assert not extra, f"bgpd-toml.md names [{table}] keys the checker refuses: {sorted(extra)}"


def test_the_checker_refuses_a_key_it_does_not_know_in_every_table(monkeypatch):
    """What makes the recorded key set complete: an unread key is an error in every table."""
    for table in accepted_keys(monkeypatch):
        doc = _probe_with(table, "no-such-key", 1) if table else {**PROBE, "no-such-key": 1}
        with pytest.raises(ConfigError, match="no-such-key: unknown key"):
            parse_config(to_toml(doc), "probe.toml")


def _literal(cell: str) -> tuple[bool, Any]:
    """The TOML value of a cell written as one `literal`, if it is one."""
    m = re.fullmatch(r"`([^`]+)`", cell)
    if not m:
        return False, None
    try:
        return True, tomllib.loads(f"v = {m.group(1)}")["v"]
    except tomllib.TOMLDecodeError:
        return False, None


def test_documented_defaults_are_what_the_checker_fills_in():
    baseline = parse_config(to_toml(PROBE), "probe.toml")
    checked = 0
    for table, keys in documented_keys().items():
        for key, row in keys.items():
            ok, default = _literal(row["default"])
            if not ok or key in _nested(PROBE, table):
                continue  # required, "none", or a default that depends on another key
            written = parse_config(to_toml(_probe_with(table, key, default)), "probe.toml")
            assert written == baseline, f"[{table}] {key}: the documented default is not it"
            checked += 1
    assert checked >= 25


def test_documented_integer_ranges_are_the_checker_bounds():
    checked = 0
    for table, keys in documented_keys().items():
        for key, row in keys.items():
            m = re.fullmatch(r"(\d+)\u2013(\d+)", row["range"])
            if row["type"] != "integer" or not m:
                continue
            lo, hi = int(m.group(1)), int(m.group(2))
            for good in (lo, hi):
                parse_config(to_toml(_probe_with(table, key, good)), "probe.toml")
            for bad in (lo - 1, hi + 1):
                with pytest.raises(ConfigError, match=re.escape(key)):
                    parse_config(to_toml(_probe_with(table, key, bad)), "probe.toml")
            checked += 1
    assert checked >= 12


def test_documented_choices_are_accepted():
    """Where the range column lists `word`s, each is a value the checker takes."""
    checked = 0
    for table, keys in documented_keys().items():
        for key, row in keys.items():
            if row["type"] not in ("string", "list of strings"):
                continue
            words = re.findall(r"`([A-Za-z][\w-]*)`", row["range"])
            if not words or "`" in re.sub(r"`[A-Za-z][\w-]*`|, ", "", row["range"]):
                continue
            for word in words:
                raw: Any = [word] if row["type"] == "list of strings" else word
                parse_config(to_toml(_probe_with(table, key, raw)), "probe.toml")
                checked += 1
    assert checked >= 15


def _toml_examples() -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", TOML_DOC.read_text(), re.S | re.M)


def test_every_toml_example_loads(tmp_path: Path):
    examples = _toml_examples()
    assert len(examples) >= 5
    loaded: list[Config] = []
    for i, text in enumerate(examples):
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        loaded.append(load_config(path))

    # The examples the page promises are there, with the settings that make them what they are.
    def node_like(c: Config) -> bool:
        return c.fib.enabled and bool(c.originate) and c.global_.multipath > 1

    def reflector(c: Config) -> bool:
        clients = [n for n in c.neighbors if n.route_reflector_client]
        plain = [n for n in c.neighbors if not n.route_reflector_client]
        return c.global_.cluster_id is not None and bool(clients and plain) and not c.fib.enabled

    def tor(c: Config) -> bool:
        return any(
            n.remote_asn != c.global_.asn
            and n.password
            and n.ttl_security
            and n.import_filter
            and n.export_filter
            and n.max_prefix
            and n.graceful_restart
            for n in c.neighbors
        )

    assert any(node_like(c) for c in loaded)
    reflectors = [c for c in loaded if reflector(c)]
    assert len(reflectors) == 2
    assert len({c.global_.cluster_id for c in reflectors}) == 1
    assert {c.global_.router_id for c in reflectors} == {
        n.address for c in reflectors for n in c.neighbors if not n.route_reflector_client
    }
    assert any(tor(c) for c in loaded)


def test_the_readme_points_to_the_reference():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## bgpd.toml", 1)[1].split("\n## ", 1)[0]
    assert "docs/bgpd-toml.md" in section
    for block in re.findall(r"^```toml\n(.*?)^```", section, re.S | re.M):
        parse_config(block, "README.md")


# --- CLI ------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser: argparse.ArgumentParser, prefix: str) -> dict[str, argparse.ArgumentParser]:
    """Every command line prefix (`routemesh bgp routes`) that ends at a parser with options."""
    found = {prefix: parser}
    for name, sub in _subparsers(parser).items():
        found |= _commands(sub, f"{prefix} {name}")
    return found


def _cli_synopsis() -> str:
    """The synopsis lines of cli.md (code blocks), continuations joined to their command."""
    text = CLI_DOC.read_text()
    blocks = re.findall(r"^```\n(.*?)^```", text, re.S | re.M)
    return "\n".join(blocks)


def test_cli_reference_names_every_command_and_option():
    commands = _commands(build_parser(), "routemesh")
    daemon = argparse.ArgumentParser(prog="bgpd")
    bgp.add_daemon_args(daemon)
    commands["bgpd"] = daemon
    synopsis = _cli_synopsis()
    lines = synopsis.splitlines()
    missing = []
    for prefix, parser in commands.items():
        if _subparsers(parser):
            continue  # a group: its subcommands are checked
        if prefix in ("routemesh", "routemesh version"):
            continue
        # The lines of this command's synopsis: from its first line to the next command.
        starts = [i for i, line in enumerate(lines) if line.startswith(prefix + " ")]
        starts += [i for i, line in enumerate(lines) if line == prefix]
        if not starts:
            missing.append(prefix)
            continue
        i = min(starts)
        block = [lines[i]]
        for line in lines[i + 1 :]:
            if not line.startswith(" "):
                break
            block.append(line)
        shown = " ".join(block)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings:
                continue
            # Either spelling will do: `-o table|json` documents --output.
            spelled = (
                re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", shown)
                for o in action.option_strings
            )
            if not any(spelled):
                missing.append(f"{prefix} {action.option_strings[-1]}")
    assert not missing, f"docs/cli.md synopses lack: {missing}"
