"""Evaluation of the policy on held-out tasks: Pass@1 averaged over k runs and Pass@k (SEEDS 3.7: each
benchmark run k times, Pass@1 averaged), with 95% confidence intervals over tasks.

Owns: `evaluate(groups, tasks, k, ...)`, the interval arithmetic, and the per-task results a report
prints. It uses the run's own RolloutGroup and RewardGroup (same agent loop, tools and rewards as
training), so "success" means the reward part named `correct_part` reached `threshold`.

Never: train, or change the engines' weights.
"""

from __future__ import annotations

import math

import numpy as np

from rollout.trajectory import reward_part_column, scalar_numpy


def bootstrap_ci(per_task: np.ndarray, seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean over tasks."""
    if len(per_task) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = per_task[rng.integers(0, len(per_task), (rounds, len(per_task)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def pass_metrics(correct: np.ndarray, group: np.ndarray) -> dict:
    """correct[i] in {0, 1} for row i of task group[i] -> Pass@1 (mean of per-task means), Pass@k."""
    tasks = np.unique(group)
    per_task = np.array([correct[group == g].mean() for g in tasks])
    any_ok = np.array([correct[group == g].max() for g in tasks], dtype=np.float64)
    return {"pass@1": float(per_task.mean()), "pass@1_ci": bootstrap_ci(per_task),
            "pass@k": float(any_ok.mean()), "pass@k_ci": bootstrap_ci(any_ok), "num_tasks": int(len(tasks))}


def evaluate(groups, tasks: list[dict], k: int, sampling: dict, correct_part: str, threshold: float = 1.0,
             progress: str | None = "eval", tags: list[str] | None = None) -> dict:
    """Roll every task out k times with `sampling`, score, and summarise. `groups` is an RLGroups.
    `tags` (one per task) adds "by_tag": the Pass metrics of each tag's tasks alone."""
    if tags is not None and len(tags) != len(tasks):
        raise ValueError(f"evaluation: {len(tags)} tags for {len(tasks)} tasks; need one tag per task")
    batch = groups.score(groups.generate([dict(t, group=i) for i, t in enumerate(tasks)], n=k, sampling=sampling,
                                         progress=progress))
    column = (correct_part if correct_part in batch.schema.names
              else reward_part_column(batch, correct_part, f"evaluation: correct_part={correct_part!r}"))
    correct = (scalar_numpy(batch, column) >= threshold).astype(np.float64)
    group = scalar_numpy(batch, "group")
    out = pass_metrics(correct, group)
    if tags is not None:
        row_tags = np.asarray(tags, dtype=object)[group]
        out["by_tag"] = {t: pass_metrics(correct[row_tags == t], group[row_tags == t]) for t in sorted(set(tags))}
    out |= {"k": k, "mean_tool_calls": float(scalar_numpy(batch, "num_tool_calls").mean()),
            "mean_turns": float(scalar_numpy(batch, "num_turns").mean()),
            # the reward and its parts, averaged over rows (partial progress where Pass@1 is still 0)
            "mean_reward": {c: float(np.nanmean(scalar_numpy(batch, c).astype(np.float64)))
                            for c in batch.schema.names if c == "reward" or c.startswith("reward_")},
            "finish": {f: int(n) for f, n in zip(*np.unique(batch.column("finish").to_numpy(zero_copy_only=False),
                                                               return_counts=True))}}
    return out | {"batch": batch}
