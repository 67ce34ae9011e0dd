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
    """correct[i] in {0, 1} for row i of task group[i] -> Pass@1 (mean of per-task means), Pass@k, and each
    task's Pass@1 by its group index (`per_task`: what `paired_difference` pairs two evaluations on)."""
    tasks = np.unique(group)
    per_task = np.array([correct[group == g].mean() for g in tasks])
    any_ok = np.array([correct[group == g].max() for g in tasks], dtype=np.float64)
    return {"pass@1": float(per_task.mean()), "pass@1_ci": bootstrap_ci(per_task),
            "pass@k": float(any_ok.mean()), "pass@k_ci": bootstrap_ci(any_ok), "num_tasks": int(len(tasks)),
            "per_task": {int(g): float(v) for g, v in zip(tasks, per_task)}}


def paired_difference(before: dict, after: dict, seed: int = 0, rounds: int = 2000) -> dict:
    """Pass@1 after minus before on the tasks both evaluations saw (their `per_task`), with the 95% percentile
    bootstrap interval of the mean difference over tasks: resampling tasks keeps each task's pair together, so
    what the same question contributes to both sides cancels (tighter than two independent intervals)."""
    # task keys as ints: an evaluation read back from JSON (results.json, a resumed pipeline) has them as strings
    b, a = ({int(g): v for g, v in e["per_task"].items()} for e in (before, after))
    common = sorted(set(b) & set(a))
    if not common:
        raise ValueError("paired_difference: the two evaluations share no task")
    diff = np.array([a[g] - b[g] for g in common], dtype=np.float64)
    return {"difference": float(diff.mean()), "ci": bootstrap_ci(diff, seed, rounds), "num_tasks": len(common)}


def window_means(history: list[dict], k: int = 3) -> dict:
    """The reward of the first and last `k` steps (means over their samples) and the difference in standard
    errors. Per-step mean, std and count give each window's sample variance exactly; the standard errors treat
    samples as independent (samples of one question are not, so this is the optimistic reading)."""
    if len(history) < 2 * k:
        raise ValueError(f"window_means: {len(history)} steps, fewer than 2 x {k}")

    def window(rows: list[dict]) -> tuple[float, float, int]:
        n = np.array([r.get("num_trajectories", 1) for r in rows], dtype=np.float64)
        mean, std = (np.array([r[key] for r in rows], dtype=np.float64) for key in ("reward/mean", "reward/std"))
        m = float((n * mean).sum() / n.sum())
        var = float((n * (std ** 2 + (mean - m) ** 2)).sum() / n.sum())
        return m, math.sqrt(var / n.sum()), int(n.sum())

    (m0, se0, n0), (m1, se1, n1) = window(history[:k]), window(history[-k:])
    se = math.hypot(se0, se1)
    return {"first": m0, "first_se": se0, "first_n": n0, "last": m1, "last_se": se1, "last_n": n1,
            "difference": m1 - m0, "difference_se": se,
            "z": (m1 - m0) / se if se > 0 else (0.0 if m1 == m0 else math.copysign(math.inf, m1 - m0))}


def trend_line(history: list[dict], k: int = 3) -> str | None:
    """One report line on whether the reward rose (`window_means`), or None when there are fewer than 2k steps."""
    if len(history) < 2 * k:
        return None
    w = window_means(history, k)
    return (f"- reward, first {k} steps {w['first']:.3f} (SE {w['first_se']:.3f}, {w['first_n']} samples); last {k} "
            f"steps {w['last']:.3f} (SE {w['last_se']:.3f}, {w['last_n']}); difference {w['difference']:+.3f} = "
            f"{w['z']:.1f} standard errors (samples taken as independent)")


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
