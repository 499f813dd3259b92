"""A store for the console tests, made by the real pipeline on tiny models: a remote teacher
(a fake OpenAI endpoint) labels tickets, a pruned tiny student is distilled, evaluated against
the teacher, gated and registered as ``router@prod``; then a second run with one setting
changed (``steps``), so there are two runs to compare and two registered versions."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

from slmops.models.store import ModelStore
from slmops.pipeline import parse_spec, run_pipeline
from tests.test_remote_engine import FakeOpenAI, Handler

TICKETS = [
    ("I was charged twice this month.", "billing"),
    ("The app crashes when I log in.", "technical"),
    ("Please change my email address.", "account"),
    ("My invoice shows the wrong amount.", "billing"),
    ("The page shows error 500 after the update.", "technical"),
    ("How do I reset my password?", "account"),
]
GOLD = dict(TICKETS)

PIPELINE = """
name: ui-demo
vars:
  teacher: {teacher}
  steps: 2
steps:
  prune:
    kind: prune
    model: tiny
    keep_layers: 1
    calibration: {data}
  distill:
    kind: distill
    teacher: ${{vars.teacher}}
    student: ${{steps.prune.model}}
    generate: {{data: {data}, task: classification, labels: [billing, technical, account], batch_size: 4}}
    train:
      method: full
      max_steps: ${{vars.steps}}
      batch_size: 4
      max_seq_len: 256
  evaluate:
    kind: evaluate
    models:
      teacher: ${{vars.teacher}}
      student: ${{steps.distill.model}}
    data: {data}
    task: classification
    labels: [billing, technical, account]
    max_tokens: 3
    latency_samples: 2
  gate:
    kind: gate
    checks:
      - ${{steps.evaluate.teacher.accuracy}} >= 0.99
  register:
    kind: register
    model: ${{steps.distill.model}}
    name: router
    aliases: [prod]
"""


def _label(body: dict) -> str:
    text = body["messages"][-1]["content"]
    return next(label for prompt, label in GOLD.items() if prompt in text)


@contextlib.contextmanager
def fake_teacher() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.fake = FakeOpenAI(reply=_label)  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1#big-teacher"
    finally:
        httpd.shutdown()
        httpd.server_close()


def build_store(home: Path, tiny_model_dir: Path, work: Path) -> tuple[ModelStore, list[str]]:
    """(the store, the two run ids, oldest first)."""
    store = ModelStore(home)
    with store.staging() as staged:
        shutil.copytree(tiny_model_dir, staged / "model")
        store.add(staged / "model", "tiny", "hf")
    data = work / "tickets.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in TICKETS))
    ids = []
    with fake_teacher() as teacher:
        for steps in (2, 3):
            spec = parse_spec(PIPELINE.format(teacher=teacher, data=data), "ui-demo.yaml", {"steps": steps})
            run = run_pipeline(spec, store=store)
            assert run.status == "succeeded", {n: s.error for n, s in run.steps.items()}
            ids.append(run.id)
    return store, ids
