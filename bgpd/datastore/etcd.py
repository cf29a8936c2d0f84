"""The datastore contract over etcd v3, through aetcd's generated gRPC stubs on grpc.aio.

aetcd's high-level ``Client`` only dials one plaintext endpoint, so this module owns the channel
itself: several endpoints tried in turn, TLS with a CA and a client certificate, reconnect with
capped exponential back-off, CAS as transactions on ``mod_revision``, create as a transaction on
``create_revision == 0``, and a watch that resumes from the last revision it delivered.

Writes wait (with back-off) for a ready channel before they are sent, so a write issued while
etcd is down goes through once it is back. A write that fails after it was sent raises
UnavailableError, because it may or may not have been applied; reads are retried freely.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from aetcd import rpc

from bgpd.datastore.base import (
    CompactedError,
    Datastore,
    DatastoreError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    LeaseNotFoundError,
    RevisionConflictError,
    UnavailableError,
    WatchEvent,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# gRPC's own reconnect back-off defaults to a 120 s ceiling; a restarted etcd should be found
# within a couple of seconds.
_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True)
class EtcdTls:
    """PEM file paths. ``ca`` alone gives server-authenticated TLS; add cert+key for mTLS."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise DatastoreError("etcd TLS: cert and key must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "cacert"),
            private_key=_read_pem(self.key, "key"),
            certificate_chain=_read_pem(self.cert, "cert"),
        )


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        # The path is configuration, not a secret; the file's content never appears anywhere.
        raise DatastoreError(f"etcd TLS: cannot read {what} file {path}: {exc.strerror}") from None


class Backoff:
    """Capped exponential back-off with jitter: 50 ms, 100 ms, ... up to ``cap``."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self.first, self.cap, self.delay = first, cap, first

    def reset(self) -> None:
        self.delay = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay * random.uniform(0.75, 1.25))
        self.delay = min(self.cap, self.delay * 2)


def _range_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"; b'\\0' means to the end."""
    s = bytearray(prefix)
    for i in reversed(range(len(s))):
        if s[i] < 0xFF:
            s[i] += 1
            return bytes(s[: i + 1])
    return b"\0"


def _kv(kv: Any) -> KeyValue:
    return KeyValue(
        key=kv.key.decode(),
        value=bytes(kv.value),
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        lease=kv.lease,
    )


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel, endpoint: str) -> None:
        self.channel = channel
        self.endpoint = endpoint
        self.kv = rpc.KVStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)


class EtcdDatastore(Datastore):
    """etcd v3 backend. ``endpoints`` are "host:port" strings, tried in order on failure."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: EtcdTls | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        retry_for: float = 30.0,
    ) -> None:
        if not endpoints:
            raise DatastoreError("etcd: no endpoints given")
        self._endpoints = list(endpoints)
        self._next = 0
        self._credentials = tls.credentials() if tls is not None else None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._retry_for = retry_for
        self._stubs: _Stubs | None = None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    # --- connection -----------------------------------------------------------------------------

    def _dial(self) -> _Stubs:
        endpoint = self._endpoints[self._next % len(self._endpoints)]
        self._next += 1
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(endpoint, self._credentials, _CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(endpoint, _CHANNEL_OPTIONS)
        return _Stubs(channel, endpoint)

    async def _drop(self, stubs: _Stubs) -> None:
        """Forget a channel that failed, so the next call dials the next endpoint."""
        if self._stubs is stubs:
            self._stubs = None
            await stubs.channel.close()

    async def _connected(self, retry_for: float | None) -> _Stubs:
        """A channel in READY state, trying each endpoint in turn with back-off.

        ``retry_for`` None waits forever (watches); otherwise UnavailableError after that long.
        """
        loop = asyncio.get_running_loop()
        deadline = None if retry_for is None else loop.time() + retry_for
        backoff = Backoff()
        while True:
            # One attempt under the lock; the back-off sleep happens outside it, so a watch
            # waiting forever never holds up a get that has its own deadline.
            async with self._connect_lock:
                self._check()
                stubs = self._stubs
                if stubs is None:
                    stubs = self._stubs = self._dial()
                try:
                    await asyncio.wait_for(stubs.channel.channel_ready(), self._connect_timeout)
                    return stubs
                except (TimeoutError, grpc.aio.AioRpcError):
                    log.debug("etcd %s not ready; trying the next endpoint", stubs.endpoint)
                    await self._drop(stubs)
            if deadline is not None and loop.time() >= deadline:
                raise UnavailableError(
                    f"etcd: no endpoint reachable ({', '.join(self._endpoints)})"
                )
            await backoff.sleep()

    def _check(self) -> None:
        if self._closed:
            raise UnavailableError("etcd datastore is closed")

    def _error(self, exc: grpc.aio.AioRpcError, stubs: _Stubs, what: str) -> DatastoreError:
        code = exc.code()
        # etcd's details are fixed server strings ("etcdserver: ..."); they never echo values.
        details = exc.details() or ""
        where = f"etcd {stubs.endpoint}: {what}"
        if code in _RETRYABLE:
            return UnavailableError(f"{where}: {code.name}")
        if "lease not found" in details:
            return LeaseNotFoundError(f"{where}: lease not found")
        return DatastoreError(f"{where}: {code.name}: {details}")

    async def _call(
        self, what: str, fn: Callable[[_Stubs], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Run one RPC on a ready channel. Idempotent calls are retried on a lost connection."""
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        while True:
            stubs = await self._connected(max(0.0, deadline - loop.time()))
            try:
                return await fn(stubs)
            except grpc.aio.AioRpcError as exc:
                err = self._error(exc, stubs, what)
                if not isinstance(err, UnavailableError):
                    raise err from None
                await self._drop(stubs)
                if not idempotent or loop.time() >= deadline:
                    raise err from None
            await backoff.sleep()

    # --- key-value ------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        req = rpc.RangeRequest(key=key.encode())
        resp = await self._call(
            "get", lambda s: s.kv.Range(req, timeout=self._timeout), idempotent=True
        )
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        raw = prefix.encode()
        req = rpc.RangeRequest(
            key=raw or b"\0",
            range_end=_range_end(raw),
            sort_order=rpc.RangeRequest.SortOrder.ASCEND,
            sort_target=rpc.RangeRequest.SortTarget.KEY,
        )
        resp = await self._call(
            "list", lambda s: s.kv.Range(req, timeout=self._timeout), idempotent=True
        )
        return [_kv(kv) for kv in resp.kvs], resp.header.revision

    async def _txn(self, what: str, req: Any) -> Any:
        return await self._call(
            what, lambda s: s.kv.Txn(req, timeout=self._timeout), idempotent=False
        )

    @staticmethod
    def _compare(key: bytes, target: str, value: int) -> Any:
        field = {"CREATE": "create_revision", "MOD": "mod_revision"}[target]
        return rpc.Compare(
            key=key,
            result=rpc.Compare.CompareResult.EQUAL,
            target=getattr(rpc.Compare.CompareTarget, target),
            **{field: value},
        )

    @staticmethod
    def _put_op(key: bytes, value: bytes, lease: int) -> Any:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))

    @staticmethod
    def _range_op(key: bytes) -> Any:
        return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))

    def _current(self, resp: Any) -> KeyValue | None:
        kvs = resp.responses[0].response_range.kvs if resp.responses else []
        return _kv(kvs[0]) if kvs else None

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        raw = key.encode()
        req = rpc.TxnRequest(
            compare=[self._compare(raw, "CREATE", 0)],
            success=[self._put_op(raw, value, lease)],
        )
        resp = await self._txn("create", req)
        if not resp.succeeded:
            raise KeyExistsError(key)
        return resp.header.revision

    async def update(self, key: str, value: bytes, *, revision: int, lease: int = 0) -> int:
        raw = key.encode()
        req = rpc.TxnRequest(
            compare=[self._compare(raw, "MOD", revision)],
            success=[self._put_op(raw, value, lease)],
            failure=[self._range_op(raw)],
        )
        resp = await self._txn("update", req)
        if not resp.succeeded:
            current = self._current(resp)
            if current is None:
                raise KeyNotFoundError(key)
            raise RevisionConflictError(key, revision, current.mod_revision)
        return resp.header.revision

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        req = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        # Retrying an unconditional put cannot do harm: the second write leaves the same value.
        resp = await self._call(
            "put", lambda s: s.kv.Put(req, timeout=self._timeout), idempotent=True
        )
        return resp.header.revision

    async def delete(self, key: str, *, revision: int | None = None) -> int:
        raw = key.encode()
        if revision is None:
            # version > 0 <=> the key exists.
            compare = rpc.Compare(
                key=raw,
                result=rpc.Compare.CompareResult.GREATER,
                target=rpc.Compare.CompareTarget.VERSION,
                version=0,
            )
        else:
            compare = self._compare(raw, "MOD", revision)
        req = rpc.TxnRequest(
            compare=[compare],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=raw))],
            failure=[self._range_op(raw)],
        )
        resp = await self._txn("delete", req)
        if not resp.succeeded:
            current = self._current(resp)
            if current is None:
                raise KeyNotFoundError(key)
            raise RevisionConflictError(key, revision or 0, current.mod_revision)
        return resp.header.revision

    async def compact(self, revision: int) -> None:
        """Discard history before ``revision`` (etcd keeps ``revision`` itself)."""
        req = rpc.CompactionRequest(revision=revision, physical=True)
        await self._call(
            "compact", lambda s: s.kv.Compact(req, timeout=self._timeout), idempotent=True
        )

    # --- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchEvent]:
        raw = prefix.encode()
        create = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(key=raw or b"\0", range_end=_range_end(raw))
        )
        next_revision = start_revision
        backoff = Backoff()
        while True:
            stubs = await self._connected(None)
            create.create_request.start_revision = max(next_revision, 1)
            # Keep the request stream open: a half-closed stream is how a client says goodbye.
            hold = asyncio.Event()

            async def requests(req: Any = create, hold: asyncio.Event = hold) -> AsyncIterator[Any]:
                yield req
                await hold.wait()

            call = stubs.watch.Watch(requests())
            try:
                async for resp in call:
                    if resp.canceled:
                        if resp.compact_revision:
                            raise CompactedError(next_revision, resp.compact_revision)
                        raise DatastoreError(
                            f"etcd {stubs.endpoint}: watch canceled: {resp.cancel_reason}"
                        )
                    if resp.created:
                        backoff.reset()
                    for ev in resp.events:
                        kind = "delete" if ev.type == rpc.Event.EventType.DELETE else "put"
                        value = None if kind == "delete" else bytes(ev.kv.value)
                        rev = ev.kv.mod_revision
                        next_revision = rev + 1
                        yield WatchEvent(kind, ev.kv.key.decode(), value, rev)
                log.info("etcd %s ended the watch stream; re-watching", stubs.endpoint)
            except asyncio.CancelledError:
                # grpc cancels our call when close() shuts the channel; only a cancel of this
                # task itself is a real cancellation.
                task = asyncio.current_task()
                if self._closed and task is not None and not task.cancelling():
                    raise UnavailableError("etcd datastore is closed") from None
                raise
            except grpc.aio.AioRpcError as exc:
                self._check()  # closed under us: UnavailableError, as every backend says
                err = self._error(exc, stubs, "watch")
                # CANCELLED: another call found the channel dead and closed it under us.
                lost = exc.code() == grpc.StatusCode.CANCELLED and not self._closed
                if not isinstance(err, UnavailableError) and not lost:
                    raise err from None
                log.info("etcd watch lost (%s); re-watching from %d", err, next_revision)
                await self._drop(stubs)
            finally:
                hold.set()
                call.cancel()
            self._check()
            await backoff.sleep()

    # --- leases ---------------------------------------------------------------------------------

    async def grant_lease(self, ttl: int) -> int:
        req = rpc.LeaseGrantRequest(TTL=ttl, ID=0)
        resp = await self._call(
            "grant lease",
            lambda s: s.lease.LeaseGrant(req, timeout=self._timeout),
            idempotent=False,
        )
        if resp.error:
            raise DatastoreError(f"etcd: grant lease: {resp.error}")
        return resp.ID

    async def refresh_lease(self, lease: int) -> None:
        async def keepalive(s: _Stubs) -> Any:
            call = s.lease.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self._timeout
            )
            try:
                async for reply in call:
                    return reply
                return None
            finally:
                call.cancel()

        reply = await self._call("refresh lease", keepalive, idempotent=True)
        if reply is None or reply.TTL <= 0:
            raise LeaseNotFoundError(f"lease {lease:#x} not found")

    async def revoke_lease(self, lease: int) -> None:
        req = rpc.LeaseRevokeRequest(ID=lease)
        await self._call(
            "revoke lease",
            lambda s: s.lease.LeaseRevoke(req, timeout=self._timeout),
            idempotent=True,
        )

    async def close(self) -> None:
        self._closed = True
        stubs, self._stubs = self._stubs, None
        if stubs is not None:
            await stubs.channel.close()
