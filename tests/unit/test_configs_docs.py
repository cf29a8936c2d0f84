"""The docs stay true to the code: links resolve, named config files exist, and every command
line they show parses with the real `routemesh`/`bgpd` argument parsers."""

from __future__ import annotations

import argparse
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from bgpd.cli import bgp
from bgpd.cli.main import VERBS, build_parser
from bgpd.config import parse_config
from bgpd.model import load_documents

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
# Verbs whose issue fixes the interface but which are still being built; cli.md marks them.


def code_lines(path: Path) -> list[str]:
    """Lines inside ``` fences, without prompts, trailing comments or continuations."""
    out: list[str] = []
    inside = False
    pending = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = line.strip()
        line = line.removeprefix("$ ")
        if pending:
            line = pending + " " + line
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        out.append(re.sub(r"\s+#\s.*$", "", line))
    return out


def _prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", path.read_text(), flags=re.S | re.M)


def commands(path: Path, program: str) -> list[list[str]]:
    """argv (after the program name) of each `program …` command in the page's code blocks."""
    found = []
    spans = [s.replace("\n", " ") for s in re.findall(r"(?<!`)`([^`]+)`(?!`)", _prose(path))]
    # In prose, `routemesh apply` names a verb; only spans with options or values are commands.
    spans = [s for s in spans if re.search(r"\s-|=", s)]
    for line in [*code_lines(path), *spans]:
        if any(ch in line for ch in "[]…|<>"):
            continue  # a synopsis with placeholders, a pipe or a heredoc: not one command
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&")
        lex.whitespace_split = True
        words = list(lex)
        # Split `a && b`, `a; b` and `a &` into their commands.
        cmd: list[str] = []
        for word in [*words, ";"]:
            if word in ("&&", ";", "&"):
                if len(cmd) > 1 and cmd[0] in (program, f".venv/bin/{program}"):
                    found.append(cmd[1:])
                cmd = []
            else:
                cmd.append(word)
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_and_config_paths_exist(doc: Path):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
    for path in re.findall(r"\bconfigs/[\w./-]*\w", text):
        assert (ROOT / path).exists(), f"{doc.name}: {path} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_routemesh_command_lines_parse(doc: Path):
    parser = build_parser()
    for argv in commands(doc, "routemesh"):
        try:
            parser.parse_args(argv)
        except SystemExit as err:
            if err.code != 0:  # --help exits 0
                pytest.fail(f"{doc.name}: `routemesh {shlex.join(argv)}` does not parse")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_bgpd_command_lines_parse(doc: Path):
    parser = argparse.ArgumentParser(prog="bgpd")
    bgp.add_daemon_args(parser)
    for argv in commands(doc, "bgpd"):
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.name}: `bgpd {shlex.join(argv)}` does not parse")


def test_cli_reference_covers_every_verb():
    text = (ROOT / "docs" / "cli.md").read_text()
    synopsis = {
        line.split()[1]
        for line in code_lines(ROOT / "docs" / "cli.md")
        if line.startswith("routemesh ") and len(line.split()) > 1
    }
    missing = set(VERBS) - synopsis - {"bgpd"}  # `routemesh bgpd` is shown with `bgpd`
    assert not missing, f"docs/cli.md has no synopsis for: {sorted(missing)}"
    assert "routemesh bgpd -f" in text
    # A section still marked "in progress" for a verb that has landed is stale.
    for heading in re.findall(r"^## (\w+) \(in progress\)", text, re.M):
        verb = heading.lower()
        assert verb not in VERBS, f"docs/cli.md still calls `{verb}` in progress; document it"


def test_the_command_extraction_finds_commands():
    """The parse tests above look at something: the docs show many real command lines."""
    total = sum(len(commands(doc, "routemesh")) for doc in DOCS)
    assert total >= 20
    assert any(argv[:2] == ["bgp", "status"] for doc in DOCS for argv in commands(doc, "routemesh"))


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block."""
    return re.findall(r"^\s*```(\w*)\n(.*?)^\s*```", path.read_text(), re.S | re.M)


def test_manifests_and_bgpd_configs_shown_in_the_docs_are_valid():
    manifests = configs = 0
    for doc in DOCS:
        for info, body in _blocks(doc):
            body = textwrap.dedent(body)
            if info == "toml" and "[global]" in body:
                parse_config(body, f"{doc.name}")
                configs += 1
            # Manifests appear in heredocs inside shell blocks too.
            for heredoc in re.findall(r"<<'(\w+)'\n(.*?)^\1$", body, re.S | re.M):
                if "apiVersion:" in heredoc[1]:
                    load_documents(heredoc[1], doc.name)
                    manifests += 1
    assert manifests >= 2 and configs >= 1
