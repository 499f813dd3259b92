"""Recognise, validate and import model artifacts: HF folders, GGUF files, PEFT adapters,
ONNX GenAI folders. Validation reads headers only (fast) and names the problem and the fix."""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from math import prod
from pathlib import Path
from typing import Any

from slmops.errors import InvalidModelError, SlmopsError
from slmops.models.store import Format, ModelRecord, ModelStore, folder_size

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
PROVENANCE_FILE = "slmops.json"


def detect_format(path: Path) -> Format:
    if not path.exists():
        raise SlmopsError(f"{path} does not exist.", "Check the path.")
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise SlmopsError(
            f"{path} is a file but not a .gguf model.",
            "Import a GGUF file, or a folder (HF, PEFT adapter, ONNX GenAI).",
        )
    if (path / "adapter_config.json").exists():
        return "peft-adapter"
    if (path / "genai_config.json").exists():
        return "onnx-genai"
    if (path / "config.json").exists():
        return "hf"
    if list(path.glob("*.gguf")):
        return "gguf"
    raise SlmopsError(
        f"{path} is not a model folder I recognise.",
        "Expected config.json (Hugging Face), adapter_config.json (PEFT), genai_config.json (ONNX GenAI) or a .gguf.",
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{path} is not valid JSON ({exc}).", "Re-export or re-download the model.") from exc
    if not isinstance(data, dict):
        raise InvalidModelError(f"{path} should hold a JSON object.", "Re-export or re-download the model.")
    return data


def safetensors_parameters(files: list[Path]) -> int:
    """Parameter count from safetensors headers, without loading tensors."""
    from safetensors import safe_open

    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as st:
                total += sum(prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
        except Exception as exc:  # safetensors raises several error types for a bad header
            raise InvalidModelError(
                f"{f} is not a readable safetensors file ({exc}).", "The file is corrupt or truncated; re-export it."
            ) from exc
    return total


def gguf_parameters(path: Path) -> int:
    """Validate a GGUF file (header, tensor table, data extent) and count its parameters."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        count = sum(int(prod(int(d) for d in t.shape)) for t in reader.tensors)
    except Exception as exc:  # the reader raises ValueError/IndexError/... for a broken file
        raise InvalidModelError(
            f"{path} is not a valid GGUF file: it is truncated or corrupt ({type(exc).__name__}: {exc}).",
            "Download or export it again; for a built-in model run `slmops models pull NAME --force`.",
        ) from exc
    if count == 0:
        raise InvalidModelError(f"{path} holds no tensors.", "Download or export it again.")
    return count


def inspect_hf_folder(path: Path, *, need_tokenizer: bool = True) -> int:
    """Check a Hugging Face folder is complete; returns its parameter count."""
    _read_json(path / "config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not list(path.glob("pytorch_model*.bin")):
        raise InvalidModelError(f"{path} has config.json but no weights (*.safetensors).", "Save the model again.")
    if need_tokenizer and not any((path / f).exists() for f in TOKENIZER_FILES):
        raise InvalidModelError(
            f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}).",
            "Save the tokenizer into the folder too: tokenizer.save_pretrained(folder).",
        )
    return safetensors_parameters(weights) if weights else 0


def inspect_adapter(path: Path) -> tuple[dict[str, Any], int]:
    cfg = _read_json(path / "adapter_config.json")
    weights = sorted(path.glob("adapter_model*.safetensors"))
    if not weights:
        raise InvalidModelError(f"{path} has adapter_config.json but no adapter_model.safetensors.", "Save it again.")
    return cfg, safetensors_parameters(weights)


def inspect(path: Path) -> tuple[Format, int]:
    """Format and parameter count of an artifact on disk, validating it on the way."""
    fmt = detect_format(path)
    if fmt == "hf":
        return fmt, inspect_hf_folder(path)
    if fmt == "gguf":
        return fmt, gguf_parameters(gguf_file(path))
    if fmt == "peft-adapter":
        return fmt, inspect_adapter(path)[1]
    _read_json(path / "genai_config.json")
    if not list(path.glob("*.onnx")):
        raise InvalidModelError(f"{path} has genai_config.json but no .onnx model.", "Rebuild the ONNX model.")
    return fmt, 0


def gguf_file(path: Path) -> Path:
    """The .gguf file of a GGUF artifact (a file, or a folder holding exactly one)."""
    if path.is_file():
        return path
    files = sorted(path.glob("*.gguf"))
    if len(files) != 1:
        raise InvalidModelError(f"{path} should hold exactly one .gguf file (found {len(files)}).")
    return files[0]


class DiskFullError(SlmopsError):
    """The disk filled up mid-write; nothing was registered."""


def _disk_full(what: str, where: Path, exc: OSError) -> DiskFullError:
    free = shutil.disk_usage(where).free // 2**20
    err = DiskFullError(
        f"No space left on the device while {what} ({free} MB free under {where}).",
        "Free some space (or point SLMOPS_HOME at a larger disk) and run the command again; nothing was registered.",
    )
    err.__cause__ = exc
    return err


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_errors(what: str, where: Path) -> Iterator[None]:
    """Turn a full disk into a clear error; the caller's staging folder is cleaned up."""
    try:
        yield
    except OSError as exc:
        if _is_disk_full(exc):
            raise _disk_full(what, where, exc) from exc
        raise


def copy_artifact(src: Path, dst: Path, *, what: str, where: Path) -> None:
    """Copy a file or a folder (into ``dst``), stopping at the first full-disk error with a
    clear message (``shutil.copytree`` alone would try every remaining file and then raise an
    errno-less ``shutil.Error``)."""

    def copy_one(a: str, b: str) -> object:
        try:
            return shutil.copy2(a, b)
        except OSError as exc:
            if _is_disk_full(exc):
                raise _disk_full(what, where, exc) from exc
            raise

    if src.is_file():
        copy_one(str(src), str(dst / src.name))
    else:
        shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=copy_one)


def require_free_space(where: Path, needed_bytes: int, what: str) -> None:
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        raise SlmopsError(
            f"Not enough disk space for {what}: need about {needed_bytes // 2**20} MB, {free // 2**20} MB free "
            f"under {where}.",
            "Free some space or point SLMOPS_HOME at a larger disk.",
        )


def write_provenance(folder: Path, data: dict[str, Any]) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def import_model(
    store: ModelStore, path: Path, name: str, *, base: str | None = None, recipe: dict[str, Any] | None = None
) -> ModelRecord:
    """Copy an artifact into the store as a new version of ``name``.

    A PEFT adapter needs its base in the store: ``base`` (a reference), or the adapter's
    ``base_model_name_or_path`` when that names a store model.
    """
    path = path.expanduser().resolve()
    fmt, params = inspect(path)
    parents: list[str] = []
    if fmt == "peft-adapter":
        cfg, _ = inspect_adapter(path)
        base_ref = base or str(cfg.get("base_model_name_or_path") or "")
        base_rec = store.find(base_ref) if base_ref and "/" not in base_ref else None
        if base_rec is None:
            raise SlmopsError(
                f"The adapter at {path} needs its base model in the store (adapter names {base_ref or 'none'!r}).",
                "Pass --base REF with the base model's store name.",
            )
        parents = [base_rec.ref]
    elif base:
        parents = [store.get(base).ref]
    require_free_space(store.home, folder_size(path) + 2**20, f"importing {path}")
    with store.staging("import") as stage, disk_errors(f"importing {path}", store.home):
        copy_artifact(path, stage, what=f"importing {path}", where=store.home)
        full_recipe = {"kind": "import", "source_path": str(path), **(recipe or {})}
        write_provenance(stage, {"name": name, "format": fmt, "parents": parents, "recipe": full_recipe})
        return store.add(stage, name, fmt, parents=parents, recipe=full_recipe, parameters=params or None)
