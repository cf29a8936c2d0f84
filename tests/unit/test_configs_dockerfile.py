"""The Dockerfile, checked by parsing (this machine has no Docker engine to build it).

A small parser turns it into (instruction, arguments) per build stage; the tests check the
base image, that every COPY source exists and survives .dockerignore, that the packages
pyproject.toml ships are all copied, the non-root USER, the exec-form ENTRYPOINT and the ports.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bgpd.health import DEFAULT_PORT

ROOT = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.steps if i == instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Comments and `\\` continuations as Docker reads them."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction is dropped
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "the file ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction not in INSTRUCTIONS:
            raise ValueError(f"unknown instruction {instruction!r} in {line!r}")
        rest = rest.strip()
        if instruction == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
            continue
        if instruction == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
            continue
        assert stages, f"{instruction} before the first FROM"
        stages[-1].steps.append((instruction, rest))
    return args, stages


def dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes
        ):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_parser_rejects_what_docker_would():
    with pytest.raises(ValueError, match="COPPY"):
        parse_dockerfile("FROM debian\nCOPPY a b\n")
    with pytest.raises(AssertionError):
        parse_dockerfile("RUN true\n")


def test_slim_python_base_and_two_stages(parsed):
    _args, stages = parsed
    assert len(stages) == 2 and stages[0].name == "build"
    for stage in stages:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", stage.base), stage.base


def test_every_copy_source_exists_and_is_in_the_build_context(parsed):
    _args, stages = parsed
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied: set[str] = set()
    for stage in stages:
        for rest in stage.args("COPY"):
            words = shlex.split(rest)
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words[:-1] if not w.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
                assert not dockerignored(src, ignore), f"COPY {src}: excluded by .dockerignore"
                copied.add(src.rstrip("/"))
    # The build needs every package pyproject.toml ships, and the readme it names.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pat.rstrip("*") for pat in include}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    # What the build must not see.
    for path in (".venv/bin/python", ".git/config", "tests/unit/test_metrics.py"):
        assert dockerignored(path, ignore), path


def test_runtime_stage_is_non_root_with_exec_form_entrypoint(parsed):
    _args, stages = parsed
    final = stages[-1]
    (user,) = final.args("USER")
    assert user.split(":")[0] not in ("0", "root")
    # USER comes after everything that needs root (apt, pip, useradd).
    steps = [i for i, _ in final.steps]
    assert steps.index("USER") > max(i for i, s in enumerate(steps) if s == "RUN")
    (entry,) = final.args("ENTRYPOINT")
    assert json.loads(entry) == ["routemesh"]
    # The uid the Dockerfile creates is the one it switches to.
    created = " ".join(final.args("RUN"))
    assert f"--uid {user.split(':')[0]}" in created


def test_runtime_has_the_dataplane_tools_and_cleans_apt_lists(parsed):
    _args, stages = parsed
    runs = stages[-1].args("RUN")
    (apt,) = [r for r in runs if "apt-get install" in r]
    assert "--no-install-recommends" in apt and "rm -rf /var/lib/apt/lists/*" in apt
    for tool in ("iproute2", "iptables", "ipset"):
        assert re.search(rf"\b{tool}\b", apt), tool
    assert all("--no-cache-dir" in r for r in runs if "pip " in r)


def test_ports_and_healthcheck(parsed):
    _args, stages = parsed
    final = stages[-1]
    ports = {p for rest in final.args("EXPOSE") for p in rest.split()}
    assert ports == {"179", str(DEFAULT_PORT)}
    (health,) = final.args("HEALTHCHECK")
    assert f"127.0.0.1:{DEFAULT_PORT}/livez" in health


def test_usage_comment_documents_host_network_and_privileged():
    text = (ROOT / "Dockerfile").read_text()
    assert "--net=host --privileged" in text
    assert "bgpd -f /etc/routemesh/rr.toml" in text
