"""`routemesh selector eval`: operators test a Calico selector against a set of labels."""

from __future__ import annotations

import argparse
import sys

from policy.selector import SelectorError, parse


def add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="selector_cmd", metavar="COMMAND")
    sub.required = True
    ev = sub.add_parser("eval", help="print true or false for EXPR against --labels")
    ev.add_argument("expr", metavar="EXPR")
    ev.add_argument("--labels", default="", help="k=v,k2=v2")


def parse_labels(text: str) -> dict[str, str]:
    """'k=v,k2=v2' into a dict; a pair without '=' is an error naming it."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"label {item!r} is not of the form key=value")
        labels[key.strip()] = value.strip()
    return labels


def run(args: argparse.Namespace) -> int:
    try:
        labels = parse_labels(args.labels)
    except ValueError as err:
        print(f"routemesh: --labels: {err}", file=sys.stderr)
        return 2
    try:
        sel = parse(args.expr)
    except SelectorError as err:
        print(f"routemesh: {err}", file=sys.stderr)
        return 2
    print("true" if sel.evaluate(labels) else "false")
    return 0
