"""Nothing lost: a generate run cut off at any byte, or killed with SIGKILL at random moments
on the tiny model, and then resumed, holds every sample of every input exactly once, in whole
lines."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from slmops.cli.distill import app
from slmops.distill import make_generate_config, run_generate
from slmops.distill.journal import repair_torn_tail
from tests.test_distill_generate import ScriptedTeacher, write_rows

ROWS = [{"prompt": f"Ticket {i}: my {('invoice', 'login', 'password')[i % 3]} is wrong."} for i in range(12)]


def _reply(question: str, k: int) -> str:
    i = int(question.split()[1].rstrip(":"))
    return ("billing", "technical", "Account!", "shipping")[(i + k) % 4]  # shipping is rejected


def finished_keys(*paths: Path) -> Counter[str]:
    keys: Counter[str] = Counter()
    for path in paths:
        if path.exists():
            raw = path.read_bytes()
            assert not raw or raw.endswith(b"\n"), f"{path} ends in a torn line"
            keys.update(json.loads(line)["key"] for line in raw.splitlines())
    return keys


def _run(tmp_path: Path, out: Path, resume: bool):
    config = make_generate_config(teacher="scripted", data=str(tmp_path / "prompts.jsonl"), task="classification",
                                  labels="billing,technical,account", output=out, n=2, temperature=0.5,
                                  batch_size=4, resume=resume)
    return run_generate(config, engine=ScriptedTeacher(_reply, by_seed=True))


def test_resume_after_a_cut_at_any_byte_gives_every_sample_exactly_once(tmp_path: Path) -> None:
    write_rows(tmp_path / "prompts.jsonl", ROWS)
    full = _run(tmp_path, tmp_path / "full.jsonl", resume=False)
    expected = finished_keys(full.output, full.rejected_file)
    assert len(expected) == 24 and set(expected.values()) == {1}
    sizes = full.output.stat().st_size, full.rejected_file.stat().st_size
    rng = random.Random(0)
    for trial in range(12):
        out = tmp_path / f"cut{trial}" / "synthetic.jsonl"
        out.parent.mkdir()
        rejected = out.with_name("synthetic.rejected.jsonl")
        shutil.copy(full.output, out)
        shutil.copy(full.rejected_file, rejected)
        shutil.copy(full.recipe_file, out.with_name("synthetic.recipe.json"))
        for path, size in zip((out, rejected), sizes, strict=True):
            os.truncate(path, rng.randrange(size + 1))  # where the kill landed, torn line and all
        resumed = _run(tmp_path, out, resume=True)
        assert finished_keys(out, rejected) == expected, f"trial {trial}"
        assert resumed.resumed + resumed.generated == 24
        assert resumed.counts == full.counts


def test_a_torn_final_line_is_dropped_on_resume(tmp_path: Path) -> None:
    write_rows(tmp_path / "prompts.jsonl", ROWS[:3])
    out = tmp_path / "synthetic.jsonl"
    first = _run(tmp_path, out, resume=False)
    whole = out.read_bytes()
    with out.open("ab") as fh:
        fh.write(b'{"key": "0123", "input_key": "ab')  # a write cut short by kill -9
    result = _run(tmp_path, out, resume=True)
    assert result.torn_bytes == len(b'{"key": "0123", "input_key": "ab') and result.generated == 0
    assert out.read_bytes() == whole and result.counts == first.counts
    assert repair_torn_tail(out) == 0


def test_sigkill_at_random_moments_then_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Kills ``SLMOPS_TEST_KILLS`` (default 1) runs of the real command at a random moment after
    their first durable batch, then resumes to the end. Each start costs seconds (torch), hence one
    kill by default; the byte-level cut test above covers every position a kill can leave."""
    rows = [{"prompt": f"Hello world number {i}, how are you today?"} for i in range(48)]
    data = write_rows(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "synthetic.jsonl"
    rejected = out.with_name("synthetic.rejected.jsonl")
    files = (out, rejected)  # the random tiny model never stops by itself: its answers are rejected as truncated
    cmd = [sys.executable, "-c", "from slmops.cli.distill import app; app()", "generate", "--teacher",
           str(tiny_model_dir), "--data", str(data), "--task", "conversation", "--output", str(out),
           "--max-tokens", "12", "--batch-size", "3", "--threads", "1", "--resume", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(time.time_ns())
    killed_midway = 0
    for _attempt in range(int(os.environ.get("SLMOPS_TEST_KILLS", "1"))):
        before = sum(p.stat().st_size for p in files if p.exists())
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # wait for the first durable batch
            if sum(p.stat().st_size for p in files if p.exists()) > before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_midway += 1
        proc.wait(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode() if proc.stderr else ""
        assert set(finished_keys(*files).values()) <= {1}  # no duplicate, even before the resume
    final = CliRunner().invoke(app, cmd[3:])  # the resume runs in this process: one torch start less
    assert final.exit_code == 0, final.output
    summary = json.loads(final.stdout)
    keys = finished_keys(*files)
    assert len(keys) == 48 and set(keys.values()) == {1}
    indices = [json.loads(x)["index"] for p in files if p.exists() for x in p.read_text().splitlines()]
    assert sorted(indices) == list(range(48))  # every input exactly once
    assert summary["resumed"] + summary["generated"] == 48 and sum(summary["counts"].values()) == 48
    assert killed_midway >= 1 and summary["resumed"] > 0  # the kill really interrupted a run
