"""The fast variant by default: a built-in model named without a version runs as its int4 ONNX
build, made once and registered with its lineage; a version, an alias or --precision fp32 runs
exactly what was named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slmops.errors import SlmopsError
from slmops.models.variants import fast_variant

NAME = "smollm2-135m-instruct"  # a catalog name; the store holds the tiny model under it (no pull)


@pytest.fixture()
def catalog_store(store, tiny_model_dir: Path):
    pytest.importorskip("onnxruntime_genai")
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        store.add(staged / "model", NAME, "hf")
    return store


def test_built_once_registered_with_lineage_then_reused(catalog_store, monkeypatch):
    import slmops.optimize as optimize_mod

    builds = []
    real = optimize_mod.optimize
    monkeypatch.setattr(optimize_mod, "optimize", lambda *a, **k: (builds.append(a), real(*a, **k))[1])
    said = []
    first = fast_variant(NAME, catalog_store, progress=said.append)
    assert first.ref != NAME and "int4" in first.ref and "--precision fp32" in first.note
    record = catalog_store.get(first.ref)
    assert record.format == "onnx-genai" and record.parents == [f"{NAME}:1"]
    assert any("building the int4 variant" in s for s in said)
    again = fast_variant(NAME, catalog_store)
    assert again == first and len(builds) == 1  # reused, not rebuilt

    from slmops.engines import open_engine
    from slmops.engines.base import GenerationParams, GenerationRequest

    with open_engine(first.ref, catalog_store, threads=1) as engine:
        assert engine.name == "onnx-genai"
        assert engine.generate([GenerationRequest.chat("Hello", GenerationParams(max_tokens=3))])[0].completion_tokens


def test_exact_versions_fp32_and_other_models_run_as_named(catalog_store):
    assert fast_variant(f"{NAME}:1", catalog_store).ref == f"{NAME}:1"
    assert fast_variant(NAME, catalog_store, precision="fp32").ref == NAME
    assert fast_variant("my-model", catalog_store).ref == "my-model"
    assert fast_variant(f"{NAME}+adapter", catalog_store).ref == f"{NAME}+adapter"
    with pytest.raises(SlmopsError, match="--precision"):
        fast_variant(NAME, catalog_store, precision="int2")
