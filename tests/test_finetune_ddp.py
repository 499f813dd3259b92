"""The same `slmops finetune` command under `torchrun --nproc-per-node 2` (gloo on CPU): the data
is sharded by rank, gradients are summed, rank 0 alone writes and registers, and the run
follows the single-process trajectory of the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slmops.train import run
from tests import test_finetune_train as ft
from tests.test_finetune_train import TEMPLATE, config, losses

base_dir, base, data = ft.base_dir, ft.base, ft.data  # the tiny base model and its memorisation data
SETTINGS = dict(max_steps=6, eval_split=0.34, eval_interval=2, save_interval=3, packing=False, lr=1e-2)


@pytest.mark.parametrize("ddp", ["", "1"], ids=["flat-all-reduce", "DistributedDataParallel"])
def test_two_processes_train_like_one_with_the_same_global_batch(store, base, data, home, ddp):
    """The CPU default sums gradients with one flat all-reduce; SLMOPS_DDP=1 takes the GPU path's
    DistributedDataParallel (on gloo here): both follow the single-process trajectory."""
    args = ["--model", base, "--data", str(data), "--output", "ddp", "--text-template", TEMPLATE, "--batch-size", "2",
            "--max-steps", "6", "--eval-split", "0.34", "--eval-interval", "2", "--save-interval", "3",
            "--no-packing", "--lr", "0.01", "--lora-alpha", "64", "--json"]  # fmt: skip
    env = {**os.environ, "SLMOPS_HOME": str(home), "OMP_NUM_THREADS": "1", "SLMOPS_DDP": ddp}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "slmops"]
    proc = subprocess.run([*cmd, "finetune", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # rank 0 alone prints
    assert out["processes"] == 2 and out["record"]["ref"] == "ddp:1" and out["steps"] == 6
    assert [r.ref for r in store.versions("ddp")] == ["ddp:1"]  # registered once
    run_dir = home / "runs" / "finetune-ddp"
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3, 4, 5, 6]  # one writer
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000003", "step-000006"]

    single = run(config(data, output="one", batch_size=4, **SETTINGS), store=store)
    assert losses(run_dir) == pytest.approx(losses(single.run_dir), rel=1e-4)
    assert losses(run_dir, "eval_loss") == pytest.approx(losses(single.run_dir, "eval_loss"), rel=1e-4)
    assert out["tokens"] == single.tokens and out["eval_loss"] == pytest.approx(single.eval_loss, rel=1e-4)


def test_a_single_process_and_a_cpu_group_keep_the_flat_path(monkeypatch):
    from slmops.train.batches import collate
    from slmops.train.distributed import Dist, _ddp_wanted, distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed() as dist:
        assert (dist.world, dist.device, dist.ddp) == (1, "cpu", False)
        assert dist.wrap(object(), lambda m, b: None) is None  # nothing to wrap in one process
    assert Dist(world=2, ddp=False).wrap(object(), lambda m, b: None) is None
    monkeypatch.delenv("SLMOPS_DDP", raising=False)
    assert _ddp_wanted(True) and not _ddp_wanted(False)  # DDP on GPU, flat all-reduce on CPU
    monkeypatch.setenv("SLMOPS_DDP", "0")
    assert not _ddp_wanted(True)
    from slmops.data.examples import Example

    batch = collate([(Example([1, 2, 3], [1, 2, 3], "x"),)], 0)
    assert batch.to("cpu") is batch
