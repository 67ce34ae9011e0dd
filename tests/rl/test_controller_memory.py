"""A Memp run's memory goes into every checkpoint and comes back on resume (rl/controller.py `save` / `resume`),
with the run's own MemoryActor class in this process where a run has it in a Ray actor, and a trainer that only
writes and reads its file. tests/test_recipe_memp.py shows memory.json in a real run's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rl.checkpoint import CheckpointManager
from rl.controller import resume, save
from rl.data import TaskSampler
from rl.memory_group import MemoryActor

SETTINGS = {"update": "validation", "top_k": 1}
WORKFLOW = "1. search the question\n2. visit the top page\n3. answer"


class Trainer:
    def __init__(self):
        self.calls: list[str] = []

    def call(self, method: str, folder: str) -> None:
        self.calls.append(method)
        if method == "save_checkpoint":
            (Path(folder) / "trainer.pt").write_bytes(b"weights")


class Groups:
    def __init__(self, memory: MemoryActor):
        self.trainer, self.memory = Trainer(), memory

    def sync_weights(self, version: int) -> int:
        return version


def outcome(key: str, query: str, success: bool) -> dict:
    return {"key": key, "query": query, "text": WORKFLOW, "reward": float(success), "success": success}


def test_memory_is_saved_with_each_checkpoint_and_restored_on_resume(tmp_path, capsys):
    tasks = [{"uid": f"q{i}", "question": f"question {i}"} for i in range(4)]
    live = MemoryActor(SETTINGS)
    live.add([outcome("e0", "who founded the harbour", True)], "expert")
    live.retrieve("who founded the harbour", key="q0")
    live.update([outcome("q0", "who founded the harbour", True), outcome("q1", "when was the bridge built", True)])
    groups, sampler, rng = Groups(live), TaskSampler(tasks, 2, seed=0), np.random.default_rng(0)
    sampler.next_batch()
    ckpt = CheckpointManager(tmp_path)
    save(ckpt, 1, 1, groups, sampler, rng)
    step, folder = ckpt.latest()
    saved = json.loads((folder / "memory.json").read_text())
    assert step == 1 and saved == live.store.state_dict() and len(saved["records"]) == 3  # expert + 2 online

    fresh = Groups(MemoryActor(SETTINGS))
    assert resume(folder, fresh, TaskSampler(tasks, 2, seed=0), np.random.default_rng(1), tmp_path) == (1, 1)
    assert fresh.trainer.calls == ["load_checkpoint"]
    assert fresh.memory.store.state_dict() == saved  # the same records, counters and next id
    assert f"memory restored from {folder / 'memory.json'}: 3 records" in capsys.readouterr().out
