"""The shared example manifests: every valid document loads and reads back identical; every
broken twin in invalid/ is rejected with a message naming the field its top comment names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bgpd.model import ResourceError, load_documents, to_dict, to_yaml

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))

# The field path each broken twin must be reported at, and a word of the reason. Keyed by file
# name so a new file in invalid/ fails test_every_invalid_file_is_mapped until it is listed.
INVALID_FIELD = {
    "peer-unknown-field.yaml": ("spec.asnumber", "unknown field"),
    "policy-bad-selector.yaml": ("spec.selector", "selector"),
    "pool-bad-blocksize.yaml": ("spec.blockSize", "between 20 and 32"),
    "pool-ipip-on-v6.yaml": ("spec.ipipMode", "IPv6"),
}

# Fields the store adds on write; the round-trip property holds modulo these.
STORE_FIELDS = ("resourceVersion", "creationTimestamp", "uid")


def _without_store_fields(doc: dict) -> dict:
    doc = dict(doc)
    doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k not in STORE_FIELDS}
    return doc


def _top_comment(path: Path) -> str:
    return path.read_text().splitlines()[0].lstrip("# ")


def test_examples_are_present() -> None:
    # Guards the glob: an empty directory would make every parametrised test vanish silently.
    assert len(VALID) >= 4
    assert len(INVALID) >= 4


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_example_loads_and_round_trips(path: Path) -> None:
    text = path.read_text()
    expected = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    resources = load_documents(text, source=path.name)
    assert len(resources) == len(expected)
    for resource, doc in zip(resources, expected, strict=True):
        assert resource.kind == doc["kind"]
        assert resource.name == doc["metadata"]["name"]
        assert _without_store_fields(to_dict(resource)) == doc


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_example_to_yaml_reloads_identically(path: Path) -> None:
    resources = load_documents(path.read_text(), source=path.name)
    again = load_documents(to_yaml(resources), source="to_yaml")
    assert [to_dict(r) for r in again] == [to_dict(r) for r in resources]


def test_every_invalid_file_is_mapped() -> None:
    assert {p.name for p in INVALID} == set(INVALID_FIELD)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_naming_the_field(path: Path) -> None:
    field, reason_word = INVALID_FIELD[path.name]
    with pytest.raises(ResourceError) as info:
        load_documents(path.read_text(), source=path.name)
    message = str(info.value)
    doc = yaml.safe_load(path.read_text())
    # The whole header, as the user reads it: file, document, kind and name, then the field.
    assert message.startswith(
        f"{path.name}: document 1 ({doc['kind']} {doc['metadata']['name']}): {field}: "
    ), message
    assert reason_word in message
    assert [e.path for e in info.value.errors] == [field]
    # The top comment names the field in its wire spelling; the path's last part must be it
    # (for the unknown-field twin, the misspelling the comment quotes).
    assert field.rsplit(".", 1)[1] in _top_comment(path)
