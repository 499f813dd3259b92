"""int4 with HQQ (half-quadratic quantization) for the ONNX GenAI model: ``--algorithm hqq``.

The model builder has no HQQ method, so the build runs in two steps: the builder makes the
graph with its int4 embedding (``GatherBlockQuantized``) and every MatMul left in float32
(``nodes_to_exclude``), then onnxruntime's ``MatMulNBitsQuantizer`` rewrites the decoder
MatMuls with HQQ (asymmetric 4-bit, a float scale and zero point per block of
``block_size`` input channels, fitted by a proximal solver instead of rounding to min/max),
stored in the fast symmetric kernel's layout plus a per-block offset term (:func:`offset_layout`),
and the LM head with 8-bit round-to-nearest (the LM head is the most quantization-sensitive
MatMul; llama.cpp keeps it at 8 bits in its 4-bit types too). With tied embeddings the input
embedding then reads the LM head's 8-bit weights (``GatherBlockQuantized`` with ``bits=8``), as
the builder ties its own int4 embeddings, so the table is stored once. LoRA paths kept for
``--keep-adapters`` stay in float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

LM_HEAD = "/lm_head/MatMul"
_PROJECTIONS = (
    "attn/qkv_proj", "attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj",
    "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj", "mlp/gate_up_proj",
)


def builder_exclusions(num_layers: int) -> list[str]:
    """Every MatMul name the builder may emit for a decoder (unknown names are ignored by it)."""
    return [LM_HEAD] + [f"/model/layers.{i}/{p}/MatMul" for i in range(num_layers) for p in _PROJECTIONS]


def hqq_quantize(
    onnx_dir: Path, *, block_size: int, accuracy_level: int | None, tied: bool, lm_head_bits: int = 8
) -> dict[str, Any]:
    """Quantize the float MatMuls of ``onnx_dir/model.onnx`` in place; returns what was done."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    path = onnx_dir / "model.onnx"
    model = onnx.load(str(path))
    skip = [n.name for n in model.graph.node if "/lora_" in n.name]
    targets = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in skip]
    logging.disable(logging.ERROR)  # the quantizer logs every node at INFO
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            hqq = MatMulNBitsQuantizer(
                model, algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=4),
                nodes_to_exclude=[LM_HEAD, *skip], op_types_to_quantize=("MatMul",),
            )
            hqq.process()
            model = hqq.model.model
            if LM_HEAD in targets:
                head = MatMulNBitsQuantizer(
                    model, bits=lm_head_bits, block_size=32, is_symmetric=True, accuracy_level=accuracy_level,
                    nodes_to_include=[LM_HEAD], nodes_to_exclude=skip, op_types_to_quantize=("MatMul",),
                )
                head.process()
                model = head.model.model
                if tied:
                    share_embedding(model)
            rewritten = offset_layout(model, accuracy_level)
    finally:
        logging.disable(logging.NOTSET)
    for old in onnx_dir.glob("model.onnx*"):
        old.unlink()
    onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    (onnx_dir / "model.onnx.data").chmod(0o644)  # onnx writes it 0600; the builder's files are 0644
    return {"matmuls": len(targets), "offset_layout": rewritten, "shared_embedding": tied, "block_size": block_size}


def share_embedding(model: Any) -> None:
    """Point the input embedding at the 8-bit LM head (``[vocab, blocks, block]`` uint8 data with
    an implicit zero point of 128 and ``[vocab, blocks]`` scales) and drop its own table."""
    from onnx import helper, numpy_helper

    graph = model.graph
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith(LM_HEAD)), None)
    embed = next((n for n in graph.node if n.name.startswith("/model/embed_tokens/Gather")), None)
    if head is None or embed is None or len(head.input) > 3:  # nothing to share, or a zero-point head
        return
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    if attrs.get("bits") != 8:
        return
    shape = numpy_helper.from_array(np.asarray([attrs["N"], attrs["K"]], dtype=np.int64), "/model/embed_tokens/shape")
    graph.initializer.append(shape)
    reshape = helper.make_node("Reshape", [head.input[1], shape.name], ["/model/embed_tokens/data"],
                               name="/model/embed_tokens/Reshape")
    gather = helper.make_node(
        "GatherBlockQuantized", ["/model/embed_tokens/data", embed.input[1], head.input[2]], list(embed.output),
        name="/model/embed_tokens/GatherBlockQuantized_Q8", domain="com.microsoft",
        bits=8, block_size=int(attrs["block_size"]), gather_axis=0, quantize_axis=1,
    )
    old = set(embed.input[:1]) | set(embed.input[2:])
    position = list(graph.node).index(embed)
    graph.node.remove(embed)
    graph.node.insert(position, gather)
    graph.node.insert(position, reshape)
    for init in [i for i in graph.initializer if i.name in old]:
        graph.initializer.remove(init)


def offset_layout(model: Any, accuracy_level: int | None) -> int:
    """Rewrite each HQQ ``MatMulNBits`` (float zero points: onnxruntime's CPU kernels have no fast
    path for them, ~1 token/s) as the fast symmetric kernel plus a per-block offset term.

    HQQ dequantizes ``w = s * (q - z)`` per block of 32 input rows. With the kernel's implicit
    zero point 8 that is ``s * (q - 8) + s * (8 - z)``, so ``x @ W = MatMulNBits(x; q, s) +
    blocksum(x) @ M`` with ``M[b, n] = s[n, b] * (8 - z[n, b])``: the same weights exactly, at
    the cost of one small float MatMul (1/block_size of the work) per projection. Block sums
    of one input are computed once and shared (q/k/v, gate/up). Returns how many were rewritten.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    sums: dict[str, str] = {}
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        zp = numpy_helper.to_array(inits[node.input[3]])
        if zp.dtype.kind != "f":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        n_out, k_in, block = int(attrs["N"]), int(attrs["K"]), int(attrs["block_size"])
        blocks = k_in // block
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n_out, blocks)
        offset = (scales * (8.0 - zp.reshape(n_out, blocks))).T.astype(np.float32)  # [blocks, N]
        x = node.input[0]
        if x not in sums:
            shape = numpy_helper.from_array(np.asarray([0, 0, -1, block], dtype=np.int64), f"{x}/blocks_shape")
            axes = numpy_helper.from_array(np.asarray([-1], dtype=np.int64), f"{x}/blocks_axes")
            graph.initializer.extend([shape, axes])
            graph.node.extend([
                helper.make_node("Reshape", [x, shape.name], [f"{x}/blocks"], name=f"{x}/blocks/Reshape"),
                helper.make_node("ReduceSum", [f"{x}/blocks", axes.name], [f"{x}/block_sums"], keepdims=0,
                                 name=f"{x}/blocks/ReduceSum"),
            ])
            sums[x] = f"{x}/block_sums"
        out = node.output[0]
        m = numpy_helper.from_array(offset, f"{node.name}/offset")
        graph.initializer.append(m)
        graph.initializer.remove(inits[node.input[3]])
        del node.input[3]
        node.output[0] = f"{out}/q"
        for a in list(node.attribute):
            if a.name == "accuracy_level":
                node.attribute.remove(a)
        if accuracy_level is not None:
            node.attribute.append(helper.make_attribute("accuracy_level", accuracy_level))
        graph.node.extend([
            helper.make_node("MatMul", [sums[x], m.name], [f"{out}/offset"], name=f"{node.name}/offset/MatMul"),
            helper.make_node("Add", [f"{out}/q", f"{out}/offset"], [out], name=f"{node.name}/offset/Add"),
        ])
        rewritten += 1
    _toposort(graph)
    return rewritten


def _toposort(graph: Any) -> None:
    """Order nodes so every input is produced before use (the new nodes were appended)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in produced for i in n.input)]
        if not ready:
            raise RuntimeError("cycle or missing input while ordering the ONNX graph")
        for n in ready:
            ordered.append(n)
            produced.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
