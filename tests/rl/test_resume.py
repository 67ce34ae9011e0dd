"""The spine from the command line (launch/configs/spine.yaml: run folder, metrics, report) and exact resume:
4 steps straight, against 2 or more steps, SIGKILL, and a resume to step 4: the final
parameters are bitwise equal and so are the metrics (HF engine: deterministic on CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from launch.common import ROOT
from rl.checkpoint import CheckpointManager, read_sharded

ARGS = ["rollout.backend=hf", "run.steps=4", "run.save_every=1", "run.keep_last=2", "data.batch_size=4",
        "rollout.n=4", "trainer.num_ranks=2", "run.progress=false", "algo.preset=grpo"]
TIMING = ("time", "time/", "throughput/")


def launch(run_dir, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "launch/websailor.py"), "--config", str(ROOT / "launch/configs/spine.yaml"), f"run.dir={run_dir}", *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p = launch(straight)
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    # the plain RL loop from the command line: the run folder said at start and end, the report
    assert out.count(f"run folder: {straight}") == 2
    report = (straight / "report.md").read_text()
    assert "reward mean" in report and "steps: 4" in report and rows(straight)[-1]["policy_version"] == 4

    p = launch(killed)
    deadline = time.time() + 600
    while time.time() < deadline:
        latest = CheckpointManager(killed).latest()
        if latest and latest[0] >= 2:
            break
        assert p.poll() is None, p.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)  # the launcher and everything it started
    p.wait(timeout=60)
    done_before = CheckpointManager(killed).latest()[0]
    assert 2 <= done_before < 4

    p = launch(killed, "run.resume=true")
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
    assert f"resumed from {killed / 'checkpoints'}" in out

    a, b = rows(straight), rows(killed)
    assert [r["step"] for r in b] == list(range(1, 5))
    assert [comparable(r) for r in a] == [comparable(r) for r in b]
    sa = read_sharded(straight / "checkpoints/step-4/trainer")  # model and optimizer, every rank's shards
    sb = read_sharded(killed / "checkpoints/step-4/trainer")
    assert sa.keys() == sb.keys() and "optimizer.state.model.embed_tokens.weight.exp_avg" in sa
    for name, t in sa.items():
        assert torch.equal(t, sb[name]) if isinstance(t, torch.Tensor) else t == sb[name], name
    assert torch.load(killed / "checkpoints/step-4/trainer-state.pt", weights_only=True)["step"] == 4

    # the full model only on request: the exported folder holds step 4's weights and loads as a model
    out = subprocess.run([sys.executable, str(ROOT / "launch/export.py"), str(killed), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and f"step 4 of {killed}" in out.stdout, out.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "x/policy")
    for name, t in model.state_dict().items():
        assert torch.equal(t, sa[f"model.{name}"]), name
