"""The `routemesh` and `bgpd` commands: argument parsing and the verb table.

Each verb group lives in its own module and is listed in `VERBS` explicitly, so nothing is
registered by the side effect of an import.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from bgpd.cli import bgp, demo, endpoint, ipam, node, policy, resources, selector

# name -> (help, add_arguments, run); `run` returns the exit code.
Verb = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
VERBS: dict[str, Verb] = {
    "demo": ("run the demo lab in network namespaces", demo.add_args, demo.run),
    "bgpd": ("run the standalone BGP daemon", bgp.add_daemon_args, bgp.run_daemon_cmd),
    "bgp": ("ask a running bgpd (status, routes, refresh)", bgp.add_bgp_args, bgp.run_bgp_cmd),
    "selector": ("evaluate a Calico selector", selector.add_args, selector.run),
    "ipam": ("IP address management: show, check, release, configure", ipam.add_args, ipam.run),
    "policy": ("explain which policies decide an endpoint's traffic", policy.add_args, policy.run),
    "apply": ("create or update resources", resources.add_file_args, resources.run_apply),
    "create": ("create resources from a file", resources.add_create_args, resources.run_create),
    "replace": ("update resources by version", resources.add_file_args, resources.run_replace),
    "delete": ("delete resources", resources.add_delete_args, resources.run_delete),
    "get": ("show resources of a kind", resources.add_get_args, resources.run_get),
    "label": ("set or remove a resource label", resources.add_label_args, resources.run_label),
    "endpoint": ("workload endpoints by hand: add, del, list", endpoint.add_args, endpoint.run),
    "node": ("run this host's node, or show its status and diagnostics", node.add_args, node.run),
    "version": ("print the version", lambda p: None, lambda a: _version()),
}


def _version() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        print(f"routemesh {version('routemesh')}")
    except PackageNotFoundError:
        print("routemesh (not installed)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routemesh", description="Calico-style L3 container networking"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name, (helptext, add_args, _run) in VERBS.items():
        add_args(sub.add_parser(name, help=helptext, description=helptext))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `routemesh`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return VERBS[args.verb][2](args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def bgpd_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bgpd`: the same as `routemesh bgpd`."""
    parser = argparse.ArgumentParser(prog="bgpd", description="routemesh BGP daemon")
    bgp.add_daemon_args(parser)
    return bgp.run_daemon_cmd(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
