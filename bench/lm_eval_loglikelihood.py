"""Benchmark: lm-evaluation-harness log-likelihood accuracy through ``slmops serve`` vs the
harness's own Hugging Face backend, on the same model and the same multiple-choice items.

A small multiple-choice task (``--items`` questions, 4 choices each, written to a temporary
folder as JSONL plus a task YAML) is run twice with ``lm_eval.simple_evaluate``:

* ``local-completions``: the harness sends token-id prompts with ``echo`` and ``logprobs`` to
  ``/v1/completions`` of an in-process ``slmops serve`` (torch engine) and sums the returned
  prompt token log-probabilities of each choice;
* ``hf``: the harness loads the same model folder with transformers and scores it itself.

The figure is whether both pick the same choice on every item (and the accuracy of each); the
largest difference between the two log-likelihoods of any (item, choice) is reported too. The last
stdout line is one JSON object. Needs ``pip install lm-eval`` (the ``lmeval`` extra).

    SLMOPS_HOME=/tmp/so-home .venv/bin/python bench/lm_eval_loglikelihood.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

MODEL = "smollm2-135m-instruct"

QUESTIONS = [
    ("The capital of France is", ["Paris", "Rome", "Berlin", "Madrid"], 0),
    ("The capital of Italy is", ["Vienna", "Rome", "Lisbon", "Oslo"], 1),
    ("The capital of Japan is", ["Seoul", "Beijing", "Tokyo", "Bangkok"], 2),
    ("Water freezes at a temperature of", ["100 degrees", "50 degrees", "10 degrees", "0 degrees"], 3),
    ("The largest planet in the solar system is", ["Jupiter", "Mars", "Venus", "Mercury"], 0),
    ("A week has", ["five days", "seven days", "ten days", "three days"], 1),
    ("The opposite of hot is", ["warm", "loud", "cold", "fast"], 2),
    ("Two plus two equals", ["three", "five", "six", "four"], 3),
    ("Bees make", ["honey", "milk", "silk", "wool"], 0),
    ("The sun rises in the", ["west", "east", "north", "south"], 1),
    ("A baby cat is called a", ["puppy", "calf", "kitten", "foal"], 2),
    ("The color of the clear sky is", ["green", "red", "yellow", "blue"], 3),
    ("The chemical symbol for water is", ["H2O", "CO2", "O2", "NaCl"], 0),
    ("The number of legs a spider has is", ["six", "eight", "four", "ten"], 1),
    ("The author of Romeo and Juliet is", ["Dickens", "Tolstoy", "Shakespeare", "Homer"], 2),
    ("Ice is the solid form of", ["air", "salt", "sand", "water"], 3),
    ("The fastest land animal is the", ["cheetah", "tortoise", "cow", "snail"], 0),
    ("Plants make food through", ["digestion", "photosynthesis", "respiration", "erosion"], 1),
    ("The first month of the year is", ["March", "June", "January", "October"], 2),
    ("A triangle has", ["five sides", "two sides", "six sides", "three sides"], 3),
    ("The Eiffel Tower is in", ["Paris", "London", "New York", "Sydney"], 0),
    ("People breathe in", ["helium", "oxygen", "neon", "argon"], 1),
    ("The boiling point of water at sea level is", ["50 degrees", "75 degrees", "100 degrees", "150 degrees"], 2),
    ("The tallest animal is the", ["mouse", "dog", "horse", "giraffe"], 3),
    ("The Moon orbits the", ["Earth", "Sun only", "Mars", "Jupiter"], 0),
    ("A year has", ["ten months", "twelve months", "fifteen months", "six months"], 1),
    ("The primary language of Brazil is", ["Spanish", "French", "Portuguese", "German"], 2),
    ("Cows drink", ["oil", "juice", "coffee", "water"], 3),
    ("The largest ocean is the", ["Pacific", "Arctic", "Indian", "Atlantic"], 0),
    ("Ten minus three is", ["six", "seven", "eight", "nine"], 1),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=MODEL, help=f"store model ref (default {MODEL})")
    p.add_argument("--items", type=int, default=len(QUESTIONS), help="questions (default all 30)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def write_task(folder: Path, items: int) -> str:
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS[:items]))  # fmt: skip
    (folder / "slmops_mc.yaml").write_text(
        "task: slmops_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: answer\n"
        "target_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n"
    )
    return "slmops_mc"


def run(model: str, model_args: str, task: str, folder: Path) -> tuple[float, list[int], list[list[float]], float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[task], log_samples=True,
                                  task_manager=TaskManager(include_path=str(folder)), batch_size=1)  # fmt: skip
    seconds = time.perf_counter() - t0
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    picks = [max(range(len(v)), key=v.__getitem__) for v in lls]
    return out["results"][task]["acc,none"], picks, lls, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from slmops.models.resolve import resolve
    from slmops.models.store import ModelStore
    from slmops.serve import ServeConfig, create_app
    from slmops.serve.runner import BackgroundServer

    load_before = os.getloadavg()
    store = ModelStore()
    path = resolve(args.model, store).load_dir
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        task = write_task(folder, args.items)
        app = create_app(store, ServeConfig(models=(args.model,), threads=args.threads))
        with BackgroundServer(app) as srv:
            served_args = (f"base_url={srv.url}/v1/completions,model={args.model},tokenizer={path},"
                           "tokenized_requests=True,num_concurrent=1,max_retries=1")  # fmt: skip
            served = run("local-completions", served_args, task, folder)
        hf = run("hf", f"pretrained={path},dtype=float32,device=cpu", task, folder)
    same = sum(a == b for a, b in zip(served[1], hf[1], strict=True))
    diff = max(abs(x - y) for a, b in zip(served[2], hf[2], strict=True) for x, y in zip(a, b, strict=True))
    print(f"{'backend':20} {'acc':>6} {'seconds':>8}")
    print(f"{'slmops serve':20} {served[0]:>6.3f} {served[3]:>8.1f}")
    print(f"{'hf (harness)':20} {hf[0]:>6.3f} {hf[3]:>8.1f}")
    print(f"identical choices: {same}/{len(hf[1])}; largest log-likelihood difference {diff:.2e}")
    print(json.dumps({
        "bench": "lm_eval_loglikelihood", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()], "model": args.model, "items": len(hf[1]),
        "acc_served": served[0], "acc_hf": hf[0], "identical_choices": same, "max_loglik_diff": diff,
        "seconds_served": round(served[3], 1), "seconds_hf": round(hf[3], 1),
    }))  # fmt: skip
    return 0 if same == len(hf[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
