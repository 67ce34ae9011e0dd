"""The simulation backends through the real controller: `rl.controller.train` with simulated engines (several in
one actor process) and the simulated trainer, in async mode with the world's tools through the EnvGroup, for a
few steps; every admitted group is accounted for, every group has its n rows, staleness stays bounded, the
engines' weights follow the trainer. And, in-process: the simulated trainer's model, the keep sampler's update
(the rolled batch itself, not a copy) and the shard-local index of DUPO sources."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from launch.common import ROOT
from rl.config import AlgoConfig, load_config
from rl.controller import collect_batch, train
from rl.groups import RLGroups, local_index
from rl.metrics import StageTimer
from rl.trainer.sim import SimTrainer, TrainerModel, sync_seconds, train_step_seconds
from rollout.trajectory import TrajectoryRecord, build_batch, with_columns


def test_sim_trainer_sleeps_its_modelled_step():
    m = TrainerModel(params=1e9, gpus=2, peak_flops=1e12, mfu=0.5)
    assert train_step_seconds(m, 1000, 2, False, False) == pytest.approx(6 * 1e9 * 1000 / 1e12)
    assert train_step_seconds(m, 1000, 2, True, True) == pytest.approx(10 * 1e9 * 1000 / 1e12)
    assert sync_seconds(m) == pytest.approx(2e9 / m.sync_bytes_per_s)
    rows = [TrajectoryRecord(uid="u", group=0, sample=s, prompt_ids=[1] * 30, response_ids=[2] * 20,
                             loss_mask=[1] * 20, rollout_logprobs=[-1.0] * 20) for s in range(2)]
    trainer = SimTrainer("unused", rank=0, world_size=2, time_scale=0.01,
                         sim={"params": 1e9, "gpus": 2, "peak_flops": 1e10, "mfu": 1.0}, fsdp_only_setting=3)
    t0 = time.perf_counter()
    out = trainer.train_step(build_batch(rows), on_policy=True)
    modelled = 6 * 1e9 * 100 / 1e10  # one GPU per rank
    assert out["sim/train_modelled_s"] == pytest.approx(modelled) and out["train/tokens"] == 200
    assert time.perf_counter() - t0 >= 0.01 * modelled * 0.9
    with pytest.raises(ValueError, match="trainer.sim key"):
        SimTrainer("unused", rank=0, world_size=1, sim={"gpu": 8})


@pytest.fixture
def fresh_ray():
    yield
    ray.shutdown()


def _batch(groups: int, n: int):
    rows = [TrajectoryRecord(uid=f"u{g}", group=g, sample=s, prompt_ids=[1, 2], response_ids=[3, 4, 5],
                             loss_mask=[1, 1, 1], rollout_logprobs=[-1.0] * 3) for g in range(groups) for s in range(n)]
    b = build_batch(rows)
    return with_columns(b, {"reward": np.arange(b.num_rows, dtype=np.float32) % 2})


def test_keep_sampler_hands_the_rolled_batch_on_without_a_copy():
    rolled, update, _ = collect_batch(lambda: _batch(3, 2), lambda b: b, 3, AlgoConfig(), StageTimer(),
                                      np.random.default_rng(0))
    assert update.num_rows == rolled.num_rows == 6 and update.column("dup_of").to_pylist() == [-1] * 6
    address = lambda b: b.column("response_ids").values.buffers()[1].address  # noqa: E731
    assert address(update) == address(rolled)  # the same token buffers, not a copy of them


def test_shard_local_index_of_dupo_sources():
    rows = np.array([0, 2, 5, 7])
    assert local_index(rows, np.array([-1, 5, 3, 7, 0, 9])).tolist() == [-1, 2, -1, 3, 0, -1]
    assert local_index(np.array([], np.int64), np.array([], np.int64)).tolist() == []


def test_controller_with_simulated_engines_and_trainer(tmp_path, fresh_ray):
    steps, batch, n = 4, 4, 4
    cfg = load_config(ROOT / "launch/configs/sim_cluster.yaml", [
        f"run.steps={steps}", f"data.batch_size={batch}", f"rollout.n={n}", "rollout.num_engines=4",
        "rollout.max_inflight_groups=4", "rollout.sim={time_scale: 0.02, engines_per_actor: 2, tool_calls: 2, "
        "tool_calls_sigma: 0.5, tokens_per_turn: 32}", "trainer.sim={gpus: 0.1}", "env.num_servers=1",
        "data.num_tasks=16", "run.stage_timeout_s=120"])
    groups = RLGroups(cfg)
    try:
        summary = train(cfg, tmp_path, groups=groups)
        assert len(groups.rollout.hosts) == 2  # 4 simulated engines, 2 per actor process
        engines = ray.get([a.__ray_call__.remote(lambda w: w.engine.stats()) for a in groups.rollout.actors])
    finally:
        groups.shutdown()
    assert all(e["requests"] > 0 and 0 < e["busy_fraction"] <= 1 and e["max_running"] >= 1 for e in engines)
    hist = summary["history"]
    assert [h["policy_version"] for h in hist] == list(range(1, steps + 1)) and summary["policy_version"] == steps
    for h in hist:
        assert h["num_trajectories"] == batch * n  # every group with its n rows
        assert h["async/lost_groups"] == 0  # every admitted group: handed out, dropped as stale, or running
        assert h["async/staleness_max"] <= 1 and h["finish/answer"] == 1.0
        assert h["sim/train_modelled_s"] > 0 and h["num_tool_calls/mean"] > 0
    assert hist[-1]["async/admitted_groups"] >= steps * batch
    ages = []
    for step, f in enumerate(sorted((tmp_path / "trajectories").glob("step_*.parquet"))):
        t = pq.read_table(f)
        assert sorted(set(t.column("group").to_pylist())) == list(range(batch))
        versions = t.column("policy_version").to_numpy()
        assert np.all(versions <= step) and np.all(step - versions <= 1)
        ages += list(step - versions)
        calls = t.column("num_tool_calls").to_numpy()
        assert calls.min() >= 0 and pa.compute.all(pa.compute.greater(t.column("num_turns"), 0)).as_py()
    assert max(ages) == 1  # generation overlapped training
