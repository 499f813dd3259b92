"""What a conversion cost: perplexity on held-out text (source vs result) and size.

Perplexity comes from :func:`slmops.evaluate.metrics.perplexity`; this module only opens
each artifact format as something that function can score (a PyTorch model, a dequantized
GGUF, or an ONNX GenAI model behind a small adapter with the same call signature).
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from slmops.errors import SlmopsError
from slmops.optimize.task_check import TaskDelta

# Held-out English prose (written for slmops, not taken from any training set): plain
# expository text is what a perplexity comparison between two versions of one model needs.
HELD_OUT_TEXT = """\
The old lighthouse stood at the end of a narrow spit of rock, and for more than a century its
keepers had climbed the same one hundred and twelve steps every evening to light the lamp.
When the light was finally automated, the last keeper wrote a short note in the logbook. He
said that the sea had never been the same two nights in a row, and that he would miss it.

A bakery opens long before the rest of the street wakes up. The first batch of dough is mixed
at three in the morning, left to rise while the ovens heat, and shaped by hand into loaves.
By six o'clock the shelves are full, the windows are fogged, and the smell of fresh bread
drifts out into the cold air, where the early commuters slow down as they walk past.

Water boils at a lower temperature on a high mountain than it does at sea level, because the
air pressure is lower. Cooking pasta at altitude therefore takes longer, and recipes written
for climbers often suggest adding a lid to the pot to save fuel. The same physics explains
why pressure cookers work so well: raising the pressure raises the boiling point.

Every spring the town library holds a sale of old books. Volunteers sort thousands of donated
novels, atlases and cookbooks into boxes on long tables in the community hall. Children buy
comics for a few coins, students hunt for cheap textbooks, and collectors arrive early hoping
to find a first edition that nobody else has noticed. The money pays for new reading chairs.

To plant a tree well, dig a hole twice as wide as the root ball but no deeper than it. Loosen
the roots gently, set the tree so that the top of the root ball sits level with the ground,
and fill the hole with the soil you removed. Water it slowly and deeply, then spread a layer
of mulch around the base, keeping it a hand's width away from the trunk.
"""


@dataclass(frozen=True)
class Quality:
    """Size and perplexity of a conversion's source and result."""

    source_size_bytes: int
    size_bytes: int
    source_perplexity: float | None
    perplexity: float | None
    tokens: int
    text: str  # "builtin" or the path of the text file
    max_ppl_increase_pct: float | None = None
    error: str | None = None
    task: TaskDelta | None = None  # the task metric on a test set from --eval-data or the lineage

    @property
    def size_reduction_pct(self) -> float:
        return 100.0 * (1 - self.size_bytes / self.source_size_bytes) if self.source_size_bytes else 0.0

    @property
    def perplexity_increase_pct(self) -> float | None:
        if self.perplexity is None or not self.source_perplexity:
            return None
        return 100.0 * (self.perplexity / self.source_perplexity - 1)

    @property
    def flagged(self) -> bool:
        """True when the perplexity rose more than allowed (or could not be measured against a limit)."""
        if self.max_ppl_increase_pct is None:
            return False
        inc = self.perplexity_increase_pct
        return inc is None or inc > self.max_ppl_increase_pct

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "task": self.task.to_dict() if self.task else None,
            "size_reduction_pct": round(self.size_reduction_pct, 2),
            "perplexity_increase_pct": _round(self.perplexity_increase_pct),
            "flagged": self.flagged,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class OnnxScorer:
    """An ONNX GenAI model seen through the two things ``perplexity`` uses: ``config`` and a
    forward call returning ``.loss`` (mean next-token cross-entropy over labels != -100)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config = SimpleNamespace(max_position_embeddings=engine.context_length)

    def __call__(self, input_ids: Any, labels: Any) -> SimpleNamespace:
        import torch

        logits = torch.from_numpy(self.engine.logits(input_ids[0].tolist()))
        loss = torch.nn.functional.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=-100)
        return SimpleNamespace(loss=loss)


def open_scorer(path: Path, fmt: str, *, base_dir: Path | None = None, base_gguf: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``perplexity`` from an artifact of any format."""
    from slmops.models.artifacts import gguf_file
    from slmops.models.loader import load_causal_lm, load_with_adapter

    if fmt == "hf":
        return load_causal_lm(path)
    if fmt == "gguf":
        f = gguf_file(path)
        return load_causal_lm(f.parent, gguf_file=f.name)
    if fmt == "peft-adapter":
        if base_dir is None:
            raise SlmopsError(f"Scoring the adapter at {path} needs its base model.")
        return load_with_adapter(path, base_dir, gguf_file=base_gguf)
    if fmt == "onnx-genai":
        from slmops.engines.ortgenai_engine import OrtGenAIEngine

        engine = OrtGenAIEngine(path)
        return OnnxScorer(engine), engine.tokenizer
    raise SlmopsError(f"Cannot measure the perplexity of a {fmt} artifact.")


def score(path: Path, fmt: str, text: str, **base: Any) -> tuple[float, int]:
    """Perplexity and scored token count of one artifact on ``text`` (the model is freed after)."""
    from slmops.evaluate.metrics import perplexity

    model, tokenizer = open_scorer(path, fmt, **base)
    try:
        result = perplexity(model, tokenizer, text)
    finally:
        del model
        gc.collect()
    return result.perplexity, result.tokens


def read_text(ppl_text: Path | None) -> tuple[str, str]:
    """The held-out text and its label: a user file, else the built-in passage."""
    if ppl_text is None:
        return HELD_OUT_TEXT, "builtin"
    try:
        text = ppl_text.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlmopsError(f"Cannot read the perplexity text {ppl_text} ({exc}).", "Give a UTF-8 text file.") from exc
    if len(text.split()) < 20:
        raise SlmopsError(f"{ppl_text} is too short to measure perplexity on.", "Give at least a paragraph of text.")
    return text, str(ppl_text)
