"""The `routemesh` and `bgpd` commands: argument parsing and the verb table.

Each verb group lives in its own module and is listed in `VERBS` explicitly, so nothing is
registered by the side effect of an import. A verb's module is imported only when that verb
runs (or when the whole parser is wanted, for help): `bgpd` alone must not carry the agent,
policy and demo code, which is about 24 MiB of a daemon's resident memory.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
# name -> (help, module, name of its add_arguments, name of its run); `run` returns the exit code.
VERBS: dict[str, tuple[str, str, str, str]] = {
    "demo": ("run the demo lab in network namespaces", "bgpd.cli.demo", "add_args", "run"),
    "bgpd": ("run the standalone BGP daemon", "bgpd.cli.bgp", "add_daemon_args", "run_daemon_cmd"),
    "bgp": (
        "ask a running bgpd (status, routes, refresh)",
        "bgpd.cli.bgp",
        "add_bgp_args",
        "run_bgp_cmd",
    ),
    "selector": ("evaluate a Calico selector", "bgpd.cli.selector", "add_args", "run"),
    "ipam": (
        "IP address management: show, check, release, configure",
        "bgpd.cli.ipam",
        "add_args",
        "run",
    ),
    "policy": (
        "explain which policies decide an endpoint's traffic",
        "bgpd.cli.policy",
        "add_args",
        "run",
    ),
    "apply": ("create or update resources", "bgpd.cli.resources", "add_file_args", "run_apply"),
    "create": (
        "create resources from a file",
        "bgpd.cli.resources",
        "add_create_args",
        "run_create",
    ),
    "replace": (
        "update resources by version",
        "bgpd.cli.resources",
        "add_file_args",
        "run_replace",
    ),
    "delete": ("delete resources", "bgpd.cli.resources", "add_delete_args", "run_delete"),
    "get": ("show resources of a kind", "bgpd.cli.resources", "add_get_args", "run_get"),
    "label": (
        "set or remove a resource label",
        "bgpd.cli.resources",
        "add_label_args",
        "run_label",
    ),
    "endpoint": (
        "workload endpoints by hand: add, del, list",
        "bgpd.cli.endpoint",
        "add_args",
        "run",
    ),
    "node": (
        "run this host's node, or show its status and diagnostics",
        "bgpd.cli.node",
        "add_args",
        "run",
    ),
    "version": ("print the version", "bgpd.cli.main", "_version_args", "_version_run"),
}


def verb(name: str) -> tuple[AddArgs, Run]:
    """The add_arguments and run functions of one verb, importing its module now."""
    _help, module, add_args, run = VERBS[name]
    mod = importlib.import_module(module)
    return getattr(mod, add_args), getattr(mod, run)


def _version_args(parser: argparse.ArgumentParser) -> None:
    return None


def _version_run(args: argparse.Namespace) -> int:
    return _version()


def _version() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        print(f"routemesh {version('routemesh')}")
    except PackageNotFoundError:
        print("routemesh (not installed)")
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` every verb listed but only that one filled in."""
    parser = argparse.ArgumentParser(
        prog="routemesh", description="Calico-style L3 container networking"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (helptext, *_rest) in VERBS.items():
        sp = sub.add_parser(name, help=helptext, description=helptext)
        if only is None or name == only:
            verb(name)[0](sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `routemesh`."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    first = args_in[0] if args_in else None
    parser = build_parser(first if first in VERBS else None)
    args = parser.parse_args(args_in)
    try:
        return verb(args.verb)[1](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def bgpd_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bgpd`: the same as `routemesh bgpd`."""
    from bgpd.cli import bgp

    parser = argparse.ArgumentParser(prog="bgpd", description="routemesh BGP daemon")
    bgp.add_daemon_args(parser)
    return bgp.run_daemon_cmd(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
