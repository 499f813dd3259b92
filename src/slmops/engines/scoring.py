"""Prompt log-probabilities and embeddings: one forward pass over given token ids.

``prompt_logprobs`` scores every token of a sequence given the tokens before it (what
``/v1/completions`` with ``echo`` and ``logprobs`` returns, and what lm-evaluation-harness's
log-likelihood tasks sum). ``embed`` is the embeddings endpoint's pooling: the **mean of the
last hidden layer over the input's tokens, L2-normalised** (unit length, so a dot product is
the cosine similarity), computed in float32 with an attention mask, so a batch gives the same
vectors as one input at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from slmops.engines.base import TokenLogprob
from slmops.errors import EngineError


def _rows(lp: np.ndarray, ids: Sequence[int], top: int) -> list[TokenLogprob | None]:
    out: list[TokenLogprob | None] = [None]
    for pos in range(1, len(ids)):
        row = lp[pos - 1]
        alts: tuple[tuple[int, float], ...] = ()
        if top:
            idx = np.argpartition(-row, top)[:top]
            idx = idx[np.argsort(-row[idx])]
            alts = tuple((int(i), float(row[i])) for i in idx)
        out.append(TokenLogprob(int(ids[pos]), float(row[ids[pos]]), alts))
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def prompt_logprobs(
    engine: Any, ids: Sequence[int], top: int = 0, adapter: str | None = None
) -> list[TokenLogprob | None]:
    """Each token's log-probability given the ones before it; the first has none (``None``)."""
    if not ids:
        return []
    if hasattr(engine, "model") and hasattr(engine, "forward_kwargs"):  # torch
        import torch

        with torch.inference_mode():
            x = torch.tensor([list(ids)], dtype=torch.long)
            out = engine.model(input_ids=x, attention_mask=torch.ones_like(x), **engine.forward_kwargs([adapter]))
            lp = torch.log_softmax(out.logits[0].float(), dim=-1).numpy()
        return _rows(lp, ids, top)
    if hasattr(engine, "logits"):  # ONNX GenAI
        return _rows(_log_softmax(np.asarray(engine.logits(list(ids), adapter))), ids, top)
    raise EngineError(f"The {engine.name} engine cannot score prompts (no access to its logits).")


def embed(engine: Any, inputs: Sequence[Sequence[int]], batch_size: int = 16) -> np.ndarray:
    """``[len(inputs), hidden]`` float32 unit vectors (mean-pooled last hidden states)."""
    if not (hasattr(engine, "model") and hasattr(engine, "forward_kwargs")):
        raise EngineError(
            f"The {engine.name} engine cannot compute embeddings (it exposes no hidden states).",
            "Serve the model's Hugging Face or GGUF version for /v1/embeddings.",
        )
    import torch

    vectors = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start : start + batch_size]
            width = max(len(c) for c in chunk)
            x = torch.full((len(chunk), width), engine.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, c in enumerate(chunk):
                x[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
                mask[i, : len(c)] = 1
            out = engine.model(input_ids=x, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            m = mask[..., None].float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(vectors).astype(np.float32)
