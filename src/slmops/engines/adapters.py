"""One base model, several LoRA adapters, one adapter picked per request.

``open_engine("tiny+qa,chat")`` (or :func:`open_engine_with_adapters`) loads the base once and
every adapter beside it, unmerged. A :class:`~slmops.engines.base.GenerationRequest` names its
adapter in ``adapter`` (as the reference was written: ``"qa"``, ``"chat:2"``); requests for
different adapters, and for the bare base (``adapter=None``), share one batch: PEFT's mixed-batch
LoRA forward applies each row's own adapter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from slmops.errors import EngineError
from slmops.models.artifacts import TOKENIZER_FILES
from slmops.models.pull import Progress
from slmops.models.resolve import ResolvedModel, resolve
from slmops.models.store import ModelStore

if TYPE_CHECKING:
    from slmops.engines.torch_engine import TorchEngine


def parse_multi_ref(ref: str) -> tuple[str | None, list[str]] | None:
    """``"base+a,b"`` -> ``("base", ["a", "b"])`` and ``"+a,b"`` -> ``(None, [...])``; None when
    ``ref`` names no adapters (store names never contain '+')."""
    if "+" not in ref:
        return None
    base, _, rest = ref.partition("+")
    adapters = [a.strip() for a in rest.split(",") if a.strip()]
    if not adapters:
        raise EngineError(f"{ref!r} names no adapters after '+'.", "Write BASE+ADAPTER1,ADAPTER2.")
    return (base.strip() or None), adapters


def open_engine_with_adapters(
    base_ref: str | None,
    adapter_refs: Sequence[str],
    store: ModelStore | None = None,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
):
    """A :class:`~slmops.engines.torch_engine.TorchEngine` over ``base_ref`` holding every adapter
    in ``adapter_refs``; each must be a PEFT adapter trained on that base. Without ``base_ref``
    the adapters' own (common) base is used."""
    from slmops.engines.torch_engine import TorchEngine
    from slmops.models.loader import load_with_adapters

    store = store or ModelStore()
    if not adapter_refs:
        raise EngineError("No adapters given.", "Name at least one adapter, or open the base model alone.")
    if len(set(adapter_refs)) != len(adapter_refs):
        raise EngineError(f"An adapter is named twice in {', '.join(adapter_refs)}.")
    found = [_adapter_and_base(r, store, progress) for r in adapter_refs]
    adapters = [a for a, _ in found]
    bases = {ref: b for ref, (_, b) in zip(adapter_refs, found, strict=True)}
    base = resolve(base_ref, store, progress=progress) if base_ref else next(iter(bases.values()))
    _check_bases(base, bases)
    names = {ref: f"adapter_{i}" for i, ref in enumerate(adapter_refs)}  # PEFT names may not hold '.'
    model, tokenizer = load_with_adapters(
        {names[ref]: a.path for ref, a in zip(adapter_refs, adapters, strict=True)},
        base.load_dir,
        gguf_file=base.gguf_file,
    )
    return TorchEngine(model, tokenizer, threads=threads, adapters=names)


def add_adapter(engine: TorchEngine, base_ref: str, adapter_ref: str, store: ModelStore) -> None:
    """Load one more adapter into a multi-adapter engine opened over ``base_ref`` (a no-op when it
    holds it already). The caller makes sure no forward pass runs meanwhile (the server does it
    between decode steps)."""
    from slmops.models.loader import load_tokenizer

    if adapter_ref in engine.adapters:
        return
    adapter, trained_on = _adapter_and_base(adapter_ref, store, None)
    _check_bases(resolve(base_ref, store), {adapter_ref: trained_on})
    if any((adapter.path / f).exists() for f in TOKENIZER_FILES):
        tok = load_tokenizer(adapter.path)
        if (len(tok), tok.chat_template) != (len(engine.tokenizer), engine.tokenizer.chat_template):
            raise EngineError(
                f"{adapter_ref} ships a tokenizer that differs from the one its engine already uses.",
                "Serve adapters trained with different tokenizers or chat templates from separate engines.",
            )
    name = f"adapter_{len(engine.adapters)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.model.load_adapter(str(adapter.path), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise EngineError(
            f"Could not load the adapter {adapter_ref} onto {base_ref} ({type(exc).__name__}: {exc}).",
            "The adapter may be corrupt; re-train or re-import it.",
        ) from exc
    engine.model.eval()
    engine.adapters[adapter_ref] = name


def _adapter_and_base(
    ref: str, store: ModelStore, progress: Progress | None
) -> tuple[ResolvedModel, ResolvedModel]:
    """A PEFT adapter and the base it was trained on (from its store record)."""
    a = resolve(ref, store, progress=progress)
    if a.format != "peft-adapter":
        raise EngineError(f"{ref} is a {a.format} artifact, not a PEFT adapter.", "Name adapters after '+'.")
    if a.record is None or a.record.base is None:
        raise EngineError(
            f"{ref} is a PEFT adapter without a known base model.",
            "Import it into the store with its base: `slmops models import PATH --name NAME --base BASE`.",
        )
    return a, resolve(a.record.base, store, progress=progress)


def _check_bases(base: ResolvedModel, bases: dict[str, ResolvedModel]) -> None:
    if base.format not in ("hf", "gguf"):
        raise EngineError(f"The base {base.label} is a {base.format} artifact, not a model.")
    wrong = [f"{ref} (trained on {b.label})" for ref, b in bases.items() if b.path != base.path]
    if wrong:
        raise EngineError(
            f"These adapters were not trained on {base.label}: {', '.join(wrong)}.",
            "Open adapters together only with the base they were trained on.",
        )
