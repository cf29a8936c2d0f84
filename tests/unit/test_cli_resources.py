"""`routemesh apply|create|replace|delete|get|label` against a SQLite store in a temp dir:
calicoctl's messages and exit codes, the shared examples round-tripping, and the broken twins
refused with the field named and nothing written."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from bgpd.cli.main import main
from bgpd.datastore.resources import PREFIX, strip_store_metadata
from bgpd.datastore.sqlite import SqliteDatastore
from bgpd.model import load_documents, to_dict

EXAMPLES = Path("/work/shared/examples")
# The field each broken twin gets wrong (see the comment at the top of each file).
INVALID_FIELDS = {
    "peer-unknown-field.yaml": "spec.asnumber",
    "policy-bad-selector.yaml": "spec.selector",
    "pool-bad-blocksize.yaml": "spec.blockSize",
    "pool-ipip-on-v6.yaml": "spec.ipipMode",
}


class Cli:
    def __init__(self, capsys, db: Path) -> None:
        self.capsys = capsys
        self.db = db
        self.url = f"sqlite://{db}"

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--datastore", self.url])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def keys(self) -> list[str]:
        async def read() -> list[str]:
            ds = SqliteDatastore(self.db)
            try:
                kvs, _ = await ds.list(PREFIX)
                return [kv.key for kv in kvs]
            finally:
                await ds.close()

        return asyncio.run(read())


@pytest.fixture
def cli(capsys, tmp_path) -> Cli:
    return Cli(capsys, tmp_path / "store.db")


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def pool_yaml(name: str, cidr: str, extra: str = "") -> str:
    return (
        f"apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: {name}\n{extra}"
        f"spec:\n  cidr: {cidr}\n"
    )


# --- the shared examples ------------------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_applies_and_reads_back_identical(cli, example):
    path = EXAMPLES / example
    originals = load_documents(path.read_text(), str(path))
    code, out, err = cli("apply", "-f", str(path))
    assert (code, err) == (0, "")
    assert out.startswith(f"Successfully applied {len(originals)} ")
    for res in originals:
        argv = ["get", res.KIND if res.API_VERSION.startswith("projectcalico") else "knp"]
        argv += [res.name, "-o", "yaml"]
        if res.NAMESPACED:
            argv += ["-n", res.namespace]
        code, out, err = cli(*argv)
        assert code == 0, err
        (back,) = load_documents(out)
        assert back.metadata.resource_version and back.metadata.uid
        assert strip_store_metadata(to_dict(back)) == strip_store_metadata(to_dict(res))


def test_the_invalid_examples_are_all_covered():
    assert sorted(p.name for p in (EXAMPLES / "invalid").glob("*.yaml")) == sorted(INVALID_FIELDS)


@pytest.mark.parametrize("verb", ["apply", "create"])
@pytest.mark.parametrize("broken", sorted(INVALID_FIELDS))
def test_every_broken_twin_is_refused_naming_the_field_and_nothing_is_written(cli, broken, verb):
    code, out, err = cli(verb, "-f", str(EXAMPLES / "invalid" / broken))
    assert code == 1
    assert out == ""
    assert err.startswith("Failed to execute command: ")
    assert f": {INVALID_FIELDS[broken]}: " in err
    assert cli.keys() == []


def test_one_bad_document_stops_the_whole_file(cli, tmp_path):
    good = pool_yaml("ok", "10.244.0.0/16")
    bad = pool_yaml("bad", "10.245.0.0/16").replace("cidr:", "blockSize: 19\n  cidr:")
    code, _, err = cli("apply", "-f", write(tmp_path, "mixed.yaml", good + "---\n" + bad))
    assert code == 1 and "document 2 (IPPool bad): spec.blockSize" in err
    assert cli.keys() == []


# --- apply / create / replace / delete ----------------------------------------------------------


def test_messages_name_the_kind_when_there_is_one(cli, tmp_path):
    f = write(
        tmp_path,
        "p.yaml",
        pool_yaml("a", "10.244.0.0/24") + "---\n" + pool_yaml("b", "10.244.1.0/24"),
    )
    assert cli("apply", "-f", f) == (0, "Successfully applied 2 'IPPool' resource(s)\n", "")
    assert cli("apply", "-f", f)[0] == 0  # applying again is an update, not an error


def test_create_partial_failure_exits_1_and_keeps_what_was_created(cli, tmp_path):
    cli("create", "-f", write(tmp_path, "b.yaml", pool_yaml("b", "10.244.1.0/24")))
    both = write(
        tmp_path,
        "ab.yaml",
        pool_yaml("a", "10.244.0.0/24") + "---\n" + pool_yaml("b", "10.244.1.0/24"),
    )
    code, out, err = cli("create", "-f", both)
    assert code == 1 and out == ""
    assert err == (
        "Partial success: created the first 1 out of 2 'IPPool' resources:\n"
        "Hit error: resource already exists: IPPool(b)\n"
    )
    assert cli.keys() == [f"{PREFIX}IPPool/a", f"{PREFIX}IPPool/b"]
    code, out, err = cli(
        "create", "-f", write(tmp_path, "b2.yaml", pool_yaml("b", "10.244.1.0/24"))
    )
    assert code == 1
    assert err == "Failed to create 'IPPool' resource: [resource already exists: IPPool(b)]\n"
    code, out, _ = cli("create", "-f", both, "--skip-exists")
    assert code == 0 and "Skipped 2 resource(s)" in out


def test_overlapping_pools_are_refused_before_any_write(cli, tmp_path):
    f = write(
        tmp_path,
        "o.yaml",
        pool_yaml("a", "10.244.0.0/16") + "---\n" + pool_yaml("b", "10.244.3.0/24"),
    )
    code, _, err = cli("apply", "-f", f)
    assert code == 1 and "spec.cidr: 10.244.3.0/24 overlaps IPPool a" in err
    assert cli.keys() == []
    cli("apply", "-f", write(tmp_path, "a.yaml", pool_yaml("a", "10.244.0.0/16")))
    code, _, err = cli("create", "-f", write(tmp_path, "c.yaml", pool_yaml("c", "10.244.0.0/20")))
    assert code == 1 and "overlaps IPPool a" in err
    assert cli.keys() == [f"{PREFIX}IPPool/a"]


def test_replace_needs_the_current_resource_version(cli, tmp_path):
    plain = write(tmp_path, "p.yaml", pool_yaml("a", "10.244.0.0/24"))
    cli("create", "-f", plain)
    code, _, err = cli("replace", "-f", plain)
    assert code == 1 and "resourceVersion must be set" in err
    code, current, _ = cli("get", "ippool", "a", "-o", "yaml")
    edited = write(
        tmp_path,
        "e.yaml",
        current.replace("cidr: 10.244.0.0/24", "cidr: 10.244.0.0/24\n  disabled: true"),
    )
    assert cli("replace", "-f", edited) == (0, "Successfully replaced 1 'IPPool' resource(s)\n", "")
    code, _, err = cli("replace", "-f", edited)  # the same, now stale, version again
    assert code == 1 and "update conflict: IPPool(a)" in err and "stale" in err
    assert "disabled: true" in cli("get", "ippool", "a", "-o", "yaml")[1]


def test_delete_by_file_and_by_name(cli, tmp_path):
    f = write(
        tmp_path,
        "p.yaml",
        pool_yaml("a", "10.244.0.0/24") + "---\n" + pool_yaml("b", "10.244.1.0/24"),
    )
    cli("apply", "-f", f)
    assert cli("delete", "ippool", "a") == (0, "Successfully deleted 1 'IPPool' resource(s)\n", "")
    code, _, err = cli("delete", "ippool", "a")
    assert (
        code == 1
        and err == "Failed to delete 'IPPool' resource: [resource does not exist: IPPool(a)]\n"
    )
    assert cli("delete", "ippool", "a", "--skip-not-exists")[0] == 0
    code, _, err = cli("delete", "-f", f)
    assert code == 1 and "resource does not exist: IPPool(a)" in err
    code, out, _ = cli("delete", "-f", f, "--skip-not-exists")
    assert code == 0 and out.startswith("Successfully deleted 1 'IPPool' resource(s)")
    assert cli.keys() == []


def test_reading_stdin(cli, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(pool_yaml("s", "10.244.0.0/24")))
    assert cli("apply", "-f", "-")[0] == 0
    assert cli.keys() == [f"{PREFIX}IPPool/s"]


def test_a_missing_file_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "nope.yaml: No such file or directory" in err


# --- get ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["ippool", "ippools", "IPPool", "ipp", "pools"])
def test_kind_aliases(cli, tmp_path, alias):
    cli("apply", "-f", write(tmp_path, "p.yaml", pool_yaml("a", "10.244.0.0/24")))
    code, out, _ = cli("get", alias)
    assert code == 0
    assert out.splitlines() == ["NAME   CIDR            SELECTOR", "a      10.244.0.0/24   all()"]


def test_get_errors(cli):
    code, _, err = cli("get", "ippool", "nope")
    assert code == 1 and err == "Failed to get resources: resource does not exist: IPPool(nope)\n"
    code, _, err = cli("get", "frobnicator")
    assert code == 1 and "resource type 'frobnicator' is not supported" in err


def test_get_namespaces(cli, tmp_path):
    docs = "---\n".join(
        f"apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: {n}\n"
        f"  namespace: {ns}\nspec:\n  selector: all()\n"
        for ns, n in (("default", "d1"), ("team", "t1"), ("team", "t2"))
    )
    cli("apply", "-f", write(tmp_path, "np.yaml", docs))
    assert cli("get", "networkpolicy")[1].split() == ["NAME", "d1"]
    assert cli("get", "policies", "-n", "team")[1].split() == ["NAME", "t1", "t2"]
    assert cli("get", "networkpolicies", "-A")[1].splitlines() == [
        "NAMESPACE   NAME",
        "default     d1",
        "team        t1",
        "team        t2",
    ]
    assert cli("get", "networkpolicy", "t1")[0] == 1
    assert cli("get", "networkpolicy", "t1", "-n", "team")[0] == 0


def test_get_json_and_yaml_are_stable_lists_that_apply_takes_back(cli, tmp_path):
    f = write(
        tmp_path,
        "p.yaml",
        pool_yaml("b", "10.244.1.0/24") + "---\n" + pool_yaml("a", "10.244.0.0/24"),
    )
    cli("apply", "-f", f)
    first, second = cli("get", "ippool", "-o", "json")[1], cli("get", "ippool", "-o", "json")[1]
    assert first == second
    body = json.loads(first)
    assert body["kind"] == "IPPoolList"
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    listed = cli("get", "ippool", "-o", "yaml")[1]
    assert cli("apply", "-f", write(tmp_path, "back.yaml", listed)) == (
        0,
        "Successfully applied 2 'IPPool' resource(s)\n",
        "",
    )


def test_get_wide_shows_pool_modes(cli, tmp_path):
    cli("apply", "-f", str(EXAMPLES / "cluster.yaml"))
    lines = cli("get", "ippool", "-o", "wide")[1].splitlines()
    assert lines[0].split() == [
        "NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR",
    ]  # fmt: skip
    assert lines[1].split() == [
        "default-ipv4-ippool", "10.244.0.0/16", "true", "Never", "CrossSubnet", "false", "false",
        "all()",
    ]  # fmt: skip


# --- label --------------------------------------------------------------------------------------


def test_label_set_overwrite_remove(cli, tmp_path):
    cli("apply", "-f", str(EXAMPLES / "route-reflectors.yaml"))
    node = next(
        r
        for r in load_documents((EXAMPLES / "route-reflectors.yaml").read_text())
        if r.KIND == "Node"
    )
    n = node.name
    assert cli("label", "nodes", n, "zone=a") == (
        0,
        f"Successfully set label zone on nodes {n}\n",
        "",
    )
    code, _, err = cli("label", "nodes", n, "zone=b")
    assert code == 1 and "use --overwrite" in err
    assert cli("label", "nodes", n, "zone=b", "--overwrite")[0] == 0
    got = cli("get", "node", n, "-o", "json")[1]
    assert json.loads(got)["metadata"]["labels"]["zone"] == "b"
    assert cli("label", "node", n, "zone", "--remove") == (
        0,
        f"Successfully removed label zone from node {n}\n",
        "",
    )
    code, _, err = cli("label", "node", n, "zone", "--remove")
    assert code == 1 and "label zone is not set" in err
    code, _, err = cli("label", "node", n, "bad key!=x")
    assert code == 1 and "metadata.labels" in err
    code, _, err = cli("label", "node", "ghost", "a=b")
    assert code == 1 and "resource does not exist: Node(ghost)" in err
