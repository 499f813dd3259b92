"""LoRA adapters kept apart from an ONNX GenAI base (``optimize ADAPTER --to onnx --keep-adapters``).

Like Olive's ``generate-adapter``: the model builder exports the base with the first adapter's
LoRA paths (``x @ A @ B`` added beside each target MatMul, left unquantized), then every LoRA
weight becomes an overridable graph input whose default has rank 0 (so the bare graph is the
base model, at no cost), and each adapter is written as an ONNX Runtime adapter file
(``adapters/NAME.onnx_adapter``: ``A`` as ``[in, r]``, ``B * scaling`` as ``[r, out]``).
``adapters.json`` lists them and names the default (the engine's format,
:mod:`slmops.engines.onnx_manifest`); the ONNX engine loads them with
``og.Adapters`` and activates one per request. Adapters may differ in rank but must target the
same modules of the same base.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slmops.engines.onnx_manifest import adapter_file, write_manifest
from slmops.errors import SlmopsError

_PEFT_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SlmopsError(f"Cannot read the adapter config {path} ({exc}).", "Give a PEFT LoRA folder.") from exc
    problems = []
    if cfg.get("peft_type") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}, not LORA")
    if cfg.get("use_dora"):
        problems.append("DoRA adapters cannot be kept apart")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("per-module rank_pattern/alpha_pattern is not supported")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')!r} (only bias='none')")
    if cfg.get("modules_to_save"):
        problems.append("modules_to_save (fully trained modules) cannot be an adapter file")
    if problems:
        raise SlmopsError(
            f"{adapter_dir}: cannot keep this adapter apart ({'; '.join(problems)}).",
            "Drop --keep-adapters to merge it into the base instead.",
        )
    return cfg


def target_modules(adapter_dir: Path) -> list[str]:
    cfg = _config(adapter_dir)
    mods = cfg.get("target_modules") or []
    mods = sorted(_MODULES) if mods == "all-linear" else sorted([mods] if isinstance(mods, str) else mods)
    unknown = [m for m in mods if m not in _MODULES]
    if unknown:
        raise SlmopsError(
            f"{adapter_dir} targets {', '.join(unknown)}, which the ONNX builder cannot keep as LoRA paths.",
            f"Keep adapters on {', '.join(sorted(_MODULES))}, or drop --keep-adapters to merge.",
        )
    return mods


def lora_nodes(num_layers: int, modules: list[str]) -> list[str]:
    """The builder's names for the LoRA MatMuls (kept out of int4/int8 quantization)."""
    return [
        f"/model/layers.{i}/{'mlp' if m in ('gate_proj', 'up_proj', 'down_proj') else 'attn'}/{m}/lora_{ab}/MatMul"
        for i in range(num_layers)
        for m in modules
        for ab in "AB"
    ]


def adapter_params(adapter_dir: Path) -> dict[str, np.ndarray]:
    """An adapter's weights named and laid out as the ONNX graph's LoRA inputs."""
    from safetensors.numpy import load_file

    cfg = _config(adapter_dir)
    files = sorted(adapter_dir.glob("adapter_model*.safetensors"))
    if not files:
        raise SlmopsError(f"{adapter_dir} has no adapter_model.safetensors.", "Save the adapter with safetensors.")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    params: dict[str, np.ndarray] = {}
    for f in files:
        for key, value in load_file(str(f)).items():
            m = _PEFT_KEY.match(key)
            if m is None:
                raise SlmopsError(f"{adapter_dir}: unexpected adapter tensor {key!r}.", "Merge it instead.")
            layer, block, module, ab = m.groups()
            name = f"model.layers.{layer}.{'attn' if block == 'self_attn' else 'mlp'}.{module}.lora_{ab}.MatMul.weight"
            w = value.astype(np.float32)
            params[name] = np.ascontiguousarray(w.T if ab == "A" else (w * scaling).T)
    return params


def detach_lora_inputs(onnx_dir: Path) -> dict[str, np.ndarray]:
    """Turn the LoRA weights of ``onnx_dir/model.onnx`` into graph inputs with rank-0 defaults
    (rewriting the model in place); returns the weights they held."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path))
    held: dict[str, np.ndarray] = {}
    for init in list(model.graph.initializer):
        if ".lora_A." not in init.name and ".lora_B." not in init.name:
            continue
        value = numpy_helper.to_array(init)
        held[init.name] = value
        is_a = ".lora_A." in init.name
        model.graph.initializer.remove(init)
        empty = np.zeros((value.shape[0], 0) if is_a else (0, value.shape[1]), dtype=value.dtype)
        model.graph.initializer.append(numpy_helper.from_array(empty, init.name))
        dims = [value.shape[0], "lora_rank"] if is_a else ["lora_rank", value.shape[1]]
        model.graph.input.append(helper.make_tensor_value_info(init.name, TensorProto.FLOAT, dims))
    if not held:
        raise SlmopsError(f"The ONNX model in {onnx_dir} has no LoRA weights to detach.")
    for old in onnx_dir.glob("model.onnx*"):  # rewritten whole, so the detached weights leave no dead bytes
        old.unlink()
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    (onnx_dir / "model.onnx.data").chmod(0o644)  # onnx writes it 0600; the builder's files are 0644
    return held


def write_adapter(params: Mapping[str, np.ndarray], graph_params: Mapping[str, np.ndarray], out: Path) -> None:
    """Write ``params`` as an ONNX Runtime adapter file, checked against the graph's LoRA inputs."""
    import onnxruntime as ort

    missing = sorted(set(graph_params) - set(params))
    extra = sorted(set(params) - set(graph_params))
    bad = [
        n for n in set(params) & set(graph_params)
        if params[n].shape[0 if ".lora_A." in n else 1] != graph_params[n].shape[0 if ".lora_A." in n else 1]
    ]
    if missing or extra or bad:
        raise SlmopsError(
            f"Adapter {out.stem} does not fit the ONNX base's LoRA paths "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {sorted(bad)[:3]}).",
            "Kept adapters must target the same modules of the same base; merge the others instead.",
        )
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in params.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(out))


def keep_adapters(onnx_dir: Path, adapters: Mapping[str, Path], default: str) -> dict[str, Any]:
    """After a build with ``default``'s adapter: detach the LoRA weights and write one adapter
    file per entry of ``adapters`` (name -> PEFT folder) plus the manifest; returns it."""
    graph_params = detach_lora_inputs(onnx_dir)
    files = {}
    for name, adapter_dir in adapters.items():
        rel = adapter_file(name)
        write_adapter(adapter_params(adapter_dir), graph_params, onnx_dir / rel)
        files[name] = rel
    return write_manifest(onnx_dir, default, files)

