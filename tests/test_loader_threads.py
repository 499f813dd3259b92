"""Models loaded from several threads at once (a server warming a new version while it serves,
a fleet agent switching) must not corrupt transformers' process-wide state: its loading context
managers swap ``PreTrainedModel.init_weights`` / ``tie_weights`` and torch's init functions and
put them back on exit, which two interleaved loads can leave swapped for good."""

from __future__ import annotations

import threading
from pathlib import Path

import torch


def test_concurrent_loads_leave_transformers_state_intact(tiny_model_dir: Path):
    from transformers import PreTrainedModel

    from slmops.models.loader import load_causal_lm

    before = (PreTrainedModel.init_weights, PreTrainedModel.tie_weights, torch.nn.init.normal_)
    errors: list[BaseException] = []
    models: list = []

    def load() -> None:
        try:
            for _ in range(3):
                models.append(load_causal_lm(tiny_model_dir)[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert (PreTrainedModel.init_weights, PreTrainedModel.tie_weights, torch.nn.init.normal_) == before
    reference = load_causal_lm(tiny_model_dir)[0]
    for model in [*models, reference]:
        head = model.get_output_embeddings().weight
        assert head.device.type == "cpu" and torch.isfinite(head).all()
        assert torch.equal(head, reference.get_output_embeddings().weight)
