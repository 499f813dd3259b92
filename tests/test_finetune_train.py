"""The fine-tuning recipe on a tiny model: learning, registration, adapters in the engine,
resume after SIGKILL, early stopping, QLoRA, and the run-folder rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slmops.engines import open_engine
from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.errors import SlmopsError
from slmops.models.artifacts import import_model
from slmops.train import make_config, run

ROWS = [
    {"question": "What is the capital of France?", "answer": "Paris"},
    {"question": "What is the capital of Italy?", "answer": "Rome"},
    {"question": "What is two plus two?", "answer": "Four"},
    {"question": "How are you today?", "answer": "I am fine, thank you."},
    {"question": "Say hello", "answer": "Hello world!"},
    {"question": "What is 1+1?", "answer": "2"},
]
TEMPLATE = "Q: {question}\nA: {answer}"


@pytest.fixture(scope="session")
def base_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with larger embeddings: a frozen random model's near-zero logits would
    otherwise leave LoRA nothing to scale up, and memorisation would take hundreds of steps."""
    import torch

    from slmops.models.loader import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(6)
    out = tmp_path_factory.mktemp("base") / "tiny-base"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


@pytest.fixture()
def base(store, base_dir) -> str:
    return import_model(store, base_dir, "tiny").ref


def config(data: Path, **kw):
    values = dict(model="tiny", data=str(data), output="qa", text_template=TEMPLATE, batch_size=6, packing=False,
                  max_steps=40, lr=1e-2, lora_alpha=64, save_interval=100)  # fmt: skip
    return make_config({**values, **kw})


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x[key] for x in lines if key in x]


def answer(store, ref: str, question: str) -> str:
    with open_engine(ref, store) as engine:
        req = GenerationRequest(prompt=f"Q: {question}\nA: ", params=GenerationParams(max_tokens=8))
        return engine.generate([req])[0].text


@pytest.mark.parametrize(("method", "lr"), [("full", 3e-3), ("lora", 1e-2)])
def test_memorises_and_registers_with_lineage(store, base, data, method, lr):
    res = run(config(data, method=method, lr=lr), store=store)
    log = losses(res.run_dir)
    assert len(log) == res.steps == 40
    assert log[-1] < log[0] / 2.5
    rec = res.record
    assert rec.format == ("hf" if method == "full" else "peft-adapter")
    assert rec.parents == [base]
    assert rec.recipe["base"] == base and rec.recipe["config"]["lr"] == lr
    assert rec.recipe["data"] == {str(data): __import__("hashlib").sha256(data.read_bytes()).hexdigest()}
    assert rec.metrics["train_loss"] == pytest.approx(log[-1])
    assert (rec.path / "slmops.json").exists()
    assert answer(store, rec.ref, "What is the capital of Italy?") == "Rome"
    assert answer(store, rec.ref, "What is 1+1?") == "2"
    if method == "lora":
        assert answer(store, base, "What is 1+1?") != "2"  # the base alone does not know it
        assert rec.parameters == res.trainable_parameters < 20_000


def test_qlora_trains_on_a_4bit_base(store, base, data):
    pytest.importorskip("bitsandbytes")
    lora = run(config(data, method="lora", output="lora", max_steps=3), store=store)
    res = run(config(data, method="qlora", max_steps=30), store=store)
    log = losses(res.run_dir)
    assert log[-1] < log[0] / 2
    assert res.weight_bytes < 0.6 * lora.weight_bytes
    assert res.record.format == "peft-adapter" and res.record.recipe["config"]["method"] == "qlora"


def test_qlora_lets_go_of_the_float32_file(store, base, data):
    """Only the 4-bit weights stay: no page of the float32 safetensors file is kept mapped."""
    pytest.importorskip("bitsandbytes")
    from slmops.models.resolve import resolve
    from slmops.train.model import load_for_training

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux /proc")
    folder = str(store.get(base).path)
    model = load_for_training(resolve(base, store), config(data, method="qlora"))
    assert not [line for line in Path("/proc/self/maps").read_text().splitlines() if folder in line]
    assert model.get_base_model().lm_head.weight is model.get_base_model().model.embed_tokens.weight  # still tied


CHILD = """
import json, sys, time
from slmops.train import make_config, run
def observe(event):
    if event.kind == "checkpoint" and event.step == 10:
        time.sleep(300)  # parked here until the test kills us
run(make_config(json.loads(sys.argv[1])), progress=observe)
"""


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(store, base, data, home):
    values = dict(model="tiny", data=str(data), text_template=TEMPLATE, method="lora", batch_size=2, max_steps=20,
                  packing=False, lr=1e-2, lora_dropout=0.1, save_interval=5, eval_interval=5)  # fmt: skip
    values["eval_split"] = 0.2
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({**values, "output": "killed"})],
                             env={**os.environ, "SLMOPS_HOME": str(home)}, stderr=subprocess.PIPE)  # fmt: skip
    ckpt = home / "runs" / "finetune-killed" / "checkpoints" / "step-000010"
    deadline = time.time() + 120
    while not ckpt.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), child.stderr.read().decode() if child.poll() is not None else "no checkpoint in time"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert store.find("killed") is None

    with pytest.raises(SlmopsError, match="unfinished run"):
        run(make_config({**values, "output": "killed"}), store=store)
    with pytest.raises(SlmopsError, match="differ from the interrupted run: lr"):
        run(make_config({**values, "output": "killed", "resume": True, "lr": 0.5}), store=store)
    resumed = run(make_config({**values, "output": "killed", "resume": True}), store=store)
    straight = run(make_config({**values, "output": "straight"}), store=store)
    assert resumed.resumed_from == 10 and straight.resumed_from == 0
    assert [json.loads(x)["step"] for x in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()] == [
        json.loads(x)["step"] for x in (straight.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses(resumed.run_dir) == pytest.approx(losses(straight.run_dir), rel=1e-4)
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=1e-4)
    assert resumed.eval_loss == pytest.approx(straight.eval_loss, rel=1e-4)
    assert len(list((resumed.run_dir / "checkpoints").iterdir())) == 2  # rotated to the last two
    with pytest.raises(SlmopsError, match="nothing to resume"):
        run(make_config({**values, "output": "killed", "resume": True}), store=store)


def test_early_stopping_registers_the_best_checkpoint(store, base, data, tmp_path):
    from slmops.data.examples import build_examples
    from slmops.models.loader import load_with_adapter
    from slmops.train.batches import eval_batches
    from slmops.train.steps import evaluate

    contrary = tmp_path / "eval.jsonl"  # same questions, other answers: eval loss rises as training memorises
    contrary.write_text("".join(json.dumps({**r, "answer": "Nobody knows that."}) + "\n" for r in ROWS))
    cfg = config(data, method="lora", eval_data=str(contrary), eval_interval=2, patience=2, max_steps=60)
    res = run(cfg, store=store)
    evals = losses(res.run_dir, "eval_loss")
    assert res.stopped_early and res.steps < 60
    assert res.eval_loss == pytest.approx(min(evals)) and res.best_step < res.steps
    assert res.record.metrics["best_step"] == res.best_step
    model, tok = load_with_adapter(res.record.path, store.get(base).path)
    examples = build_examples(contrary, tok, max_seq_len=512, text_template=TEMPLATE).examples
    assert evaluate(model, eval_batches(examples, 512, 6, tok.pad_token_id)) == pytest.approx(res.eval_loss, rel=1e-4)


def test_validation_happens_before_any_training(store, base, data, tiny_model_dir):
    with pytest.raises(SlmopsError, match="needs its base model in the store"):
        run(config(data, model=str(tiny_model_dir)), store=store)
    with pytest.raises(SlmopsError, match="line 1: template field 'query' is missing"):
        run(config(data, text_template="{query} => {answer}"), store=store)
    assert not (store.home / "runs" / "finetune-qa" / "config.json").exists()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_losses(store, base, data, method):
    kw = dict(method=method, lr=3e-3 if method == "full" else 1e-2, max_steps=3, batch_size=3, lora_dropout=0.0)
    plain = run(config(data, output="plain", **kw), store=store)
    ckpt = run(config(data, output="ckpt", gradient_checkpointing=True, **kw), store=store)
    assert ckpt.record.recipe["config"]["gradient_checkpointing"] is True
    assert losses(ckpt.run_dir) == pytest.approx(losses(plain.run_dir), rel=1e-4)
    assert losses(plain.run_dir)[-1] < losses(plain.run_dir)[0]  # the steps did train
    # ... and it is really on: the forward keeps far fewer tensors for the backward (it recomputes them)
    import torch

    from slmops.models.resolve import resolve
    from slmops.train.batches import collate, make_rows
    from slmops.train.model import load_for_training, load_tokenizer
    from slmops.train.setup import load_data
    from slmops.train.steps import token_loss_sum

    saved = {False: 0, True: 0}
    for checkpointing in (False, True):
        cfg = config(data, gradient_checkpointing=checkpointing, **kw)
        resolved = resolve(base, store)
        model = load_for_training(resolved, cfg).train()
        batch = collate(make_rows(load_data(cfg, load_tokenizer(resolved))[0].examples, 512, packing=False, seed=0), 0)

        def pack(t, on=checkpointing):
            saved[on] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = token_loss_sum(model, batch)
        loss.backward()
    assert saved[True] < saved[False] / 2
