"""Optimize models for deployment: merge adapters, convert to ONNX GenAI or GGUF, quantize,
and measure what each conversion cost.

Example::

    from slmops.optimize import OptimizeConfig, optimize
    result = optimize(OptimizeConfig("smollm2-135m-instruct", to="onnx", precision="int4", max_ppl_increase=10))
    result.record.ref, result.quality.size_reduction_pct, result.quality.perplexity_increase_pct
"""

from __future__ import annotations

from slmops.optimize.gguf_export import GGUF_QUANTS, write_gguf
from slmops.optimize.merge import merge_adapter
from slmops.optimize.onnx_export import ONNX_PRECISIONS, build_onnx, fix_eos_ids
from slmops.optimize.quality import HELD_OUT_TEXT, Quality
from slmops.optimize.run import OptimizeConfig, OptimizeResult, QualityGateError, optimize

__all__ = [
    "GGUF_QUANTS",
    "HELD_OUT_TEXT",
    "ONNX_PRECISIONS",
    "OptimizeConfig",
    "OptimizeResult",
    "Quality",
    "QualityGateError",
    "build_onnx",
    "fix_eos_ids",
    "merge_adapter",
    "optimize",
    "write_gguf",
]
