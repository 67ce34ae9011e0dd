"""Atomic checkpoints (rl/checkpoint.py): a process killed with SIGKILL while writing a checkpoint,
or at any moment of a save loop, leaves the previous checkpoint loadable; what the crash left is
ignored and then cleaned; a folder whose files do not match its marker is not complete; replacing
a step never loses it; only the last k are kept."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rl.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[2]

# The child writes checkpoints the way the controller does (begin, files, commit). "slow": step 1,
# then step 2 with a 4 MB file written in small chunks (it says "writing" once under way). "loop":
# step after step, as fast as it can. Each step's payload is a tensor whose values are the step.
CHILD = r"""
import sys, time, torch
from rl.checkpoint import CheckpointManager

run_dir, mode = sys.argv[1], sys.argv[2]
ckpt = CheckpointManager(run_dir, keep_last=2)

def save(step, chunks=1, sleep=0.0):
    folder = ckpt.begin(step)
    torch.save({"w": torch.full((1000,), float(step))}, folder / "trainer.pt")
    with open(folder / "optimizer.bin", "wb") as f:
        for i in range(chunks):
            f.write(bytes([step % 256]) * (1 << 16))
            f.flush()
            if i == 1:
                print("writing", flush=True)
            time.sleep(sleep)
    ckpt.commit(folder, step, {"step": step, "policy_version": step})

if mode == "slow":
    save(1)
    save(2, chunks=64, sleep=0.05)
    print("finished", flush=True)
else:
    step = 1
    while True:
        save(step, chunks=8)
        print("saved", step, flush=True)
        step += 1
"""


def start(run_dir: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def assert_loads(folder: Path, step: int) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {"step": step, "policy_version": step}
    state = torch.load(folder / "trainer.pt", weights_only=True)
    assert torch.equal(state["w"], torch.full((1000,), float(step)))
    data = (folder / "optimizer.bin").read_bytes()
    assert data == bytes([step % 256]) * len(data) and len(data) % (1 << 16) == 0


def test_sigkill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    child = start(tmp_path, "slow")
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.strip() == "writing":
            break
    assert lines[-1:] == ["writing\n"], "".join(lines)[-3000:]
    child.send_signal(signal.SIGKILL)  # mid-write of step 2
    child.wait(timeout=30)

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    assert (tmp_path / "checkpoints" / ".tmp-step-2").is_dir()  # the half-written step is there ...
    step, folder = ckpt.latest()  # ... and ignored
    assert (step, folder.name) == (1, "step-1")
    assert_loads(folder, 1)

    # a folder with the final name but no marker is ignored too; both are cleaned
    (tmp_path / "checkpoints" / "step-3").mkdir()
    assert ckpt.latest()[0] == 1
    assert sorted(p.name for p in ckpt.clean()) == [".tmp-step-2", "step-3"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
    for s in (2, 3, 4):  # the run goes on; only the last two stay
        folder = ckpt.begin(s)
        torch.save({"w": torch.full((1000,), float(s))}, folder / "trainer.pt")
        (folder / "optimizer.bin").write_bytes(bytes([s]) * (1 << 16))
        ckpt.commit(folder, s, {"step": s, "policy_version": s})
    assert [s for s, _ in ckpt.complete()] == [3, 4]
    assert_loads(ckpt.latest()[1], 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_moment_of_a_save_loop(tmp_path, seed):
    """Killed anywhere (writing files, fsync, marker, rename, pruning): the newest complete
    checkpoint loads, holds what its step wrote, and is no older than the last one reported saved."""
    child = start(tmp_path, "loop")
    saved = 0
    rng = random.Random(seed)
    target = rng.randint(3, 12)
    for line in child.stdout:
        if line.startswith("saved"):
            saved = int(line.split()[1])
            if saved >= target:
                break
    assert saved >= target, f"the child stopped after step {saved}"
    time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next save
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    ckpt = CheckpointManager(tmp_path, keep_last=2)
    step, folder = ckpt.latest()
    assert step >= saved  # the child may have saved more while its lines were on the way
    assert_loads(folder, step)
    ckpt.clean()
    assert [s for s, _ in ckpt.complete()][-1] == step
    assert all(p.name.startswith("step-") for p in (tmp_path / "checkpoints").iterdir())


def test_a_folder_whose_files_do_not_match_its_marker_is_not_complete(tmp_path):
    ckpt = CheckpointManager(tmp_path, keep_last=3)
    for s in (1, 2):
        folder = ckpt.begin(s)
        (folder / "trainer.pt").write_bytes(b"x" * 100)
        ckpt.commit(folder, s, {"step": s})
    marker = json.loads((tmp_path / "checkpoints/step-2/COMPLETE").read_text())
    assert marker["files"] == {"meta.json": len(json.dumps({"step": 2}, indent=1)), "trainer.pt": 100}
    assert marker["sha256"]["trainer.pt"] == hashlib.sha256(b"x" * 100).hexdigest()
    with open(tmp_path / "checkpoints/step-2/trainer.pt", "r+b") as f:
        f.truncate(50)  # e.g. a partial copy of the run folder
    assert ckpt.latest()[0] == 1
    (tmp_path / "checkpoints/step-1/trainer.pt").unlink()
    assert ckpt.latest() is None


def test_replacing_a_step_never_loses_it(tmp_path):
    ckpt = CheckpointManager(tmp_path, keep_last=1)
    folder = ckpt.begin(5)
    (folder / "trainer.pt").write_bytes(b"first")
    ckpt.commit(folder, 5, {"step": 5})
    folder = ckpt.begin(5)
    (folder / "trainer.pt").write_bytes(b"second")
    ckpt.commit(folder, 5, {"step": 5})
    assert (ckpt.latest()[1] / "trainer.pt").read_bytes() == b"second"

    # a crash between the two renames of a replace: the old folder was moved aside, the new one
    # is still temporary. The step is still found, and `clean` puts the old folder back.
    root = tmp_path / "checkpoints"
    os.rename(root / "step-5", root / ".old-step-5")
    (root / ".tmp-step-5").mkdir()
    step, folder = ckpt.latest()
    assert (step, folder.name) == (5, ".old-step-5")
    ckpt.clean()
    assert sorted(p.name for p in root.iterdir()) == ["step-5"]
    assert (ckpt.latest()[1] / "trainer.pt").read_bytes() == b"second"
