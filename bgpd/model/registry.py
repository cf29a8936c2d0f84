"""The kind table (one explicit map from (apiVersion, kind) to model class) and the YAML front
door: load_documents, from_dict, to_dict and to_yaml, with errors that name the field."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .base import CALICO_API, FieldError, Resource, ResourceError, SpecError
from .bgp import BGPConfiguration, BGPFilter, BGPPeer, Node
from .endpoints import HostEndpoint, WorkloadEndpoint
from .ipam import IPAMConfiguration, IPPool, IPReservation
from .k8s import K8S_NETWORKING_API, K8sNetworkPolicy
from .policy import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkPolicy,
    NetworkSet,
    Profile,
    Tier,
)

# Every kind routemesh accepts. Adding a kind means adding a row here; nothing registers itself
# on import (ExaBGP #359 is what silent side-effect registration costs).
KINDS: dict[tuple[str, str], type[Resource]] = {
    (CALICO_API, "BGPConfiguration"): BGPConfiguration,
    (CALICO_API, "BGPPeer"): BGPPeer,
    (CALICO_API, "BGPFilter"): BGPFilter,
    (CALICO_API, "Node"): Node,
    (CALICO_API, "IPPool"): IPPool,
    (CALICO_API, "IPAMConfiguration"): IPAMConfiguration,
    (CALICO_API, "IPReservation"): IPReservation,
    (CALICO_API, "WorkloadEndpoint"): WorkloadEndpoint,
    (CALICO_API, "HostEndpoint"): HostEndpoint,
    (CALICO_API, "NetworkPolicy"): NetworkPolicy,
    (CALICO_API, "GlobalNetworkPolicy"): GlobalNetworkPolicy,
    (CALICO_API, "Profile"): Profile,
    (CALICO_API, "NetworkSet"): NetworkSet,
    (CALICO_API, "GlobalNetworkSet"): GlobalNetworkSet,
    (CALICO_API, "Tier"): Tier,
    (K8S_NETWORKING_API, "NetworkPolicy"): K8sNetworkPolicy,
}


# --- YAML ---------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML keeps the last one silently, which turns a
    pasted-twice `spec:` into a resource the user never meant."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    index = 0
    try:
        for index, doc in enumerate(yaml.load_all(text, Loader=_StrictLoader), start=1):
            yield index, doc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        # A constructor error (duplicate key, bad tag) is well-formed YAML we still refuse.
        label = (
            "YAML error"
            if isinstance(exc, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ResourceError(
            [
                FieldError(
                    source=source,
                    document=index + 1,
                    path="",
                    reason=f"{label} at {where}{problem}",
                )
            ]
        ) from None


# --- validation ---------------------------------------------------------------------------------


def _join(base: str, rel: str) -> str:
    if not rel:
        return base
    if not base or rel.startswith("["):
        return base + rel
    return f"{base}.{rel}"


def _loc_path(loc: Iterable[Any]) -> str:
    path = ""
    for part in loc:
        path = _join(path, f"[{part}]" if isinstance(part, int) else str(part))
    return path


def _strip_optional(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` down to X (the first non-None member of a union)."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            annotation = members[0]
        else:
            return annotation


def _model_at(model: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    """The model class that validates the object at `loc` (wire names) inside `model`."""
    current: Any = model
    for part in loc:
        current = _strip_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = {f.alias or n: f for n, f in current.model_fields.items()}
            if part not in fields:
                return None
            current = fields[part].annotation
        elif get_origin(current) in (list, dict):
            current = get_args(current)[-1]
        else:
            return None
    current = _strip_optional(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _squash(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _unknown_field_reason(model: type[BaseModel], loc: list[Any]) -> str:
    field = str(loc[-1])
    parent = _model_at(model, loc[:-1])
    known = [f.alias or n for n, f in parent.model_fields.items()] if parent else []
    # Case and separators first (asnumber, peer_ip), then plain typos (ordr).
    by_squash = {_squash(name): name for name in known}
    hint = by_squash.get(_squash(field)) or next(
        iter(difflib.get_close_matches(field, known, n=1, cutoff=0.75)), None
    )
    if hint:
        return f"unknown field {field!r} (did you mean {hint}?)"
    return f"unknown field {field!r}"


# Pydantic's wording names Python classes ("instance of IPPoolSpec"); say it in YAML terms.
_TYPE_MESSAGES = {
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "float_type": "must be a number",
}


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _reasons(model: type[BaseModel], exc: ValidationError) -> Iterator[tuple[str, str]]:
    for err in exc.errors():
        loc = list(err["loc"])
        etype = err["type"]
        error = err.get("ctx", {}).get("error")
        if isinstance(error, SpecError):
            base = _loc_path(loc)
            for rel, reason in error.problems:
                yield _join(base, rel), reason
            continue
        if etype == "extra_forbidden":
            yield _loc_path(loc), _unknown_field_reason(model, loc)
            continue
        if etype == "missing":
            yield _loc_path(loc), "required field missing"
            continue
        msg = _TYPE_MESSAGES.get(etype, err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if msg.startswith("Input should be "):
            msg = "must be " + msg.removeprefix("Input should be ")
        if etype in _TYPE_MESSAGES or etype == "literal_error":
            msg = f"{msg}, got {_show(err.get('input'))}"
        yield _loc_path(loc), msg


def _validate(
    data: Any, source: str, document: int | None, path: str = ""
) -> tuple[Resource | None, list[FieldError]]:
    """Dispatch one resource mapping through KINDS and validate it."""

    def error(field: str, reason: str, kind: str | None = None, name: str | None = None):
        return FieldError(
            source=source, document=document, kind=kind, name=name, path=field, reason=reason
        )

    if not isinstance(data, dict):
        got = _show(data) if isinstance(data, list) or data is None else type(data).__name__
        got = {"str": "a string", "int": "a number", "float": "a number"}.get(got, got)
        return None, [
            error(path, f"expected a mapping (apiVersion, kind, metadata, spec), got {got}")
        ]
    api, kind = data.get("apiVersion"), data.get("kind")
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    name = name if isinstance(name, str) else None
    kind_s = kind if isinstance(kind, str) else None
    problems = []
    if not isinstance(api, str):
        problems.append(error(_join(path, "apiVersion"), "required field missing", kind_s, name))
    if not isinstance(kind, str):
        problems.append(error(_join(path, "kind"), "required field missing", None, name))
    if problems:
        return None, problems
    cls = KINDS.get((api, kind))
    if cls is None:
        versions = sorted(a for a, k in KINDS if k == kind)
        if versions:
            reason = f"{kind} is apiVersion {' or '.join(versions)}, not {api!r}"
            return None, [error(_join(path, "apiVersion"), reason, kind, name)]
        known = ", ".join(sorted({k for _, k in KINDS}))
        reason = f"unknown kind {kind!r} (routemesh knows {known})"
        return None, [error(_join(path, "kind"), reason, kind, name)]
    try:
        return cls.model_validate(data, by_alias=True, by_name=False), []
    except ValidationError as exc:
        return None, [
            error(_join(path, field), reason, kind, name) for field, reason in _reasons(cls, exc)
        ]


def _validate_document(
    data: Any, source: str, document: int
) -> tuple[list[Resource], list[FieldError]]:
    # `calicoctl get -o yaml` / `kubectl get -o yaml` print a List; accept it back as its items.
    if (
        isinstance(data, dict)
        and isinstance(data.get("kind"), str)
        and data["kind"].endswith("List")
    ):
        items = data.get("items")
        if not isinstance(items, list):
            return [], [
                FieldError("items", "a List needs an items list", source, document, data["kind"])
            ]
        resources: list[Resource] = []
        errors: list[FieldError] = []
        for i, item in enumerate(items):
            res, errs = _validate(item, source, document, f"items[{i}]")
            errors.extend(errs)
            if res is not None:
                resources.append(res)
        return resources, errors
    res, errs = _validate(data, source, document)
    return ([res] if res is not None else []), errs


# --- public API ---------------------------------------------------------------------------------


def load_documents(text: str, source: str = "<stdin>") -> list[Resource]:
    """Parse a multi-document YAML stream into resources, in order. Empty documents are skipped.

    Raises ResourceError listing every problem of every document (or the YAML syntax error).
    """
    resources: list[Resource] = []
    errors: list[FieldError] = []
    for index, doc in _yaml_documents(text, source):
        if doc is None:
            continue
        found, errs = _validate_document(doc, source, index)
        resources.extend(found)
        errors.extend(errs)
    if errors:
        raise ResourceError(errors)
    return resources


def from_dict(data: Mapping[str, Any], source: str = "<datastore>") -> Resource:
    """Validate one resource given as a plain mapping (e.g. JSON read back from the store)."""
    res, errors = _validate(dict(data) if isinstance(data, Mapping) else data, source, None)
    if errors or res is None:
        raise ResourceError(errors)
    return res


def to_dict(resource: Resource) -> dict[str, Any]:
    """The resource in Calico's shape: camelCase, only the fields the user set (plus what the
    store added to metadata), apiVersion and kind first."""
    body = resource.model_dump(mode="python", by_alias=True, exclude_unset=True)
    body.pop("apiVersion", None)
    body.pop("kind", None)
    return {"apiVersion": resource.API_VERSION, "kind": resource.KIND, **body}


def to_yaml(resources: Resource | Iterable[Resource]) -> str:
    """YAML text of one resource, or of several separated by `---`."""
    if isinstance(resources, Resource):
        resources = [resources]
    return "---\n".join(
        yaml.safe_dump(to_dict(r), sort_keys=False, default_flow_style=False) for r in resources
    )
