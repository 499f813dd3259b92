"""Several adapters on one base: one engine, one adapter picked per request, mixed in one batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slmops.engines import open_engine, open_engine_with_adapters
from slmops.engines.base import GenerationParams, GenerationRequest
from slmops.errors import EngineError
from slmops.train import run
from tests import test_finetune_train as ft
from tests.test_finetune_train import ROWS, config

base_dir, base = ft.base_dir, ft.base  # the tiny base model fixtures

SWAPPED = {"Paris": "Rome", "Rome": "Paris", "Four": "2", "2": "Four", "Hello world!": "I am fine, thank you.",
           "I am fine, thank you.": "Hello world!"}  # every answer moved to another question  # fmt: skip
QUESTIONS = ["What is the capital of Italy?", "What is the capital of France?", "What is two plus two?"]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def requests(adapter: str | None) -> list[GenerationRequest]:
    params = GenerationParams(max_tokens=8)
    return [GenerationRequest(prompt=f"Q: {q}\nA: ", params=params, adapter=adapter) for q in QUESTIONS]


@pytest.fixture()
def two_adapters(store, base, tmp_path) -> tuple[str, str]:
    plain = write(tmp_path / "plain.jsonl", ROWS)
    swapped = write(tmp_path / "sw.jsonl", [{**r, "answer": SWAPPED[r["answer"]]} for r in ROWS])
    en = run(config(plain, output="en", method="lora"), store=store).record
    it = run(config(swapped, output="sw", method="lora"), store=store).record
    return en.ref, it.ref


def test_one_base_serves_each_request_with_its_own_adapter(store, base, two_adapters):
    en, it = two_adapters
    with open_engine(f"{base}+{en},{it}", store) as engine:
        mixed = [None] * 3 + [en] * 3 + [it] * 3
        batch = [req.__class__(prompt=req.prompt, params=req.params, adapter=a) for a, req in
                 zip(mixed, requests(None) * 3, strict=True)]  # fmt: skip
        out = [r.text for r in engine.generate(batch[::-1])][::-1]  # adapters interleaved in one batch
        alone = [engine.generate([req])[0].text for req in requests(it)]
    base_out, en_out, it_out = out[:3], out[3:6], out[6:]
    assert en_out == ["Rome", "Paris", "Four"]
    assert it_out == ["Paris", "Rome", "2"] == alone
    assert base_out != en_out and base_out != it_out
    # the same answers as the base alone and as each adapter merged into its own engine
    for ref, expected in ((base, base_out), (en, en_out), (it, it_out)):
        with open_engine(ref, store) as single:
            assert [r.text for r in single.generate(requests(None))] == expected


def test_adapter_choice_errors_are_clear(store, base, base_dir, tmp_path):
    from slmops.models.artifacts import import_model

    cfg = config(write(tmp_path / "qa.jsonl", ROWS), output="qa", method="lora", max_steps=1)
    ad = run(cfg, store=store).record.ref
    with open_engine_with_adapters(None, [ad], store) as engine:  # the base comes from the adapter's record
        assert list(engine.adapters) == [ad] and len(engine.generate(requests(ad)[:1])) == 1
        with pytest.raises(EngineError, match=f"Unknown adapter 'fr'.*holds: {ad}"):
            engine.generate(requests("fr"))
    with open_engine(base, store) as plain, pytest.raises(EngineError, match="opened without adapters"):
        plain.generate(requests(ad))
    with pytest.raises(EngineError, match="not a PEFT adapter"):
        open_engine(f"{base}+{base}", store)
    with pytest.raises(EngineError, match="names no adapters"):
        open_engine(f"{base}+", store)
    other = import_model(store, base_dir, "other").ref
    with pytest.raises(EngineError, match=f"not trained on {other}: {ad} \\(trained on {base}\\)"):
        open_engine(f"{other}+{ad}", store)


def test_generate_and_chat_pick_an_adapter(store, base, two_adapters, tmp_path):
    from typer.testing import CliRunner

    from slmops.cli import app

    en, sw = two_adapters
    runner = CliRunner()

    def ask(ref: str, *extra: str) -> str:
        args = ["generate", ref, *extra, "--raw", "--max-tokens", "8", "--json", "--prompt", f"Q: {QUESTIONS[0]}\nA: "]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["text"]

    assert ask(base, "--adapter", en) == "Rome"
    assert ask(base, "--adapter", sw) == "Paris"
    assert ask(f"{base}+{en},{sw}", "--adapter", sw) == "Paris"
    assert ask(base) not in ("Rome", "Paris")  # the base alone
    prompts = write(tmp_path / "prompts.jsonl", [{"prompt": f"Q: {q}\nA: "} for q in QUESTIONS])
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(app, ["generate", base, "--adapter", sw, "--input", str(prompts), "--output", str(out),
                                 "--raw", "--max-tokens", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["output"] for x in out.read_text().splitlines()] == ["Paris", "Rome", "2"]
    wrong = runner.invoke(app, ["generate", f"{base}+{en}", "--adapter", sw, "--prompt", "hi"])
    assert f"--adapter {sw} is not one of the adapters opened with {base}+{en}" in str(wrong.exception)
    chat = runner.invoke(app, ["chat", base, "--adapter", en, "--max-tokens", "4", "--seed", "1"], input="Hi\n/exit\n")
    assert chat.exit_code == 0 and f"chatting with {base} with adapter {en}" in chat.output
