"""``optimize ADAPTER --to onnx --keep-adapters``: one ONNX base plus ONNX Runtime adapter files;
the ONNX engine answers each request with the adapter it names, exactly like the merged model
(and torch base + adapter) would; bad combinations are refused before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from slmops.engines import GenerationParams, GenerationRequest, open_engine
from slmops.engines.onnx_manifest import read_manifest
from slmops.errors import EngineError, SlmopsError
from slmops.models.artifacts import import_model
from slmops.optimize import OptimizeConfig, optimize
from slmops.optimize.onnx_adapters import adapter_params


def _lora(base_dir: Path, out: Path, seed: int, r: int, modules: list[str]) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=8, target_modules=modules, init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    mods = ["q_proj", "v_proj", "down_proj"]
    return {
        "qa": _lora(tiny_model_dir, root / "qa", 1, 4, mods),
        "chat": _lora(tiny_model_dir, root / "chat", 2, 8, mods),  # another rank: the graph's rank is symbolic
        "odd": _lora(tiny_model_dir, root / "odd", 3, 4, ["k_proj"]),
    }


@pytest.fixture()
def adapter_store(store, tiny_model_dir: Path, loras: dict[str, Path]):
    import_model(store, tiny_model_dir, "tiny")
    for name, path in loras.items():
        import_model(store, path, name, base="tiny")
    return store


def _greedy(engine, adapter: str | None) -> str:
    req = GenerationRequest.chat("What is the capital of France?", GenerationParams(max_tokens=12))
    req = dataclasses.replace(req, adapter=adapter)
    return engine.generate([req])[0].text


def test_kept_adapters_answer_like_the_merged_models(adapter_store):
    result = optimize(
        OptimizeConfig("qa", to="onnx", precision="fp32", keep_adapters=True, adapters=("chat",)), store=adapter_store
    )
    rec = result.record
    assert (rec.ref, rec.format, rec.parents) == ("qa-onnx-fp32-adapters:1", "onnx-genai", ["qa:1", "chat:1"])
    manifest = read_manifest(rec.path)
    assert manifest["default"] == "qa" and set(manifest["adapters"]) == {"qa", "chat"}
    assert all((rec.path / f).stat().st_size > 0 for f in manifest["adapters"].values())
    assert abs(result.quality.perplexity_increase_pct) < 0.01  # fp32 base + qa adapter == torch base + qa

    engine = open_engine(rec.ref, adapter_store)
    assert engine.adapters == ("qa", "chat")
    for name in ("qa", "chat"):
        merged = open_engine(optimize(OptimizeConfig(name, merge=True), store=adapter_store).record.ref, adapter_store)
        assert _greedy(engine, name) == _greedy(merged, None)
    assert _greedy(engine, None) == _greedy(engine, "qa")  # no adapter named: the default
    with pytest.raises(EngineError, match="its adapters are qa, chat"):
        _greedy(engine, "odd")


def test_adapter_file_holds_the_builders_lora_weights(adapter_store, loras: dict[str, Path]):
    """The adapter file's values are what the builder itself put in the graph for that adapter."""
    import onnx
    from onnx import numpy_helper

    from slmops.optimize.onnx_export import build_onnx

    out = adapter_store.home / "probe"
    build_onnx(adapter_store.get("tiny").path, out, precision="fp32", adapter=loras["qa"])
    graph = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer
             if ".lora_" in i.name}
    ours = adapter_params(loras["qa"])
    assert set(ours) == set(graph) and len(ours) == 2 * 2 * 3
    for name, value in ours.items():
        np.testing.assert_allclose(value, graph[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", [None, "hqq"])
def test_int4_base_keeps_the_lora_paths_unquantized(adapter_store, algorithm: str | None):
    import onnx

    rec = optimize(
        OptimizeConfig("qa", to="onnx", precision="int4", algorithm=algorithm, keep_adapters=True), store=adapter_store
    ).record
    graph = onnx.load(str(rec.path / "model.onnx"), load_external_data=False).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert ops["/model/layers.0/attn/q_proj/lora_A/MatMul"] == "MatMul"
    assert any(op == "MatMulNBits" for op in ops.values())
    assert {i.name for i in graph.input} >= {"model.layers.0.attn.q_proj.lora_A.MatMul.weight"}
    engine = open_engine(rec.ref, adapter_store)
    assert isinstance(_greedy(engine, "qa"), str)


@pytest.mark.parametrize(
    ("ref", "options", "message"),
    [
        ("tiny", {"to": "onnx", "keep_adapters": True}, "needs a PEFT adapter as the source"),
        ("qa", {"to": "gguf", "keep_adapters": True}, "--keep-adapters applies to --to onnx"),
        ("qa", {"to": "onnx", "adapters": ("chat",)}, "needs --keep-adapters"),
        ("qa", {"to": "onnx", "keep_adapters": True, "adapters": ("tiny",)}, "not a stored PEFT adapter"),
        ("qa", {"to": "onnx", "keep_adapters": True, "adapters": ("odd",)}, "does not fit the ONNX base"),
    ],
)
def test_bad_keep_adapter_combinations_are_refused(adapter_store, ref: str, options: dict, message: str):
    with pytest.raises(SlmopsError, match=message):
        optimize(OptimizeConfig(ref, **options), store=adapter_store)
    assert not any(r.format == "onnx-genai" for r in adapter_store.list())
