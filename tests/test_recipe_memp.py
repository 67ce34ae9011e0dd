"""The Memp recipe from the command line, `--smoke`, offline, through real Ray actor groups (HF engine, EnvServers,
rewards, FSDP2 trainer, the shared memory actor): memory built from the expert reaches the workers' prompts, the
RL step updates it, and the checkpoint holds it (tests/rl/test_controller_memory.py: resume restores it)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from launch.common import ROOT
from test_recipes import metrics_rows, table

SMALL = ["run.progress=false", "rollout.backend=hf", "eval.num_tasks=2", "data.num_tasks=4", "data.batch_size=2",
         "rollout.n=2", "agent.max_tokens_per_turn=256", "agent.max_turns=4", "run.save_every=1"]  # the expert needs 3


def memp(run_dir, cwd, *overrides) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "launch/memp.py"), "--smoke", f"run.dir={run_dir}", *SMALL,
                           *overrides], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.mark.slow
def test_memp_smoke(tmp_path):
    run_dir = tmp_path / "memp"
    memp(run_dir, tmp_path, "pipeline.stages=[expert,eval_expertmem,rl]", "run.steps=1")
    built = json.loads((run_dir / "memory_expert.json").read_text())
    assert built["records"] and {r["source"] for r in built["records"]} == {"expert"}
    assert all(r["script"] and r["trajectory"] for r in built["records"])  # proceduralization: both

    # the memory reached the workers' prompts: RL rows whose task retrieved memory have prompts longer than any of
    # the expert's (no memory)
    expert = table(run_dir / "trajectories" / "expert.parquet")
    step = table(run_dir / "trajectories" / "step_000001.parquet")
    assert max(len(p) for p in step["prompt_ids"]) > max(len(p) for p in expert["prompt_ids"]) + 50
    (row,) = metrics_rows(run_dir / "metrics.jsonl")
    assert row["memory/used"] > 0 and row["memory/size"] == len(json.loads((run_dir / "memory.json").read_text())["records"])

    saved = json.loads((run_dir / "checkpoints" / "step-1" / "memory.json").read_text())
    assert saved == json.loads((run_dir / "memory.json").read_text())  # the store as it was at the checkpoint
    assert np.isfinite(row["memory/size"])
