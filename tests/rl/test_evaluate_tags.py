"""evaluate(): Pass@1 / Pass@k over tasks, and per tag when the caller tags its tasks (the WebSailor report's
split of held-out questions into answer facts the SFT data held and new ones)."""

import numpy as np
import pyarrow as pa
import pytest

from rl.evaluate import evaluate


class TableGroups:
    """Stands in for RLGroups: task i's k rollouts are correct as `outcomes[i]` says."""

    def __init__(self, outcomes):
        self.outcomes = outcomes

    def generate(self, tasks, n, sampling, progress=None):
        rows = [(t["group"], s) for t in tasks for s in range(n)]
        return pa.RecordBatch.from_pydict({
            "group": pa.array([g for g, _ in rows], pa.int32()),
            "num_tool_calls": pa.array([2] * len(rows), pa.int32()),
            "num_turns": pa.array([3] * len(rows), pa.int32()),
            "finish": pa.array(["answer"] * len(rows)),
        })

    def score(self, batch):
        group = batch.column("group").to_numpy()
        sample = np.arange(len(group)) % 2
        ok = np.array([self.outcomes[g][s] for g, s in zip(group, sample)], np.float32)
        return batch.append_column("reward_answer", pa.array(ok)).append_column("reward", pa.array(0.9 * ok + 0.1))


def test_pass_metrics_overall_and_per_tag():
    outcomes = [(1, 1), (1, 0), (0, 0), (0, 1), (0, 0)]
    tags = ["seen", "seen", "new", "new", "new"]
    tasks = [{"uid": f"q{i}"} for i in range(5)]
    out = evaluate(TableGroups(outcomes), tasks, 2, {}, "answer", tags=tags, progress=None)
    assert out["pass@1"] == pytest.approx((1 + 0.5 + 0 + 0.5 + 0) / 5)
    assert out["pass@k"] == pytest.approx(3 / 5)
    assert set(out["by_tag"]) == {"seen", "new"}
    assert out["by_tag"]["seen"]["pass@1"] == pytest.approx(0.75) and out["by_tag"]["seen"]["num_tasks"] == 2
    assert out["by_tag"]["new"]["pass@1"] == pytest.approx(1 / 6) and out["by_tag"]["new"]["num_tasks"] == 3
    assert out["by_tag"]["new"]["pass@k"] == pytest.approx(1 / 3)
    assert "by_tag" not in evaluate(TableGroups(outcomes), tasks, 2, {}, "answer", progress=None)


def test_tags_must_match_the_tasks():
    with pytest.raises(ValueError, match="one tag per task"):
        evaluate(TableGroups([(1, 1)]), [{"uid": "a"}], 2, {}, "answer", tags=["x", "y"])
