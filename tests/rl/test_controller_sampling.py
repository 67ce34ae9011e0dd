"""The controller's sampling stage (rollout -> reward -> shaping -> advantages -> group sampler) on
scripted groups: DAPO regenerates until B valid groups or the bound; DUPO copies rows bit-identically;
GRPO keeps everything; the overlong punishment lands in the reward."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401
import pytest

from rl.config import load_config
from rl.controller import collect_batch, shape_rewards
from rl.data import TaskSampler
from rl.metrics import StageTimer
from rollout.engines import Generation
from rollout.trajectory import build_batch, record_from_generation, scalar_numpy, with_columns



def _fns(groups, sampler):
    """collect_batch's rollout and score functions over scripted groups and a task sampler."""
    return (lambda: groups.generate(sampler.next_batch())), groups.score, sampler.batch_size

class ScriptedGroups:
    """Stands in for the Ray groups: task i's samples get rewards REWARDS[i % len(REWARDS)]."""

    def __init__(self, rewards_by_task: dict[str, list[float]], n: int = 4, length: int = 5):
        self.rewards, self.n, self.length, self.calls = rewards_by_task, n, length, 0

    def generate(self, tasks, n=None):
        self.calls += 1
        recs = []
        for t in tasks:
            for s in range(self.n):
                gen = Generation([t["group"] * 10 + s] * self.length, [-1.0 - s] * self.length, "length")
                recs.append(record_from_generation(t["uid"], t["group"], s, t["prompt_ids"], gen))
        return build_batch(recs)

    def score(self, batch):
        r = [self.rewards[u][s] for u, s in zip(batch.column("uid").to_pylist(), batch.column("sample").to_pylist())]
        return with_columns(batch, {"reward": np.array(r, np.float32)})


def tasks(k):
    return [{"uid": f"t{i}", "prompt_ids": [1, 2, i]} for i in range(k)]


FLAT, MIXED = [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]


def algo(*overrides):
    return load_config(None, list(overrides)).algo


def test_dapo_regenerates_until_batch_is_full():
    # tasks alternate flat / mixed: each round of 4 tasks yields 2 valid groups; B = 4 needs 2 rounds
    rewards = {f"t{i}": (MIXED if i % 2 else FLAT) for i in range(16)}
    g = ScriptedGroups(rewards)
    rolled, update, m = collect_batch(*_fns(g, TaskSampler(tasks(16), 4)), algo("algo.preset=dapo"), StageTimer(),
                                      np.random.default_rng(0))
    assert g.calls == 2 and m["sampler/gen_rounds"] == 2 and m["sampler/dapo_bound_hit"] == 0
    assert rolled.num_rows == 32 and update.num_rows == 16
    groups = scalar_numpy(update, "group")
    assert len(np.unique(groups)) == 4
    for gid in np.unique(groups):  # every group in the update has 0 < acc < 1
        r = scalar_numpy(update, "reward")[groups == gid]
        assert 0 < r.mean() < 1


def test_dapo_reports_the_bound():
    g = ScriptedGroups({f"t{i}": (MIXED if i == 0 else FLAT) for i in range(16)})
    _, update, m = collect_batch(*_fns(g, TaskSampler(tasks(16), 4)), algo("algo.preset=dapo", "algo.max_gen_rounds=3"),
                                 StageTimer(), np.random.default_rng(0))
    assert g.calls == 3 and m["sampler/dapo_bound_hit"] == 1 and m["sampler/valid_groups"] <= 1


def test_dupo_fills_with_bit_identical_copies_without_new_rollouts():
    g = ScriptedGroups({f"t{i}": (MIXED if i < 2 else FLAT) for i in range(8)})
    rolled, update, m = collect_batch(*_fns(g, TaskSampler(tasks(8), 8, seed=1)), algo("algo.preset=dupo"), StageTimer(),
                                      np.random.default_rng(0))
    assert g.calls == 1
    assert update.num_rows == 8 * 4 and len(np.unique(scalar_numpy(update, "group"))) == 8
    dup_of = scalar_numpy(update, "dup_of")
    assert m["sampler/duplication_ratio"] == pytest.approx(6 / 8) == pytest.approx((dup_of >= 0).mean())
    cols = [c for c in update.schema.names if c not in ("group", "dup_of")]
    for i in np.nonzero(dup_of >= 0)[0]:
        src = dup_of[i]
        assert dup_of[src] == -1
        for c in cols:  # ids, rewards, advantages, rollout logprobs: exact copies
            assert update.column(c)[i].as_py() == update.column(c)[src].as_py(), c
    adv = scalar_numpy(update, "advantage")
    assert np.allclose(np.abs(adv), 0.866, atol=1e-3)  # [1,0,0,1] -> +-0.866 (SEEDS 14 item 1)


def test_dupo_skips_a_step_with_no_signal():
    g = ScriptedGroups({f"t{i}": FLAT for i in range(4)})
    _, update, m = collect_batch(*_fns(g, TaskSampler(tasks(4), 4)), algo("algo.preset=dupo"), StageTimer(),
                                 np.random.default_rng(0))
    assert update is None and m["sampler/zero_variance_group_frac"] == 1.0


class PartsGroups(ScriptedGroups):
    """WebSailor-style scores: reward = 0.1 format + 0.9 answer, with both parts as columns."""

    def __init__(self, parts_by_task: dict[str, list[tuple[float, float]]], n: int = 4):
        super().__init__({}, n=n)
        self.parts = parts_by_task

    def score(self, batch):
        fa = [self.parts[u][s] for u, s in zip(batch.column("uid").to_pylist(), batch.column("sample").to_pylist())]
        fmt, ans = (np.array(x, np.float32) for x in zip(*fa))
        return with_columns(batch, {"reward": 0.1 * fmt + 0.9 * ans, "reward_format": fmt, "reward_answer": ans})


def test_filter_metric_answer_drops_groups_that_differ_only_in_format():
    # t0: all wrong, format varies; t1: one right; t2, t3: all wrong, all well-formed
    parts = {"t0": [(1, 0), (0, 0), (1, 0), (0, 0)], "t1": [(1, 1), (1, 0), (0, 0), (1, 0)],
             "t2": [(1, 0)] * 4, "t3": [(1, 0)] * 4}
    by_reward = collect_batch(*_fns(PartsGroups(parts), TaskSampler(tasks(4), 4)), algo("algo.preset=dupo"),
                              StageTimer(), np.random.default_rng(0))
    by_answer = collect_batch(*_fns(PartsGroups(parts), TaskSampler(tasks(4), 4)),
                              algo("algo.preset=dupo", "algo.filter_metric=answer"), StageTimer(),
                              np.random.default_rng(0))
    sources = lambda update: set(update.column("uid").to_pylist())  # noqa: E731
    assert sources(by_reward[1]) == {"t0", "t1"} and by_reward[2]["sampler/zero_variance_group_frac"] == 0.5
    assert sources(by_answer[1]) == {"t1"} and by_answer[2]["sampler/zero_variance_group_frac"] == 0.75
    assert by_answer[1].num_rows == 16  # refilled to B = 4 groups with copies of t1
    # the advantages are still those of the total reward
    t1 = by_answer[1].filter(pa.compute.equal(by_answer[1].column("dup_of"), -1))
    r = scalar_numpy(t1, "reward")
    assert np.allclose(scalar_numpy(t1, "advantage"), (r - r.mean()) / (r.std(ddof=1) + 1e-6), atol=1e-5)
    # DAPO filters on the same metric; a metric that is not a reward part is named with what there is
    _, update, _ = collect_batch(*_fns(PartsGroups(parts), TaskSampler(tasks(4), 4)),
                                 algo("algo.preset=dapo", "algo.filter_metric=answer", "algo.max_gen_rounds=1"),
                                 StageTimer(), np.random.default_rng(0))
    assert sources(update) == {"t1"}
    with pytest.raises(ValueError, match=r"algo.filter_metric='judge'.*\['format', 'answer'\]"):
        collect_batch(*_fns(PartsGroups(parts), TaskSampler(tasks(4), 4)),
                      algo("algo.preset=dupo", "algo.filter_metric=judge"), StageTimer(), np.random.default_rng(0))


def test_filter_metric_is_checked_in_the_config():
    from rl.config import ConfigError

    with pytest.raises(ConfigError, match="algo.filter_metric"):
        algo("algo.filter_metric=not a part")


def test_grpo_keeps_everything():
    g = ScriptedGroups({f"t{i}": (MIXED if i % 2 else FLAT) for i in range(4)})
    rolled, update, m = collect_batch(*_fns(g, TaskSampler(tasks(4), 4)), algo("algo.preset=grpo"), StageTimer(),
                                      np.random.default_rng(0))
    assert update.num_rows == rolled.num_rows == 16 and m["sampler/zero_variance_group_frac"] == 0.5


def test_soft_overlong_punishment_in_reward():
    lengths = [16384, 18432, 20481]
    recs = [record_from_generation("u", 0, i, [1], Generation([3] * n, [0.0] * n, "length"))
            for i, n in enumerate(lengths)]
    b = with_columns(build_batch(recs), {"reward": np.ones(3, np.float32)})
    out = shape_rewards(b, algo("algo.preset=dapo"))
    assert scalar_numpy(out, "reward_overlong").tolist() == pytest.approx([0.0, -0.5, -1.0])
    assert scalar_numpy(out, "reward").tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert shape_rewards(b, algo("algo.preset=dupo")) is b  # DUPO: no length term


def test_the_prefilter_fills_the_engines_and_drops_what_every_rollout_solves(tmp_path):
    """DUPO's pre-filter: one rollout call per chunk of tasks as large as the engines' in-flight windows x 4 (a
    quarter of the tasks per call rolled 4 tasks out one at a time); every task still counted; the all-solved
    dropped."""
    import json
    from types import SimpleNamespace

    from rl.controller import prefilter_tasks

    class Groups(ScriptedGroups):
        def __init__(self, rewards, engines, inflight):
            super().__init__(rewards, n=2)
            self.rollout = SimpleNamespace(num=engines)
            self.cfg = SimpleNamespace(rollout=SimpleNamespace(max_inflight_groups=inflight))
            self.sizes = []

        def generate(self, tasks, n=None, progress=None):
            self.sizes.append(len(tasks))
            return super().generate(tasks, n)

    solved, mixed = [1.0, 1.0], [1.0, 0.0]
    g = Groups({f"t{i}": solved if i % 3 == 0 else mixed for i in range(10)}, engines=1, inflight=2)
    kept = prefilter_tasks(g, tasks(10), 2, 1.0, tmp_path)
    assert g.sizes == [8, 2]  # 1 engine x 2 in flight x 4
    assert [t["uid"] for t in kept] == [f"t{i}" for i in range(10) if i % 3]
    manifest = json.loads((tmp_path / "dupo_prefilter.json").read_text())
    assert manifest["pass_counts"] == {f"t{i}": 2 if i % 3 == 0 else 1 for i in range(10)}
    g = Groups({f"t{i}": mixed for i in range(4)}, engines=1, inflight=16)
    prefilter_tasks(g, tasks(4), 2, 1.0, tmp_path)
    assert g.sizes == [4]  # the smoke's 4 tasks in one call
