"""ModelStore behaviour: references, versions, aliases, removal, lineage guards, name
validation, crash safety and two processes writing at once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slmops.errors import ModelNotFoundError, SlmopsError
from slmops.models.store import ModelRecord, ModelStore

ROOT = Path(__file__).resolve().parent.parent


def add(store: ModelStore, name: str, fmt: str = "hf", payload: bytes = b"weights", **kw) -> ModelRecord:
    """Stage a one-file artifact and register it."""
    with store.staging("test") as stage:
        (stage / "weights.bin").write_bytes(payload)
        return store.add(stage, name, fmt, **kw)  # type: ignore[arg-type]


def tmp_leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir() if p.suffix != ".lock")


def version_dirs(store: ModelStore, name: str) -> list[str]:
    d = store.models_dir / name
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# -- add / get / list / versions --------------------------------------------------------------
def test_add_assigns_increasing_versions_and_moves_the_folder(store: ModelStore):
    r1 = add(store, "tiny", payload=b"one")
    r2 = add(store, "tiny", payload=b"two", parameters=123, recipe={"kind": "test"}, metrics={"acc": 0.5})
    assert (r1.version, r2.version) == (1, 2)
    assert r1.path == store.models_dir / "tiny" / "v1"
    assert (r2.path / "weights.bin").read_bytes() == b"two"
    assert r2.size_bytes == 3 and r2.parameters == 123
    assert r2.recipe == {"kind": "test"} and r2.metrics == {"acc": 0.5}
    assert r2.created_at
    assert tmp_leftovers(store) == []  # the staging folders are gone


def test_get_resolves_name_version_and_alias(store: ModelStore):
    add(store, "tiny", payload=b"1")
    add(store, "tiny", payload=b"22")
    add(store, "other")
    assert store.get("tiny").version == 2  # bare name = latest
    assert store.get("tiny:1").version == 1
    assert store.get("tiny:1").ref == "tiny:1"
    store.set_alias("tiny:1", "prod")
    assert store.get("tiny@prod").version == 1
    assert store.get("tiny@prod").path.joinpath("weights.bin").read_bytes() == b"1"
    assert [r.ref for r in store.list()] == ["other:1", "tiny:1", "tiny:2"]
    assert [r.version for r in store.versions("tiny")] == [1, 2]
    assert store.names() == ["other", "tiny"]


def test_get_errors_name_what_is_missing(store: ModelStore):
    add(store, "tiny")
    add(store, "tiny")
    with pytest.raises(ModelNotFoundError, match=r"No version 7 of 'tiny' \(versions: 1, 2\)"):
        store.get("tiny:7")
    with pytest.raises(ModelNotFoundError, match="tiny@prod"):
        store.get("tiny@prod")
    with pytest.raises(ModelNotFoundError, match="Did you mean 'tiny'"):
        store.get("tinny")
    with pytest.raises(SlmopsError, match="version"):
        store.get("tiny:latest")
    assert store.find("nothing-here") is None


def test_store_is_persistent_across_instances(store: ModelStore):
    add(store, "tiny", metrics={"a": 1})
    store.set_alias("tiny", "prod")
    again = ModelStore(store.home)
    rec = again.get("tiny@prod")
    assert rec.ref == "tiny:1" and rec.metrics == {"a": 1} and rec.aliases == ["prod"]


def test_to_dict_has_the_documented_keys_and_is_json(store: ModelStore):
    rec = add(store, "tiny", parents=[], recipe={"kind": "import"}, parameters=7)
    store.set_alias("tiny:1", "prod")
    data = store.get("tiny").to_dict()
    expected = {"name", "version", "format", "path", "size_bytes", "parameters", "parents", "recipe", "metrics",
                "aliases"}
    assert expected <= set(data)
    assert data["name"] == "tiny" and data["version"] == 1 and data["format"] == "hf"
    assert data["path"] == str(rec.path) and Path(data["path"]).is_dir()
    assert data["aliases"] == ["prod"] and data["parameters"] == 7 and data["size_bytes"] == len(b"weights")
    assert json.loads(json.dumps(data)) == data


def test_unknown_format_is_rejected_before_anything_moves(store: ModelStore):
    with store.staging("test") as stage:
        (stage / "f").write_text("x")
        with pytest.raises(SlmopsError, match="format"):
            store.add(stage, "tiny", "safetensors")  # type: ignore[arg-type]
        assert (stage / "f").exists()
    assert store.list() == [] and version_dirs(store, "tiny") == []


# -- aliases -----------------------------------------------------------------------------------
def test_alias_moves_between_versions_and_can_be_removed(store: ModelStore):
    add(store, "tiny")
    add(store, "tiny")
    store.set_alias("tiny:1", "prod")
    store.set_alias("tiny:1", "staging")
    assert store.get("tiny:1").aliases == ["prod", "staging"]
    moved = store.set_alias("tiny:2", "prod")
    assert moved.ref == "tiny:2" and moved.aliases == ["prod"]
    assert store.get("tiny:1").aliases == ["staging"]
    assert store.get("tiny@prod").version == 2
    store.remove_alias("tiny", "staging")
    assert store.get("tiny:1").aliases == []
    with pytest.raises(ModelNotFoundError):
        store.get("tiny@staging")
    with pytest.raises(ModelNotFoundError):
        store.remove_alias("tiny", "staging")


@pytest.mark.parametrize("alias", ["Prod", "1st", "a b", "../x", ""])
def test_invalid_aliases_are_rejected(store: ModelStore, alias: str):
    add(store, "tiny")
    with pytest.raises(SlmopsError):
        store.set_alias("tiny:1", alias)
    assert store.get("tiny").aliases == []


# -- remove ------------------------------------------------------------------------------------
def test_remove_one_version_keeps_the_others(store: ModelStore):
    add(store, "tiny")
    add(store, "tiny")
    store.set_alias("tiny:1", "prod")
    gone = store.remove("tiny:1")
    assert [r.ref for r in gone] == ["tiny:1"]
    assert [r.version for r in store.versions("tiny")] == [2]
    assert version_dirs(store, "tiny") == ["v2"]
    with pytest.raises(ModelNotFoundError):  # the alias went with its version
        store.get("tiny@prod")
    assert tmp_leftovers(store) == []


def test_remove_by_alias_removes_that_version(store: ModelStore):
    add(store, "tiny")
    add(store, "tiny")
    store.set_alias("tiny:2", "prod")
    assert [r.ref for r in store.remove("tiny@prod")] == ["tiny:2"]
    assert [r.ref for r in store.list()] == ["tiny:1"]


def test_remove_name_removes_every_version_and_the_folder(store: ModelStore):
    add(store, "tiny")
    add(store, "tiny")
    add(store, "other")
    gone = store.remove("tiny")
    assert sorted(r.ref for r in gone) == ["tiny:1", "tiny:2"]
    assert store.versions("tiny") == []
    assert not (store.models_dir / "tiny").exists()
    assert [r.ref for r in store.list()] == ["other:1"]
    assert tmp_leftovers(store) == []
    with pytest.raises(ModelNotFoundError):
        store.remove("tiny")


def test_remove_refuses_a_base_that_an_adapter_names_as_parent(store: ModelStore):
    add(store, "base")
    add(store, "base")
    add(store, "adapter", "peft-adapter", parents=["base:1"])
    for ref in ("base", "base:1"):
        with pytest.raises(SlmopsError, match=r"adapter:1") as info:
            store.remove(ref)
        assert "--force" in str(info.value)
    assert [r.ref for r in store.versions("base")] == ["base:1", "base:2"]
    assert version_dirs(store, "base") == ["v1", "v2"]
    # a version nobody depends on can go
    assert [r.ref for r in store.remove("base:2")] == ["base:2"]
    # removing the adapter and then its base is fine
    store.remove("adapter")
    assert [r.ref for r in store.remove("base")] == ["base:1"]


def test_remove_with_force_removes_the_base_and_keeps_the_adapter(store: ModelStore):
    add(store, "base")
    adapter = add(store, "adapter", "peft-adapter", parents=["base:1"])
    assert adapter.base == "base:1"
    store.remove("base", force=True)
    assert store.versions("base") == [] and not (store.models_dir / "base").exists()
    assert store.get("adapter").parents == ["base:1"]


def test_version_numbers_are_never_reused_after_removal(store: ModelStore):
    """Lineage names parents as ``name:version``; a removed version's number must not come back
    for a different artifact (MLflow semantics), or a kept adapter would silently point at it."""
    add(store, "tiny")
    add(store, "tiny")
    store.remove("tiny:2")
    assert add(store, "tiny").version == 3
    add(store, "base", payload=b"original base")
    add(store, "adapter", "peft-adapter", parents=["base:1"])
    store.remove("base", force=True)
    assert add(store, "base", payload=b"a different model").version == 2
    assert store.find(store.get("adapter").parents[0]) is None


def test_store_references_do_not_depend_on_the_working_directory(store: ModelStore, tmp_path: Path, monkeypatch):
    """A file or folder in the current directory that happens to share a model's name must not
    turn `models show/rm/alias NAME` into a path lookup."""
    add(store, "tiny")
    cwd = tmp_path / "work"
    (cwd / "tiny").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert store.get("tiny").ref == "tiny:1"
    assert store.set_alias("tiny", "prod").aliases == ["prod"]
    assert [r.ref for r in store.remove("tiny")] == ["tiny:1"]


# -- metrics -------------------------------------------------------------------------------------
def test_update_metrics_merges_and_persists(store: ModelStore):
    add(store, "tiny", metrics={"accuracy": 0.5, "latency_ms": 10})
    rec = store.update_metrics("tiny:1", {"accuracy": 0.75, "rouge_l": 0.4})
    assert rec.metrics == {"accuracy": 0.75, "latency_ms": 10, "rouge_l": 0.4}
    assert ModelStore(store.home).get("tiny").metrics == rec.metrics
    store.set_alias("tiny", "prod")
    store.update_metrics("tiny@prod", {"latency_ms": 8})
    assert store.get("tiny").metrics["latency_ms"] == 8
    with pytest.raises(ModelNotFoundError):
        store.update_metrics("tiny:2", {"x": 1})


# -- name validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "a/b", "..", "a..b", "/etc/passwd", "Tiny", "-x", "x" * 101, ""])
def test_path_traversal_and_bad_names_are_rejected(store: ModelStore, name: str):
    with store.staging("test") as stage:
        (stage / "f").write_text("x")
        with pytest.raises(SlmopsError):
            store.add(stage, name, "hf")
        assert (stage / "f").exists()  # nothing moved
    assert store.list() == []
    assert list(store.models_dir.iterdir()) == []
    assert not (store.home / "x").exists() and not (store.home.parent / "x").exists()


@pytest.mark.parametrize("ref", ["../x", "a/b", "../x@prod", "a/b:1"])
def test_path_like_references_are_not_store_lookups(store: ModelStore, ref: str):
    with pytest.raises(SlmopsError, match="path"):
        store.get(ref)
    with pytest.raises(SlmopsError, match="path"):
        store.remove(ref)


def test_lock_names_are_validated(store: ModelStore):
    with pytest.raises(SlmopsError):
        store.lock("../../evil")
    assert store.lock("pull-tiny").lock_file == str(store.tmp_dir / "pull-tiny.lock")


# -- crash debris ----------------------------------------------------------------------------------
def test_a_version_folder_without_a_row_is_replaced_by_the_next_add(store: ModelStore):
    """A process killed between the rename and the index insert leaves models/NAME/v1 behind."""
    debris = store.models_dir / "tiny" / "v1"
    debris.mkdir(parents=True)
    (debris / "half-written.bin").write_bytes(b"junk")
    rec = add(store, "tiny", payload=b"good")
    assert rec.version == 1
    assert sorted(p.name for p in rec.path.iterdir()) == ["weights.bin"]
    assert (rec.path / "weights.bin").read_bytes() == b"good"


def test_clean_tmp_removes_old_debris_but_keeps_locks(store: ModelStore):
    (store.tmp_dir / "import-dead").mkdir()
    (store.tmp_dir / "import-dead" / "part").write_bytes(b"x")
    (store.tmp_dir / "stray-file").write_bytes(b"x")
    (store.tmp_dir / "pull-x.lock").write_text("")
    assert store.clean_tmp() == 0  # too recent with the default age
    assert store.clean_tmp(older_than_s=0) == 2
    assert sorted(p.name for p in store.tmp_dir.iterdir()) == ["pull-x.lock"]


# -- two processes ----------------------------------------------------------------------------------
IMPORTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.005)
    from slmops.models.artifacts import import_model
    from slmops.models.store import ModelStore
    store = ModelStore()  # both processes also race to create the index
    for _ in range(int(sys.argv[3])):
        rec = import_model(store, Path(sys.argv[1]), "tiny")
        print(rec.version, flush=True)
    """
)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ, SLMOPS_HOME=str(home), PYTHONPATH=str(ROOT / "src"))
    env.pop("SLMOPS_DEBUG", None)
    return env


def test_two_processes_importing_at_once_get_distinct_versions(tiny_model_dir: Path, home: Path, tmp_path: Path):
    per_process = 4
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", IMPORTER, str(tiny_model_dir), str(go), str(per_process)],
            env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.2)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    printed = sorted(int(v) for out, _ in outputs for v in out.split())
    total = 2 * per_process
    assert printed == list(range(1, total + 1))

    store = ModelStore(home)
    recs = store.versions("tiny")
    assert [r.version for r in recs] == list(range(1, total + 1))
    source_weights = (tiny_model_dir / "model.safetensors").read_bytes()
    for r in recs:
        assert r.path.is_dir()
        assert (r.path / "model.safetensors").read_bytes() == source_weights
        assert json.loads((r.path / "slmops.json").read_text())["name"] == "tiny"
    assert version_dirs(store, "tiny") == sorted(f"v{i}" for i in range(1, total + 1))
    with sqlite3.connect(home / "index.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT version) FROM models").fetchone() == (total, total)
    assert tmp_leftovers(store) == []


KILLED_IMPORTER = textwrap.dedent(
    """
    import os, shutil, sys, time
    from pathlib import Path
    src, marker, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    real_copytree, real_replace = shutil.copytree, os.replace

    def stalled_copy(s, d, *, follow_symlinks=True):
        # copy half of the big file, tell the parent, then hang until killed
        if Path(s).name == "big.bin" and where == "copy":
            data = Path(s).read_bytes()
            with open(d, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
            marker.touch()
            time.sleep(120)
        return shutil.copy2(s, d, follow_symlinks=follow_symlinks)

    def copytree(s, d, **kw):
        kw["copy_function"] = stalled_copy
        return real_copytree(s, d, **kw)

    def replace(a, b):
        real_replace(a, b)
        if where == "rename" and Path(b).parent.parent.name == "models":
            marker.touch()  # the folder is in place, the index row is not
            time.sleep(120)

    shutil.copytree = copytree
    os.replace = replace
    from slmops.models.artifacts import import_model
    from slmops.models.store import ModelStore
    import_model(ModelStore(), src, "big")
    """
)


@pytest.fixture()
def big_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    folder = tmp_path / "big-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "big.bin").write_bytes(os.urandom(2 * 2**20))
    return folder


def _kill_when_marked(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the importer ended before the kill point: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the importer never reached the kill point")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("where", ["copy", "rename"])
def test_sigkill_during_import_leaves_nothing_registered(big_model_dir: Path, home: Path, tmp_path: Path, where: str):
    from slmops.models.artifacts import import_model

    marker = tmp_path / "marker"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_IMPORTER, str(big_model_dir), str(marker), where],
        env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _kill_when_marked(proc, marker)

    store = ModelStore(home)
    assert store.find("big") is None and store.list() == []
    if where == "copy":
        assert version_dirs(store, "big") == []  # the half-copied folder is debris under tmp/ at most
    else:
        assert version_dirs(store, "big") == ["v1"]  # moved in, but never registered

    # the store lock died with the process; the next import takes version 1 cleanly
    rec = import_model(store, big_model_dir, "big")
    assert rec.version == 1 and [r.ref for r in store.list()] == ["big:1"]
    assert (rec.path / "big.bin").read_bytes() == (big_model_dir / "big.bin").read_bytes()
    assert version_dirs(store, "big") == ["v1"]
    store.clean_tmp(older_than_s=0)
    assert tmp_leftovers(store) == []
