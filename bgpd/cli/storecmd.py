"""Running a CLI command against the datastore: open it from --datastore/env/config, run the
command's coroutine, print what it returns, close the store, and turn known errors into one
line on stderr with exit 1."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable

from bgpd.datastore.base import Datastore, DatastoreError
from bgpd.datastore.url import open_datastore, resolve_url

Output = tuple[str, str, int]  # stdout, stderr, exit code
Execute = Callable[[Datastore, argparse.Namespace], Awaitable[Output]]


def run_with_store(
    args: argparse.Namespace,
    execute: Execute,
    errors: tuple[type[BaseException], ...] = (),
    prefix: str = "routemesh",
) -> int:
    """Open the store named by ``args.datastore``, run ``execute`` and print its output."""
    try:
        store = open_datastore(resolve_url(args.datastore))
    except DatastoreError as exc:
        print(f"routemesh: {exc}", file=sys.stderr)
        return 1

    async def go() -> Output:
        try:
            return await execute(store, args)
        except (*errors, DatastoreError) as exc:
            return "", f"{prefix}: {exc}", 1
        finally:
            await store.close()

    out, err, code = asyncio.run(go())
    if out:
        print(out)
    if err:
        print(err, file=sys.stderr)
    return code
