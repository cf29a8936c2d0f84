"""Resource storage: Calico v3 resources as JSON values under fixed keys, with Calico's metadata.

Key layout (IPAM and the node read it directly, so it is fixed):
``/routemesh/v1/resources/<Kind>/<name>`` for cluster-scoped kinds and
``/routemesh/v1/resources/<Kind>/<namespace>/<name>`` for namespaced ones. The Kubernetes
NetworkPolicy is stored as kind ``KubernetesNetworkPolicy`` (Calico's own name for it) so it
never shares keys with Calico's NetworkPolicy.

The value is the JSON of ``to_dict`` plus ``uid`` and ``creationTimestamp``; ``resourceVersion``
is never stored: it is the key's mod_revision, filled in on every read, and an update must carry
the current one (optimistic concurrency, as ``calicoctl replace``). Every resource is validated
again, and pools are checked for overlap against the stored pools, before anything is written;
pool writes hold a leased lock key (``/routemesh/v1/locks/IPPool``) so two concurrent writers
cannot each store a pool overlapping the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bgpd.datastore.base import (
    Datastore,
    KeyExistsError,
    KeyNotFoundError,
    RevisionConflictError,
)
from bgpd.model import (
    KINDS,
    FieldError,
    IPPool,
    K8sNetworkPolicy,
    Resource,
    ResourceError,
    check_pool_overlap,
    from_dict,
    to_dict,
)

PREFIX = "/routemesh/v1/resources/"
# Serializes IPPool writes (see ResourceStore._serialized); not a resource key.
POOL_LOCK = "/routemesh/v1/locks/IPPool"
LOCK_TTL = 15
# Metadata the store owns: whatever a manifest says for these is replaced.
STORE_METADATA = ("resourceVersion", "uid", "creationTimestamp")


class ResourceStoreError(Exception):
    """A resource operation failed for a reason other than validation (see ResourceError)."""


class ResourceNotFoundError(ResourceStoreError):
    def __init__(self, ident: str) -> None:
        super().__init__(f"resource does not exist: {ident}")
        self.ident = ident


class ResourceExistsError(ResourceStoreError):
    def __init__(self, ident: str) -> None:
        super().__init__(f"resource already exists: {ident}")
        self.ident = ident


class ResourceConflictError(ResourceStoreError):
    """An update carried no resourceVersion, or one that is no longer current."""

    def __init__(self, ident: str, reason: str) -> None:
        super().__init__(f"update conflict: {ident}: {reason}")
        self.ident = ident


def kind_segment(cls: type[Resource]) -> str:
    """The <Kind> part of the key for a resource class."""
    return "KubernetesNetworkPolicy" if cls is K8sNetworkPolicy else cls.KIND


# <Kind> key segment -> class; built from the model's own explicit KINDS table.
CLASSES: dict[str, type[Resource]] = {kind_segment(cls): cls for cls in KINDS.values()}


def resource_class(kind: str | type[Resource]) -> type[Resource]:
    """A class from a class or a key segment ("IPPool", "KubernetesNetworkPolicy")."""
    if isinstance(kind, type):
        return kind
    try:
        return CLASSES[kind]
    except KeyError:
        raise ResourceStoreError(f"unknown resource kind {kind!r}") from None


def resource_key(cls: type[Resource], name: str, namespace: str | None = None) -> str:
    if cls.NAMESPACED:
        return f"{PREFIX}{kind_segment(cls)}/{namespace or 'default'}/{name}"
    return f"{PREFIX}{kind_segment(cls)}/{name}"


def kind_prefix(cls: type[Resource], namespace: str | None = None) -> str:
    """Key prefix of every resource of a kind (in one namespace, if given and namespaced)."""
    if cls.NAMESPACED and namespace is not None:
        return f"{PREFIX}{kind_segment(cls)}/{namespace}/"
    return f"{PREFIX}{kind_segment(cls)}/"


def ident(cls: type[Resource], name: str, namespace: str | None = None) -> str:
    """How calicoctl names a resource in messages: IPPool(pool1), NetworkPolicy(ns/name)."""
    if cls.NAMESPACED:
        return f"{cls.KIND}({namespace or 'default'}/{name})"
    return f"{cls.KIND}({name})"


def resource_ident(resource: Resource) -> str:
    return ident(type(resource), resource.name, resource.namespace)


def parse_key(key: str) -> tuple[type[Resource], str | None, str] | None:
    """(class, namespace, name) of a resource key, or None if it is not one."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX) :].split("/")
    cls = CLASSES.get(parts[0])
    if cls is None:
        return None
    if cls.NAMESPACED and len(parts) == 3:
        return cls, parts[1], parts[2]
    if not cls.NAMESPACED and len(parts) == 2:
        return cls, None, parts[1]
    return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode(key: str, value: bytes, revision: int) -> Resource:
    body = json.loads(value)
    body.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return from_dict(body, source=key)


@dataclass(frozen=True)
class ResourceEvent:
    """A change seen by ``ResourceStore.watch``; ``resource`` is None for deletes."""

    type: Literal["put", "delete"]
    kind: type[Resource]
    namespace: str | None
    name: str
    resource: Resource | None
    revision: int


class ResourceStore:
    """get/list/create/update/apply/delete/watch of resources over any Datastore."""

    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore

    # --- reads ----------------------------------------------------------------------------------

    async def get(
        self, kind: str | type[Resource], name: str, namespace: str | None = None
    ) -> Resource:
        cls = resource_class(kind)
        key = resource_key(cls, name, namespace)
        kv = await self.datastore.get(key)
        if kv is None:
            raise ResourceNotFoundError(ident(cls, name, namespace))
        return _decode(key, kv.value, kv.mod_revision)

    async def list(
        self, kind: str | type[Resource], namespace: str | None = None
    ) -> list[Resource]:
        """Every resource of ``kind`` sorted by (namespace, name); namespace None means all."""
        items, _ = await self.list_with_revision(kind, namespace)
        return items

    async def list_with_revision(
        self, kind: str | type[Resource], namespace: str | None = None
    ) -> tuple[list[Resource], int]:
        """Like ``list``, plus the revision to watch from (+1) without a gap."""
        cls = resource_class(kind)
        kvs, revision = await self.datastore.list(kind_prefix(cls, namespace))
        out = []
        for kv in kvs:
            if parse_key(kv.key) is not None:
                out.append(_decode(kv.key, kv.value, kv.mod_revision))
        return out, revision

    # --- writes ---------------------------------------------------------------------------------

    async def _prepare(
        self, resource: Resource, uid: str | None, created: str | None
    ) -> tuple[str, bytes]:
        """Validate ``resource`` as a whole and against the store; return its key and value."""
        body = to_dict(resource)
        meta = dict(body.get("metadata") or {})
        for field in STORE_METADATA:
            meta.pop(field, None)
        meta["uid"] = uid or str(uuid.uuid4())
        meta["creationTimestamp"] = created or _now()
        body["metadata"] = meta
        # Validate what will be stored, not the object we were handed: a model built with
        # model_construct or mutated after validation must not slip through.
        checked = from_dict(body, source="<write>")
        if isinstance(checked, IPPool):
            pools = [p for p in await self.list(IPPool) if isinstance(p, IPPool)]
            check_pool_overlap(checked, pools)
        cls = type(checked)
        key = resource_key(cls, checked.name, checked.namespace)
        value = json.dumps(to_dict(checked), separators=(",", ":"), default=str).encode()
        return key, value

    @contextlib.asynccontextmanager
    async def _serialized(self, resource: Resource) -> AsyncIterator[None]:
        """Hold the pool lock while an IPPool is checked and written.

        The overlap check reads every pool and then writes one; two writers doing that at once
        could each store a pool overlapping the other's. The lock key lives outside the resource
        prefix and on a lease, so a writer that dies mid-way frees it within LOCK_TTL.
        """
        if not isinstance(resource, IPPool):
            yield
            return
        lease = await self.datastore.grant_lease(LOCK_TTL)
        try:
            delay = 0.01
            while True:
                try:
                    await self.datastore.create(POOL_LOCK, b"", lease=lease)
                    break
                except KeyExistsError:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(0.5, delay * 2)
            yield
        finally:
            await self.datastore.revoke_lease(lease)

    async def create(self, resource: Resource) -> Resource:
        """Store a new resource; ResourceExistsError if one of that name exists."""
        async with self._serialized(resource):
            key, value = await self._prepare(resource, None, None)
            try:
                revision = await self.datastore.create(key, value)
            except KeyExistsError:
                raise ResourceExistsError(resource_ident(resource)) from None
        return _decode(key, value, revision)

    async def update(self, resource: Resource) -> Resource:
        """Replace a stored resource. Its metadata.resourceVersion must be the current one."""
        rid = resource_ident(resource)
        version = resource.metadata.resource_version
        if not version:
            raise ResourceConflictError(
                rid,
                "metadata.resourceVersion must be set for a replace "
                "(get the current resource with -o yaml first)",
            )
        try:
            expected = int(version)
        except ValueError:
            raise ResourceError(
                [FieldError("metadata.resourceVersion", f"{version!r} is not a revision")]
            ) from None
        cls = type(resource)
        current = await self.datastore.get(resource_key(cls, resource.name, resource.namespace))
        if current is None:
            raise ResourceNotFoundError(rid)
        if current.mod_revision != expected:
            raise ResourceConflictError(
                rid, f"resourceVersion {expected} is stale (current: {current.mod_revision})"
            )
        return await self._update_from(resource, current.value, expected)

    async def _update_from(self, resource: Resource, stored: bytes, revision: int) -> Resource:
        old_meta = json.loads(stored).get("metadata", {})
        async with self._serialized(resource):
            key, value = await self._prepare(
                resource, old_meta.get("uid"), old_meta.get("creationTimestamp")
            )
            try:
                new_revision = await self.datastore.update(key, value, revision=revision)
            except KeyNotFoundError:
                raise ResourceNotFoundError(resource_ident(resource)) from None
            except RevisionConflictError as exc:
                raise ResourceConflictError(
                    resource_ident(resource),
                    f"resourceVersion {revision} is stale (current: {exc.actual})",
                ) from None
        return _decode(key, value, new_revision)

    async def apply(self, resource: Resource) -> Resource:
        """Create, or update whatever is stored (as ``calicoctl apply``: no revision needed).

        A given resourceVersion is still honoured, so a stale apply fails rather than clobbers.
        """
        cls = type(resource)
        key = resource_key(cls, resource.name, resource.namespace)
        for _ in range(10):
            current = await self.datastore.get(key)
            if current is None:
                try:
                    return await self.create(resource)
                except ResourceExistsError:
                    continue
            if resource.metadata.resource_version:
                return await self.update(resource)
            try:
                return await self._update_from(resource, current.value, current.mod_revision)
            except (ResourceConflictError, ResourceNotFoundError):
                continue  # changed under us between the read and the write: read again
        raise ResourceConflictError(resource_ident(resource), "kept changing; try again")

    async def delete(
        self,
        kind: str | type[Resource],
        name: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
    ) -> Resource:
        """Delete and return the resource; with ``resource_version``, only if still current."""
        cls = resource_class(kind)
        key = resource_key(cls, name, namespace)
        rid = ident(cls, name, namespace)
        current = await self.datastore.get(key)
        if current is None:
            raise ResourceNotFoundError(rid)
        revision = int(resource_version) if resource_version else current.mod_revision
        try:
            await self.datastore.delete(key, revision=revision)
        except KeyNotFoundError:
            raise ResourceNotFoundError(rid) from None
        except RevisionConflictError as exc:
            raise ResourceConflictError(
                rid, f"resourceVersion {revision} is stale (current: {exc.actual})"
            ) from None
        return _decode(key, current.value, current.mod_revision)

    # --- watch ----------------------------------------------------------------------------------

    async def watch(
        self,
        kind: str | type[Resource] | None = None,
        *,
        start_revision: int,
        namespace: str | None = None,
    ) -> AsyncIterator[ResourceEvent]:
        """Changes to resources (of one kind, or all) from ``start_revision`` on."""
        prefix = PREFIX if kind is None else kind_prefix(resource_class(kind), namespace)
        async for ev in self.datastore.watch(prefix, start_revision=start_revision):
            parsed = parse_key(ev.key)
            if parsed is None:
                continue
            cls, ns, name = parsed
            resource = None
            if ev.kind == "put" and ev.value is not None:
                resource = _decode(ev.key, ev.value, ev.revision)
            yield ResourceEvent(ev.kind, cls, ns, name, resource, ev.revision)


def strip_store_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """A ``to_dict`` body without the metadata the store adds, for comparing with a manifest."""
    out = dict(body)
    meta = {k: v for k, v in (out.get("metadata") or {}).items() if k not in STORE_METADATA}
    out["metadata"] = meta
    return out
