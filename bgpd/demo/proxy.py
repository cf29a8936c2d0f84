"""A TCP relay that makes an etcd outside the demo's namespaces reachable from inside them.

The demo's hosts are namespaces: `127.0.0.1:2379` there is not the operator's etcd. The relay
listens on the router's underlay address (a socket opened inside the router namespace) and
connects out from the root namespace, where the etcd URL the operator gave means what they
meant. Bytes pass through untouched, so gRPC and its HTTP/2 streams (watches) just work.

Run as `python -m bgpd.demo.proxy NETNS LISTEN_HOST:PORT TARGET_HOST:PORT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys

from bgpd.fib.netlink import in_netns

CHUNK = 65536


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def listen_in(netns: str, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket bound inside ``netns`` (it keeps that namespace for life)."""

    def make() -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
        return sock

    return in_netns(netns, make)


def main(argv: list[str] | None = None) -> int:
    """Entry point: relay LISTEN (in NETNS) to TARGET (in our namespace) until killed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python -m bgpd.demo.proxy NETNS LISTEN_HOST:PORT TARGET_HOST:PORT")
    netns, listen, target = args
    listener = listen_in(netns, _hostport(listen))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listener, _hostport(target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
