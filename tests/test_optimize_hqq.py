"""The HQQ int4 build (``--algorithm hqq``): HQQ weights rewritten into the fast symmetric
kernel plus a block-offset term give the same logits as the float-zero-point graph; the
tied embedding reads the 8-bit LM head; no float zero points are left for the slow kernel."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from slmops.optimize.onnx_export import build_onnx
from slmops.optimize.onnx_hqq import LM_HEAD, offset_layout, share_embedding


def _logits(onnx_dir: Path, ids: list[int]) -> np.ndarray:
    from slmops.engines.ortgenai_engine import OrtGenAIEngine

    return OrtGenAIEngine(onnx_dir, threads=1).logits(ids)


@pytest.fixture(scope="module")
def fp32_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hqq") / "fp32"
    build_onnx(tiny_model_dir, out, precision="fp32")
    return out


def _save(model: onnx.ModelProto, like: Path, out: Path) -> Path:
    shutil.copytree(like, out, ignore=shutil.ignore_patterns("model.onnx*"))
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return out


def test_offset_layout_gives_the_same_logits_as_float_zero_points(fp32_dir: Path, tmp_path: Path):
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load(str(fp32_dir / "model.onnx")), nodes_to_exclude=[LM_HEAD],
                             algo_config=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    q.process()
    float_zp = q.model.model
    slow = _save(float_zp, fp32_dir, tmp_path / "float-zp")
    fast_model = onnx.load(str(slow / "model.onnx"))
    assert offset_layout(fast_model, None) == sum(n.op_type == "MatMulNBits" for n in float_zp.graph.node) > 0
    fast = _save(fast_model, fp32_dir, tmp_path / "offset")
    ids = list(range(5, 40))
    expected, got = _logits(slow, ids), _logits(fast, ids)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected, _logits(fp32_dir, ids), atol=1e-4)  # it is quantized


def test_hqq_int4_build_shares_an_8bit_embedding(tiny_model_dir: Path, fp32_dir: Path, tmp_path: Path):
    info = build_onnx(tiny_model_dir, tmp_path / "int4", precision="int4", algorithm="hqq")
    assert info["hqq"]["shared_embedding"] is True and info["hqq"]["block_size"] == 32
    graph = onnx.load(str(tmp_path / "int4" / "model.onnx"), load_external_data=False).graph
    inits = {i.name: i for i in graph.initializer}
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert all(len(n.input) == 3 for n in nbits)  # no float zero points left for the slow kernel
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert onnx.helper.get_attribute_value(next(a for a in gather.attribute if a.name == "bits")) == 8
    assert not any(name.startswith("model.embed_tokens.weight") for name in inits)  # the table is stored once
    ids = list(range(5, 40))
    ref, got = _logits(fp32_dir, ids), _logits(tmp_path / "int4", ids)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99  # close to float32, not identical


def test_share_embedding_leaves_an_untied_graph_alone(fp32_dir: Path):
    model = onnx.load(str(fp32_dir / "model.onnx"))
    before = [n.op_type for n in model.graph.node]
    share_embedding(model)  # no 8-bit LM head in a float32 graph
    assert [n.op_type for n in model.graph.node] == before
