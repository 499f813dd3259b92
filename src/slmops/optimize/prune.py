"""``slmops prune``: a smaller student by dropping the least important transformer layers.

Reads top to bottom: validate the options, resolve the source (a GGUF is dequantized, an
adapter merged, as for ``optimize``), check ``keep_layers`` against the model's depth, load
it, tokenize the calibration data, score every layer in one forward pass, drop the lowest
scores, measure the calibration loss before and after, save a Hugging Face folder and register
it with its lineage. Everything is built in staging folders: a failure leaves nothing behind.

The score is ShortGPT's *block influence* (Men et al., 2024): ``BI = 1 - cos(h_in, h_out)``
averaged over the calibration tokens, where ``h_in``/``h_out`` are a layer's input and output
hidden states. A layer that barely turns the residual stream scores near 0 and is the safest to
drop (an identity layer scores exactly 0). We use it rather than "loss increase when the layer
is skipped" because it needs one forward pass for all layers instead of one per layer (31
passes for SmolLM2's 30 layers), so pruning stays a few seconds on a 2-core CPU, and the
distillation that follows recovers what a one-shot ranking misses.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from slmops.configs import CommandConfig
from slmops.errors import SlmopsError
from slmops.models.artifacts import disk_errors, inspect, require_free_space, write_provenance
from slmops.models.refs import name_problems, validate_name
from slmops.models.resolve import ResolvedModel, resolve
from slmops.models.store import ModelRecord, ModelStore, folder_size

Progress = Callable[[str], None]
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")  # config lists with one entry per layer
SCORE = "block_influence"


class PruneConfig(CommandConfig):
    """Every option of one prune run; CLI flag = Python argument (``--keep-layers`` = ``keep_layers``).

    ``keep_layers``: layers to keep, a count (``12``) or a fraction of the source's (``0.6``).
    ``calibration``: text (``.txt``), records (JSONL/JSON/CSV/Parquet with ``prompt``, ``messages`` or
    ``text``) or ``builtin:NAME``; default: the built-in held-out English text.
    """

    what: ClassVar[str] = "prune options"
    example: ClassVar[str] = "`slmops prune --help` lists them."

    ref: str = Field(description="Source model: name, name:version, name@alias or a path.")
    keep_layers: str | int | float = Field(description="Layers to keep: a count (12) or a fraction (0.6).")
    output: str | None = Field(None, description="Store name of the result (default: <source>-pruned-<N>l).")
    calibration: str | None = Field(None, description="Calibration data: a .txt file, records "
                                                      "(prompt/messages/text) or builtin:NAME (default: built-in "
                                                      "English text).")
    calibration_tokens: int = Field(2048, description="Most calibration tokens to score with.")
    seq_len: int = Field(512, description="Tokens per calibration sequence.")
    threads: int | None = Field(None, description="CPU threads for inference (default: all cores).")

    def problems(self) -> list[str]:
        p: list[str] = []
        try:
            parse_keep(self.keep_layers)
        except SlmopsError as exc:
            p.append(exc.message)
        if self.calibration_tokens < 16:
            p.append(f"--calibration-tokens must be >= 16 (got {self.calibration_tokens})")
        if self.seq_len < 16:
            p.append(f"--seq-len must be >= 16 (got {self.seq_len})")
        p += name_problems(self.output)
        return p


@dataclass(frozen=True)
class PruneResult:
    source: str
    record: ModelRecord
    layers: int  # of the source
    kept: list[int]
    removed: list[tuple[int, float]]  # (source layer index, score), lowest score first
    scores: list[float]  # every source layer's score, by index
    calibration: dict[str, Any]  # source, sha256, tokens
    loss_before: float
    loss_after: float
    seconds: float
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def perplexity_before(self) -> float:
        return math.exp(min(self.loss_before, 50))

    @property
    def perplexity_after(self) -> float:
        return math.exp(min(self.loss_after, 50))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "record": self.record.to_dict(), "layers": self.layers, "kept": self.kept,
            "removed": [{"layer": i, "score": s} for i, s in self.removed], "scores": self.scores,
            "score": SCORE, "calibration": self.calibration, "loss_before": self.loss_before,
            "loss_after": self.loss_after, "perplexity_before": self.perplexity_before,
            "perplexity_after": self.perplexity_after, "seconds": round(self.seconds, 2),
        }


def parse_keep(value: str | int | float) -> int | float:
    """``"12"``/``12`` → 12 layers; ``"0.6"``/``0.6`` → a fraction. Bounds against the depth come later."""
    text = str(value).strip()
    bad = SlmopsError(
        f"--keep-layers must be a layer count (e.g. 12) or a fraction between 0 and 1 (e.g. 0.6); got {text!r}.",
        "Example: slmops prune smollm2-135m-instruct --keep-layers 0.5",
    )
    if isinstance(value, bool):
        raise bad
    if re.fullmatch(r"\d+", text):
        if int(text) < 1:
            raise bad
        return int(text)
    try:
        frac = float(text)
    except ValueError:
        raise bad from None
    if not 0 < frac < 1:
        raise bad
    return frac


def layers_to_keep(value: str | int | float, total: int) -> int:
    """The number of layers to keep out of ``total``; at least one, fewer than ``total``."""
    keep = parse_keep(value)
    n = round(keep * total) if isinstance(keep, float) else keep
    if n < 1 or n >= total:
        what = f"{keep} of {total} layers is {n}" if isinstance(keep, float) else f"{n}"
        raise SlmopsError(
            f"--keep-layers {value} does not prune: the model has {total} layers and {what} would be kept.",
            f"Keep between 1 and {total - 1} layers (or a fraction that leaves at least one out).",
        )
    return n


def _check(config: PruneConfig) -> None:
    problems = config.problems()
    if problems:
        raise SlmopsError("Invalid prune options: " + "; ".join(problems) + ".", "`slmops prune --help` lists them.")


def default_output(source: ResolvedModel, keep: int) -> str:
    base = source.record.name if source.record else re.sub(r"[^a-z0-9._-]+", "-", source.path.stem.lower())
    suffix = f"pruned-{keep}l"
    return validate_name(f"{(base.strip('-._') or 'model')[: 99 - len(suffix)]}-{suffix}")


# -- calibration data ----------------------------------------------------------------------------
def calibration_texts(calibration: str | None, tokenizer: Any) -> tuple[list[str], str, str]:
    """The calibration texts, a label and the SHA-256 of the source they came from."""
    from slmops.optimize.quality import HELD_OUT_TEXT

    if calibration is None:
        return [HELD_OUT_TEXT], "builtin:held-out-text", hashlib.sha256(HELD_OUT_TEXT.encode()).hexdigest()
    from slmops.data.records import read_located
    from slmops.evaluate.builtin import resolve_data
    from slmops.train.lineage import file_sha256

    path, _ = resolve_data(calibration)
    if not path.is_file():
        raise SlmopsError(f"Calibration file {path} does not exist.", "Give a .txt, .jsonl, .json, .csv or .parquet "
                          "file, or builtin:NAME (omit --calibration for the built-in text).")
    if path.suffix.lower() in (".txt", ".md"):
        texts = [path.read_text(encoding="utf-8")]
    else:
        texts = [_record_text(rec, where, tokenizer) for where, rec in read_located(path)]
    if not any(t.strip() for t in texts):
        raise SlmopsError(f"Calibration file {path} holds no text.", "Give a file with text, prompts or messages.")
    return texts, str(calibration), file_sha256(path)


def _record_text(rec: dict[str, Any], where: str, tokenizer: Any) -> str:
    """A record as the model sees it: chat-formatted (with its gold answer as the reply) or plain text."""
    if isinstance(rec.get("messages"), list):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in rec["messages"]]
    elif isinstance(rec.get("prompt"), str):
        messages = [{"role": "user", "content": rec["prompt"]}]
        answer = rec.get("completion", rec.get("answer"))
        if isinstance(answer, str):
            messages.append({"role": "assistant", "content": answer})
    elif isinstance(rec.get("text"), str):
        return rec["text"]
    else:
        raise SlmopsError(f"{where}: a calibration record needs 'prompt', 'messages' or 'text'.",
                          "Fix the record, or give a plain .txt file.")
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    return "\n".join(m["content"] for m in messages)


def calibration_batches(texts: list[str], tokenizer: Any, max_tokens: int, seq_len: int) -> list[Any]:
    """The texts' tokens, concatenated and cut into sequences of at most ``seq_len`` (``max_tokens`` in all)."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise SlmopsError("The calibration data is shorter than two tokens.", "Give more calibration text.")
    return [torch.tensor([ids[i : i + seq_len]]) for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) > 1]


# -- scoring and pruning ---------------------------------------------------------------------------
def decoder_layers(model: Any) -> Any:
    """The model's ``nn.ModuleList`` of transformer blocks (Llama, Gemma 3, Qwen, Mistral, ...)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise SlmopsError(f"Cannot find the transformer layers of {type(model).__name__}.",
                          "Pruning supports decoder-only models with a `model.layers` list (Llama, Gemma 3, Qwen).")
    return layers


def block_influence(model: Any, batches: list[Any]) -> tuple[list[float], float]:
    """Each layer's mean ``1 - cos(h_in, h_out)`` over every calibration token, and the mean LM loss."""
    import torch

    layers = decoder_layers(model)
    sums = [0.0] * len(layers)
    tokens = 0

    def hook(index: int) -> Callable[..., None]:
        def record(_module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            sums[index] += float((1 - cos).sum())

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        loss = lm_loss(model, batches)
        tokens = sum(b.shape[1] for b in batches)
    finally:
        for h in handles:
            h.remove()
    return [s / tokens for s in sums], loss


def lm_loss(model: Any, batches: list[Any]) -> float:
    """Mean next-token loss over the calibration batches (each weighted by its predicted tokens)."""
    import torch

    total = count = 0.0
    with torch.inference_mode():
        for ids in batches:
            out = model(input_ids=ids, labels=ids, use_cache=False)
            n = ids.shape[1] - 1
            total += float(out.loss) * n
            count += n
    return total / count


def drop_layers(model: Any, keep: list[int]) -> None:
    """Keep only the layers ``keep`` (source indices, ascending), renumbered 0..k-1, in place;
    the config's layer count and per-layer lists (e.g. Gemma 3's ``layer_types``) follow."""
    import torch

    layers = decoder_layers(model)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new
    model.get_decoder().layers = kept
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        total = getattr(config, "num_hidden_layers", None)
        for key in PER_LAYER_KEYS:
            values = getattr(config, key, None)
            if isinstance(values, list) and len(values) == total:
                setattr(config, key, [values[i] for i in keep])
        if total is not None:
            config.num_hidden_layers = len(keep)


def source_layers(hf_dir: Path) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(hf_dir)).get_text_config()
    except (OSError, ValueError, KeyError) as exc:
        raise SlmopsError(f"Cannot read the config of {hf_dir} ({exc}).", "Re-import or re-pull the model.") from exc
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int) or total < 2:
        raise SlmopsError(f"{hf_dir} has {total} transformer layers; pruning needs at least 2.")
    return total


def prune(config: PruneConfig, *, store: ModelStore | None = None, progress: Progress | None = None) -> PruneResult:
    """Drop the least important layers of ``config.ref`` (by block influence on the calibration
    data) and register the smaller model with its lineage."""
    from slmops.models.loader import load_causal_lm
    from slmops.optimize.run import _source_hf

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    _check(config)
    store = store or ModelStore()
    source = resolve(config.ref, store, progress=progress)
    if source.format == "onnx-genai":
        raise SlmopsError(f"{source.label} is an ONNX GenAI model, which cannot be pruned.",
                          "Prune its Hugging Face source, then convert the pruned model.")
    require_free_space(store.home, 3 * folder_size(source.path) + 2**20, f"pruning {source.label}")
    with (
        store.staging("prune-work") as work,
        store.staging("prune") as stage,
        disk_errors(f"pruning {source.label}", store.home),
    ):
        hf_dir, _base = _source_hf(source, store, work, say)
        total = source_layers(hf_dir)
        keep_n = layers_to_keep(config.keep_layers, total)
        name = config.output or default_output(source, keep_n)
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        say(f"loading {source.label} ({total} layers)")
        model, tokenizer = load_causal_lm(hf_dir)
        model.eval()
        texts, cal_label, cal_sha = calibration_texts(config.calibration, tokenizer)
        batches = calibration_batches(texts, tokenizer, config.calibration_tokens, config.seq_len)
        cal_tokens = sum(b.shape[1] for b in batches)
        say(f"scoring {total} layers by block influence on {cal_tokens} calibration tokens")
        scores, loss_before = block_influence(model, batches)
        order = sorted(range(total), key=lambda i: (scores[i], i))
        removed = sorted(order[: total - keep_n], key=lambda i: (scores[i], i))
        kept = sorted(order[total - keep_n :])
        drop_layers(model, kept)
        loss_after = lm_loss(model, batches)
        say(f"kept {keep_n} of {total} layers; calibration perplexity {math.exp(min(loss_before, 50)):.2f} -> "
            f"{math.exp(min(loss_after, 50)):.2f}")
        out = stage / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        fmt, params = inspect(out)
        calibration = {"source": cal_label, "sha256": cal_sha, "tokens": cal_tokens, "seq_len": config.seq_len}
        recipe = {
            "kind": "prune", "source": source.label, "score": SCORE, "layers": total, "keep_layers": keep_n,
            "kept": kept, "removed": removed, "scores": [round(s, 6) for s in scores], "calibration": calibration,
        }
        metrics = {"prune": {"calibration_loss_before": loss_before, "calibration_loss_after": loss_after}}
        parents = [source.record.ref] if source.record else []
        write_provenance(out, {"name": name, "format": fmt, "parents": parents, "recipe": recipe, "metrics": metrics})
        say(f"registering {name}")
        record = store.add(out, name, fmt, parents=parents, recipe=recipe, metrics=metrics, parameters=params or None)
    return PruneResult(
        source.label, record, total, kept, [(i, scores[i]) for i in removed], scores, calibration, loss_before,
        loss_after, time.perf_counter() - t0, recipe,
    )
