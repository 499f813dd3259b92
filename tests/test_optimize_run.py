"""``optimize()`` and ``slmops optimize`` on the tiny llama: results are registered with
lineage, recipe and measured quality; merged adapters equal base + adapter; --strict refuses
a conversion that lost too much; bad options are reported together before any work."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.optimize import OptimizeConfig, QualityGateError, optimize
from slmops.optimize import quality as quality_mod


@pytest.fixture()
def tiny_store(store, tiny_model_dir: Path):
    import_model(store, tiny_model_dir, "tiny")
    return store


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with non-zero weights (so it changes the model's output)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    get_peft_model(base, cfg).save_pretrained(out)
    return out


def test_gguf_conversion_is_registered_with_lineage_and_quality(tiny_store):
    result = optimize(OptimizeConfig("tiny", to="gguf", quant="q8_0"), store=tiny_store)
    rec = result.record
    assert (rec.ref, rec.format, rec.parents) == ("tiny-gguf-q8_0:1", "gguf", ["tiny:1"])
    assert rec.recipe["kind"] == "optimize" and rec.recipe["quant"] == "q8_0" and rec.recipe["to"] == "gguf"
    assert {"block_size", "strict", "max_ppl_increase", "precision", "merge"} <= set(rec.recipe)
    q = rec.metrics["optimize"]
    assert q["size_bytes"] == result.quality.size_bytes < q["source_size_bytes"]
    assert q["size_reduction_pct"] > 50  # 8-bit weights vs float32
    assert q["source_perplexity"] > 1 and abs(q["perplexity_increase_pct"]) < 1.0
    assert q["text"] == "builtin" and q["tokens"] > 500 and q["flagged"] is False
    assert json.loads((rec.path / "slmops.json").read_text())["parents"] == ["tiny:1"]
    assert (rec.path / "tiny-gguf-q8_0.gguf").exists()


def test_onnx_conversion_registers_a_runnable_model(tiny_store, tiny_engine):
    from slmops.engines import GenerationParams, GenerationRequest, open_engine

    result = optimize(OptimizeConfig("tiny", to="onnx", precision="fp32", output="tiny-ort"), store=tiny_store)
    assert (result.record.ref, result.record.format) == ("tiny-ort:1", "onnx-genai")
    assert result.record.recipe["precision"] == "fp32"
    assert abs(result.quality.perplexity_increase_pct) < 0.01  # same weights, another runtime
    engine = open_engine("tiny-ort", tiny_store)
    assert engine.name == "onnx-genai"
    req = GenerationRequest.chat("What is the capital of France?", GenerationParams(max_tokens=10))
    assert engine.generate([req])[0].text == tiny_engine.generate([req])[0].text


def test_merged_adapter_equals_base_plus_adapter(tiny_store, lora_dir: Path, tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    from slmops.models.loader import load_with_adapter

    import_model(tiny_store, lora_dir, "tiny-lora", base="tiny")
    result = optimize(OptimizeConfig("tiny-lora", merge=True), store=tiny_store)
    rec = result.record
    assert (rec.ref, rec.format, rec.parents) == ("tiny-lora-merged:1", "hf", ["tiny-lora:1"])
    assert abs(result.quality.perplexity_increase_pct) < 1e-3
    merged = AutoModelForCausalLM.from_pretrained(rec.path)
    with_adapter, tok = load_with_adapter(lora_dir, tiny_model_dir, merge=False)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got, base = with_adapter(ids).logits, merged(ids).logits, plain(ids).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(base, expected, atol=1e-3)  # the adapter really changes the model
    template = rec.path / "chat_template.jinja"
    assert template.exists() or "chat_template" in (rec.path / "tokenizer_config.json").read_text()


def test_strict_refuses_a_conversion_that_lost_too_much(tiny_store, monkeypatch):
    real_score = quality_mod.score

    def worse(path, fmt, text, **kw):  # the result scores 20% worse than its source
        ppl, n = real_score(path, fmt, text, **kw)
        return (ppl * 1.2 if fmt == "gguf" else ppl), n

    monkeypatch.setattr(quality_mod, "score", worse)
    with pytest.raises(QualityGateError, match=r"Not registered: perplexity rose 1\d\.\d\d% \(\d+\.\d+ -> \d+\.\d+\)"):
        optimize(OptimizeConfig("tiny", to="gguf", quant="q4_0", max_ppl_increase=5, strict=True), store=tiny_store)
    assert tiny_store.find("tiny-gguf-q4_0") is None
    assert list(tiny_store.tmp_dir.glob("optimize*")) == []  # nothing half-written left behind
    flagged = optimize(OptimizeConfig("tiny", to="gguf", quant="q4_0", max_ppl_increase=5), store=tiny_store)
    assert flagged.flagged and flagged.record.metrics["optimize"]["flagged"] is True


def test_bad_options_are_reported_together_before_any_work(tiny_store):
    with pytest.raises(SlmopsError) as err:
        optimize(OptimizeConfig("tiny", to="onnx", quant="q8_0", precision="int3", block_size=48, strict=True))
    msg = str(err.value)
    for part in ("--quant applies", "--precision must be", "--block-size", "--strict needs"):
        assert part in msg
    with pytest.raises(SlmopsError, match="nothing to do"):
        optimize(OptimizeConfig("tiny"), store=tiny_store)
    with pytest.raises(SlmopsError, match="--merge needs a PEFT adapter"):
        optimize(OptimizeConfig("tiny", merge=True), store=tiny_store)
    assert [r.name for r in tiny_store.list()] == ["tiny"]


def test_cli_prints_quality_and_json(tiny_store):
    from slmops.cli.optimize import optimize as optimize_cmd

    app = typer.Typer()
    app.command()(optimize_cmd)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the command name
    runner = CliRunner()
    out = runner.invoke(app, ["optimize", "tiny", "--to", "gguf", "--quant", "f16", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["record"]["ref"] == "tiny-gguf-f16:1" and data["quality"]["size_reduction_pct"] > 40
    table = runner.invoke(app, ["optimize", "tiny", "--to", "gguf", "--quant", "f16", "-o", "tiny-f16"])
    assert table.exit_code == 0 and "perplexity" in table.stdout and "tiny-f16:1" in table.stdout
    assert inspect.cleandoc(optimize_cmd.__doc__ or "").splitlines()[-1].startswith("Example: slmops optimize ")
