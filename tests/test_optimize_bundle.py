"""Deployment bundles on the tiny llama: valid JSON, a Modelfile whose template follows the
model's chat template, checksummed manifest with lineage, clear errors for the wrong format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from slmops.errors import SlmopsError
from slmops.files import file_sha256
from slmops.models.artifacts import import_model
from slmops.optimize import OptimizeConfig, optimize
from slmops.optimize.bundle import (
    FAMILIES,
    default_system,
    export_bundle,
    foundry_config,
    ollama_modelfile,
    template_family,
)


def test_ollama_bundle_has_gguf_modelfile_and_manifest(store, tiny_model_dir: Path, tmp_path: Path):
    import_model(store, tiny_model_dir, "tiny")
    optimize(OptimizeConfig("tiny", to="gguf", quant="f16"), store=store)
    out = tmp_path / "ollama"
    manifest = export_bundle("tiny-gguf-f16", "ollama", out, store=store)
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tiny-gguf-f16.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>" in modelfile
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["parents"] == ["tiny:1"] and manifest["recipe"]["quant"] == "f16"
    assert manifest["files"]["tiny-gguf-f16.gguf"] == file_sha256(out / "tiny-gguf-f16.gguf")
    with pytest.raises(SlmopsError, match="needs a onnx-genai model.*--to onnx"):
        export_bundle("tiny", "foundry", tmp_path / "foundry", store=store)
    with pytest.raises(SlmopsError, match="already exists"):
        export_bundle("tiny-gguf-f16", "ollama", out, store=store)


def test_foundry_prompt_template_renders_like_the_chat_template(tiny_model_dir: Path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    family, markers = template_family(tok.chat_template)
    assert family == "chatml"
    cfg = foundry_config("tiny", markers)["PromptTemplate"]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ours = cfg["system"].replace("{Content}", "Be brief.") + cfg["prompt"].replace("{Content}", "Hi")
    assert ours == tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    from slmops.models.catalog import CHATML_TEMPLATE

    assert default_system(CHATML_TEMPLATE, markers) == "You are a helpful AI assistant."
    assert default_system(tok.chat_template, markers) is None
    assert 'SYSTEM """Be kind."""' in ollama_modelfile("m.gguf", markers, {}, "Be kind.")
    modelfile = ollama_modelfile("m.gguf", FAMILIES["gemma"], {"temperature": 0})
    assert "<start_of_turn>model\n" in modelfile and "PARAMETER temperature 0" in modelfile
    with pytest.raises(SlmopsError, match="ChatML, Gemma"):
        template_family("{{ messages }}")
