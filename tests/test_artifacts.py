"""Recognising, validating and importing artifacts (HF, GGUF, PEFT adapter, ONNX GenAI),
failure atomicity (interrupted copy, full disk) and pulling a hub model from a local cache."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from slmops.errors import InvalidModelError, SlmopsError
from slmops.models.artifacts import (
    detect_format,
    gguf_file,
    gguf_parameters,
    import_model,
    inspect,
    safetensors_parameters,
)
from slmops.models.store import ModelStore

# -- builders ---------------------------------------------------------------------------------


def write_gguf(path: Path) -> int:
    """A small valid GGUF with three float32 tensors; returns its parameter count."""
    import gguf
    import numpy as np

    tensors = {
        "token_embd.weight": np.arange(32, dtype=np.float32).reshape(4, 8),
        "blk.0.attn_norm.weight": np.ones(16, dtype=np.float32),
        "output.weight": np.zeros((2, 3, 4), dtype=np.float32),
    }
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sum(a.size for a in tensors.values())


def write_adapter(folder: Path, base: str = "org/some-base-model") -> int:
    """A PEFT LoRA adapter folder; returns its parameter count."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 4),
    }
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
              "base_model_name_or_path": base, "task_type": "CAUSAL_LM"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return sum(t.numel() for t in tensors.values())


def write_onnx_genai(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"type": "llama", "decoder": {}}}))
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx-placeholder")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def copy_model(src: Path, dst: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst, ignore=lambda _d, names: [n for n in names if n in without])
    return dst


def tmp_leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.tmp_dir.iterdir() if p.suffix != ".lock")


def assert_nothing_registered(store: ModelStore, name: str) -> None:
    assert store.find(name) is None
    assert not (store.models_dir / name).exists() or not any((store.models_dir / name).iterdir())
    assert tmp_leftovers(store) == []


def tensor_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            total += sum(st.get_tensor(k).numel() for k in st.keys())  # noqa: SIM118 - a safe_open handle is not a dict
    return total


# -- detect_format / inspect --------------------------------------------------------------------
def test_detects_a_hugging_face_folder(tiny_model_dir: Path):
    assert detect_format(tiny_model_dir) == "hf"
    fmt, params = inspect(tiny_model_dir)
    assert fmt == "hf" and params == tensor_count(tiny_model_dir) > 0


def test_detects_gguf_file_and_folder_and_counts_parameters(tmp_path: Path):
    path = tmp_path / "model.gguf"
    expected = write_gguf(path)
    assert detect_format(path) == "gguf"
    assert gguf_parameters(path) == expected == 32 + 16 + 24
    assert inspect(path) == ("gguf", expected)
    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    shutil.copy(path, folder / "m.gguf")
    assert detect_format(folder) == "gguf"
    assert gguf_file(folder) == folder / "m.gguf"
    shutil.copy(path, folder / "second.gguf")
    with pytest.raises(InvalidModelError, match="exactly one"):
        inspect(folder)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_gguf_is_reported_as_truncated_or_corrupt(tmp_path: Path, keep: float):
    path = tmp_path / "model.gguf"
    write_gguf(path)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(int(size * keep) // 4 * 4)
    with pytest.raises(InvalidModelError, match="truncated or corrupt") as info:
        gguf_parameters(path)
    assert str(path) in str(info.value)


def test_garbage_gguf_is_rejected(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        inspect(path)


def test_detects_a_peft_adapter(tmp_path: Path):
    folder = tmp_path / "adapter"
    expected = write_adapter(folder)
    assert detect_format(folder) == "peft-adapter"
    assert inspect(folder) == ("peft-adapter", expected)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidModelError, match="adapter_model.safetensors"):
        inspect(folder)


def test_detects_an_onnx_genai_folder(tmp_path: Path):
    folder = write_onnx_genai(tmp_path / "onnx")
    assert detect_format(folder) == "onnx-genai"
    assert inspect(folder) == ("onnx-genai", 0)
    (folder / "model.onnx").unlink()
    with pytest.raises(InvalidModelError, match=r"\.onnx"):
        inspect(folder)


def test_unrecognised_paths_are_clear_errors(tmp_path: Path):
    with pytest.raises(SlmopsError, match="does not exist"):
        detect_format(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(SlmopsError, match="not a .gguf"):
        detect_format(tmp_path / "weights.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlmopsError, match="config.json"):
        detect_format(tmp_path / "empty")


def test_hf_folder_without_tokenizer_is_invalid(tiny_model_dir: Path, tmp_path: Path):
    folder = copy_model(tiny_model_dir, tmp_path / "no-tok", without=("tokenizer.json",))
    with pytest.raises(InvalidModelError, match="tokenizer") as info:
        inspect(folder)
    assert str(folder) in str(info.value)


def test_hf_folder_without_weights_or_with_bad_config_is_invalid(tiny_model_dir: Path, tmp_path: Path):
    folder = copy_model(tiny_model_dir, tmp_path / "no-weights", without=("model.safetensors",))
    with pytest.raises(InvalidModelError, match="no weights"):
        inspect(folder)
    folder = copy_model(tiny_model_dir, tmp_path / "bad-config")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InvalidModelError, match="config.json is not valid JSON"):
        inspect(folder)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_is_invalid(tiny_model_dir: Path, tmp_path: Path, damage: str):
    folder = copy_model(tiny_model_dir, tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\x00\x01garbage" * 100)
    else:
        with weights.open("r+b") as fh:
            fh.truncate(weights.stat().st_size - 1000)
    with pytest.raises(InvalidModelError, match="safetensors") as info:
        inspect(folder)
    assert "model.safetensors" in str(info.value)
    with pytest.raises(InvalidModelError):
        safetensors_parameters([weights])


# -- import ---------------------------------------------------------------------------------------
def test_import_hf_folder_copies_files_and_writes_provenance(tiny_model_dir: Path, store: ModelStore):
    rec = import_model(store, tiny_model_dir, "tiny", recipe={"note": "first"})
    assert (rec.ref, rec.format, rec.parents) == ("tiny:1", "hf", [])
    assert rec.parameters == tensor_count(tiny_model_dir)
    assert rec.recipe == {"kind": "import", "source_path": str(tiny_model_dir.resolve()), "note": "first"}
    for src in tiny_model_dir.iterdir():
        assert (rec.path / src.name).read_bytes() == src.read_bytes()
    provenance = json.loads((rec.path / "slmops.json").read_text())
    assert provenance["name"] == "tiny" and provenance["format"] == "hf" and provenance["recipe"] == rec.recipe
    assert rec.size_bytes == sum(p.stat().st_size for p in rec.path.iterdir())
    assert not (tiny_model_dir / "slmops.json").exists()  # the source is untouched
    assert import_model(store, tiny_model_dir, "tiny").version == 2
    assert tmp_leftovers(store) == []


def test_import_gguf_file_stores_it_in_a_folder(tmp_path: Path, store: ModelStore):
    path = tmp_path / "model.gguf"
    expected = write_gguf(path)
    rec = import_model(store, path, "tiny-gguf")
    assert rec.format == "gguf" and rec.parameters == expected
    assert gguf_file(rec.path).read_bytes() == path.read_bytes()
    assert inspect(rec.path) == ("gguf", expected)


def test_import_onnx_genai_folder(tmp_path: Path, store: ModelStore):
    rec = import_model(store, write_onnx_genai(tmp_path / "onnx"), "tiny-onnx")
    assert rec.format == "onnx-genai" and rec.parameters is None
    assert (rec.path / "model.onnx").exists() and (rec.path / "genai_config.json").exists()


def test_import_of_an_invalid_model_registers_nothing(tiny_model_dir: Path, tmp_path: Path, store: ModelStore):
    folder = copy_model(tiny_model_dir, tmp_path / "no-tok", without=("tokenizer.json",))
    with pytest.raises(InvalidModelError, match="tokenizer"):
        import_model(store, folder, "tiny")
    assert_nothing_registered(store, "tiny")


@pytest.mark.parametrize("name", ["../x", "a/b", ".."])
def test_import_rejects_traversal_names(tiny_model_dir: Path, store: ModelStore, name: str):
    with pytest.raises(SlmopsError, match="Invalid model name"):
        import_model(store, tiny_model_dir, name)
    assert store.list() == [] and list(store.models_dir.iterdir()) == []
    assert not (store.home / "x").exists() and tmp_leftovers(store) == []


def test_import_adapter_with_base_records_the_parent(tiny_model_dir: Path, tmp_path: Path, store: ModelStore):
    import_model(store, tiny_model_dir, "tiny")
    import_model(store, tiny_model_dir, "tiny")
    store.set_alias("tiny:1", "prod")
    folder = tmp_path / "adapter"
    expected = write_adapter(folder)
    rec = import_model(store, folder, "tiny-lora", base="tiny@prod")
    assert rec.format == "peft-adapter" and rec.parameters == expected
    assert rec.parents == ["tiny:1"] and rec.base == "tiny:1"  # the alias is pinned to its version
    assert json.loads((rec.path / "slmops.json").read_text())["parents"] == ["tiny:1"]
    with pytest.raises(SlmopsError, match="tiny-lora:1"):
        store.remove("tiny:1")
    assert store.remove("tiny:2")  # the other version has no dependants


def test_import_adapter_finds_a_base_named_in_its_config(tiny_model_dir: Path, tmp_path: Path, store: ModelStore):
    import_model(store, tiny_model_dir, "tiny")
    import_model(store, tiny_model_dir, "tiny")
    folder = tmp_path / "adapter"
    write_adapter(folder, base="tiny")
    assert import_model(store, folder, "tiny-lora").parents == ["tiny:2"]


@pytest.mark.parametrize("base", [None, "not-in-store"])
def test_import_adapter_without_its_base_in_the_store_is_a_clear_error(tmp_path: Path, store: ModelStore, base):
    folder = tmp_path / "adapter"
    write_adapter(folder, base="org/some-base-model")
    with pytest.raises(SlmopsError, match="base model in the store") as info:
        import_model(store, folder, "tiny-lora", base=base)
    assert "--base" in str(info.value)
    assert_nothing_registered(store, "tiny-lora")


# -- failures during the copy ------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.EIO, "Input/output error")])
def test_import_interrupted_halfway_leaves_no_trace(tiny_model_dir: Path, store: ModelStore, monkeypatch, exc):
    real_copytree = shutil.copytree
    copied: list[str] = []

    def copy_then_fail(src, dst, *, follow_symlinks=True):
        if len(copied) == 2:
            raise exc
        copied.append(Path(src).name)
        return shutil.copy2(src, dst, follow_symlinks=follow_symlinks)

    def failing_copytree(src, dst, **kw):
        kw["copy_function"] = copy_then_fail
        return real_copytree(src, dst, **kw)

    monkeypatch.setattr("slmops.models.artifacts.shutil.copytree", failing_copytree)
    with pytest.raises(type(exc)):
        import_model(store, tiny_model_dir, "tiny")
    assert len(copied) == 2  # it really failed halfway
    assert_nothing_registered(store, "tiny")
    monkeypatch.undo()
    rec = import_model(store, tiny_model_dir, "tiny")
    assert rec.version == 1 and (rec.path / "model.safetensors").exists()


def _disk(free: int):
    def fake_disk_usage(_path):
        return shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - free, free)

    return fake_disk_usage


def test_import_refuses_when_the_disk_is_too_small(tiny_model_dir: Path, store: ModelStore, monkeypatch):
    monkeypatch.setattr("slmops.models.artifacts.shutil.disk_usage", _disk(1024))
    with pytest.raises(SlmopsError, match="disk space") as info:
        import_model(store, tiny_model_dir, "tiny")
    assert "0 MB free" in str(info.value)
    assert_nothing_registered(store, "tiny")


def _enospc_copyfile(monkeypatch, after: int) -> list[str]:
    """Make the file copies underneath copy2/copytree fail with ENOSPC after ``after`` files."""
    real_copyfile = shutil.copyfile
    copied: list[str] = []

    def copyfile(src, dst, *, follow_symlinks=True):
        if len(copied) >= after:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        copied.append(Path(src).name)
        return real_copyfile(src, dst, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(shutil, "copyfile", copyfile)
    monkeypatch.setattr("slmops.models.artifacts.shutil.disk_usage", _disk(5 * 2**30))
    return copied


def test_disk_full_while_copying_a_file_is_a_clear_error(tmp_path: Path, store: ModelStore, monkeypatch):
    path = tmp_path / "model.gguf"
    write_gguf(path)
    _enospc_copyfile(monkeypatch, after=0)
    with pytest.raises(SlmopsError, match="No space left") as info:
        import_model(store, path, "tiny-gguf")
    assert "nothing was registered" in str(info.value)
    assert_nothing_registered(store, "tiny-gguf")


def test_disk_full_while_copying_a_folder_is_a_clear_error(tiny_model_dir: Path, store: ModelStore, monkeypatch):
    """ENOSPC hits one file inside shutil.copytree, which collects per-file OSErrors into a
    shutil.Error (errno None): the user must still get the one clear 'No space left' error."""
    copied = _enospc_copyfile(monkeypatch, after=2)
    with pytest.raises(SlmopsError, match="No space left") as info:
        import_model(store, tiny_model_dir, "tiny")
    assert "nothing was registered" in str(info.value)
    assert len(copied) == 2
    assert_nothing_registered(store, "tiny")


# -- hub source against a local hub cache ------------------------------------------------------------
REPO = "org/name"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hub_cache(cache: Path, model_dir: Path, repo: str = REPO, *, without: tuple[str, ...] = ()) -> Path:
    """The huggingface_hub cache layout: blobs by hash, refs/main, snapshots/<commit>/ symlinks."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for f in sorted(model_dir.iterdir()):
        if f.name in without:
            continue
        data = f.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both into module constants at import time; the code reads the constants
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def register_hub_entry(monkeypatch: pytest.MonkeyPatch, name: str, repo: str = REPO):
    from slmops.models import catalog

    entry = catalog.CatalogEntry(
        name=name,
        description="A tiny model in a local hub cache (test).",
        source=catalog.HubSource(repo_id=repo),
        license="Apache-2.0",
        parameters=1,
        architecture="llama",
        chat_template=catalog.CHATML_TEMPLATE,
        template_name="chatml",
        size_on_disk_mb=1,
    )
    monkeypatch.setitem(catalog.CATALOG, name, entry)
    return entry


def test_pull_from_the_local_hub_cache_registers_a_runnable_model(
    tiny_model_dir: Path, hub_cache: Path, store: ModelStore, monkeypatch, tiny_engine
):
    from slmops.engines import open_engine
    from slmops.engines.base import GenerationParams, GenerationRequest
    from slmops.models.pull import pull

    build_hub_cache(hub_cache, tiny_model_dir)
    register_hub_entry(monkeypatch, "hub-tiny")
    result = pull("hub-tiny", store)
    rec = result.record
    assert not result.already_present
    assert (rec.ref, rec.format) == ("hub-tiny:1", "hf")
    assert rec.recipe["source"] == "hub:org/name@main" and rec.recipe["kind"] == "pull"
    assert rec.parameters == tensor_count(tiny_model_dir)
    # files are real copies, not links into the hub cache
    weights = rec.path / "model.safetensors"
    assert weights.is_file() and not weights.is_symlink()
    assert weights.read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert json.loads((rec.path / "slmops.json").read_text())["recipe"]["source"] == "hub:org/name@main"
    assert tmp_leftovers(store) == []

    again = pull("hub-tiny", store)
    assert again.already_present and again.record.ref == "hub-tiny:1"

    req = GenerationRequest(prompt="The capital of France is", params=GenerationParams(max_tokens=6))
    with open_engine("hub-tiny", store, threads=1) as engine:
        res = engine.generate([req])[0]
    assert 1 <= res.completion_tokens <= 6
    assert res.text == tiny_engine.generate([req])[0].text  # same weights, same greedy answer


def test_pull_from_hub_adds_the_catalog_chat_template_when_missing(
    tiny_model_dir: Path, hub_cache: Path, store: ModelStore, monkeypatch
):
    from slmops.models.pull import pull

    build_hub_cache(hub_cache, tiny_model_dir, without=("chat_template.jinja",))
    entry = register_hub_entry(monkeypatch, "hub-tiny")
    rec = pull("hub-tiny", store).record
    assert (rec.path / "chat_template.jinja").read_text() == entry.chat_template


def test_pull_of_a_repo_missing_from_the_cache_names_the_repo(
    tiny_model_dir: Path, hub_cache: Path, store: ModelStore, monkeypatch
):
    from slmops.models.pull import pull

    build_hub_cache(hub_cache, tiny_model_dir)  # a different repo is cached
    register_hub_entry(monkeypatch, "hub-missing", repo="org/missing-model")
    with pytest.raises(SlmopsError, match="org/missing-model"):
        pull("hub-missing", store)
    assert_nothing_registered(store, "hub-missing")
