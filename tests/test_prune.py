"""slmops prune: layers dropped by block influence, a valid HF folder, lineage, clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from slmops.errors import SlmopsError
from slmops.optimize.prune import PruneConfig, layers_to_keep, parse_keep, prune
from tests.tiny import build_model, build_tokenizer


def _make_identity(folder: Path, layers: list[int]) -> None:
    """Zero the output projections of ``layers``: each then passes its input through unchanged."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    weights = load_file(str(path))
    for i in layers:
        for key in (f"model.layers.{i}.self_attn.o_proj.weight", f"model.layers.{i}.mlp.down_proj.weight"):
            weights[key].zero_()
    save_file(weights, str(path), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_model(tmp_path_factory.mktemp("prune") / "tiny4", layers=4, seed=1)
    _make_identity(folder, [1, 2])
    return folder


@pytest.fixture()
def tiny_store(store, four_layers: Path):
    from slmops.models.artifacts import import_model

    import_model(store, four_layers, "tiny4")
    return store


def _logits(folder: Path, ids):
    import torch

    from slmops.models.loader import load_causal_lm

    model, _ = load_causal_lm(folder)
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_identity_layers_are_dropped_and_the_output_is_unchanged(tiny_store, four_layers: Path):
    import torch

    result = prune(PruneConfig("tiny4", 2), store=tiny_store)
    assert sorted(i for i, _ in result.removed) == [1, 2] and result.kept == [0, 3]
    assert all(score < 1e-5 for _, score in result.removed)
    assert min(result.scores[0], result.scores[3]) > 100 * max(result.scores[1], result.scores[2])
    out = result.record.path
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    # dropping exact identities changes nothing: same logits, same calibration loss
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    assert torch.allclose(_logits(out, ids), _logits(four_layers, ids), atol=1e-5)
    assert result.loss_after == pytest.approx(result.loss_before, rel=1e-5)


def test_pruned_folder_is_complete_and_registered_with_lineage(tiny_store):
    from safetensors import safe_open

    result = prune(PruneConfig("tiny4", "0.75", output="tiny3"), store=tiny_store)
    rec = result.record
    assert rec.ref == "tiny3:1" and rec.parents == ["tiny4:1"] and rec.format == "hf"
    with safe_open(str(rec.path / "model.safetensors"), framework="pt") as st:
        layer_ids = {int(k.split(".")[2]) for k in st.keys() if k.startswith("model.layers.")}  # noqa: SIM118
    assert layer_ids == {0, 1, 2}
    assert (rec.path / "tokenizer.json").exists()
    tok_config = json.loads((rec.path / "tokenizer_config.json").read_text())
    assert "im_start" in (tok_config.get("chat_template") or (rec.path / "chat_template.jinja").read_text())
    recipe = rec.recipe
    assert recipe["kind"] == "prune" and recipe["score"] == "block_influence" and recipe["keep_layers"] == 3
    assert len(recipe["scores"]) == 4 and len(recipe["removed"]) == 1 and recipe["removed"][0] in (1, 2)
    assert recipe["calibration"]["source"] == "builtin:held-out-text" and len(recipe["calibration"]["sha256"]) == 64
    assert rec.parameters and rec.parameters < tiny_store.get("tiny4").parameters
    assert json.loads((rec.path / "slmops.json").read_text())["recipe"]["kept"] == result.kept


def test_pruned_model_generates_finite_output_in_the_torch_engine(tiny_store):
    import torch

    from slmops.engines import open_engine
    from slmops.engines.base import GenerationParams, GenerationRequest

    rec = prune(PruneConfig("tiny4", 1, output="tiny1"), store=tiny_store).record
    assert torch.isfinite(_logits(rec.path, torch.tensor([[1, 2, 3, 4]]))).all()
    with open_engine("tiny1", tiny_store, threads=1) as engine:
        [res] = engine.generate([GenerationRequest.chat("Hello", GenerationParams(max_tokens=6, seed=0))])
    assert res.completion_tokens >= 1 and res.finish_reason in ("stop", "length")


def test_calibration_records_are_hashed_into_the_lineage(tiny_store, tmp_path: Path):
    data = tmp_path / "cal.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: what is two plus two?", "answer": "Four."}) + "\n"
                            for i in range(20)))
    result = prune(PruneConfig("tiny4", 3, calibration=str(data), calibration_tokens=64, seq_len=32),
                   store=tiny_store)
    cal = result.calibration
    assert cal["source"] == str(data) and cal["tokens"] == 64
    from slmops.train.lineage import file_sha256

    assert cal["sha256"] == file_sha256(data)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no usable field"}) + "\n")
    with pytest.raises(SlmopsError, match="needs 'prompt', 'messages' or 'text'"):
        prune(PruneConfig("tiny4", 3, calibration=str(bad)), store=tiny_store)


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", "0.0", "1.0", "", True])
def test_bad_keep_values_are_clear_errors(value):
    with pytest.raises(SlmopsError, match="--keep-layers must be a layer count"):
        parse_keep(value)


def test_keep_bounds_against_the_depth(tiny_store):
    assert layers_to_keep("0.5", 30) == 15 and layers_to_keep(12, 30) == 12 and layers_to_keep("0.6", 30) == 18
    for value in ("4", "9", "0.9", "0.1"):  # 4 layers: keeping 4 (or 0.9 -> 4, 0.1 -> 0) prunes nothing or all
        with pytest.raises(SlmopsError, match="does not prune"):
            layers_to_keep(value, 4)
    with pytest.raises(SlmopsError, match="does not prune: the model has 4 layers"):
        prune(PruneConfig("tiny4", 4), store=tiny_store)
    with pytest.raises(SlmopsError, match="Invalid prune options.*--keep-layers.*--calibration-tokens"):
        prune(PruneConfig("tiny4", "x", calibration_tokens=0), store=tiny_store)
    assert [r.ref for r in tiny_store.list()] == ["tiny4:1"]  # nothing registered, nothing left in tmp
    assert not [p for p in tiny_store.tmp_dir.iterdir() if p.suffix != ".lock"]


def test_gemma3_layer_types_follow_the_kept_layers(tmp_path: Path, store):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path / "gemma"
    tok = build_tokenizer(folder)
    types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=types, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config)
    with torch.no_grad():  # layer 1 (sliding) becomes an identity: the one to go
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
        model.model.layers[1].post_attention_layernorm.weight.fill_(-1.0)  # Gemma norms scale by (1 + w)
        model.model.layers[1].post_feedforward_layernorm.weight.fill_(-1.0)
    model.save_pretrained(folder, safe_serialization=True)
    from slmops.models.artifacts import import_model

    import_model(store, folder, "gemma-tiny")
    result = prune(PruneConfig("gemma-tiny", 3), store=store)
    assert [i for i, _ in result.removed] == [1]
    saved = json.loads((result.record.path / "config.json").read_text())
    assert saved["num_hidden_layers"] == 3
    assert saved["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    ids = torch.tensor([[3, 9, 27, 81, 5, 8, 13, 21, 34, 55, 2, 4]])  # longer than the sliding window
    assert torch.allclose(_logits(result.record.path, ids), _logits(folder, ids), atol=1e-4)


def test_cli_prints_removed_layers_and_one_line_errors(tiny_store, slmops_bin: Path):
    env_home = {"SLMOPS_HOME": str(tiny_store.home), "PATH": str(slmops_bin.parent)}
    out = subprocess.run([str(slmops_bin), "prune", "tiny4", "--keep-layers", "2", "--json"], env=env_home,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert sorted(r["layer"] for r in data["removed"]) == [1, 2] and data["record"]["ref"] == "tiny4-pruned-2l:1"
    bad = subprocess.run([str(slmops_bin), "prune", "tiny4", "--keep-layers", "7"], env=env_home,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not prune" in bad.stderr and "Traceback" not in bad.stderr
    assert shutil.which("slmops", path=str(slmops_bin.parent))
