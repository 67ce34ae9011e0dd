"""The judge interface on rule metrics: `RuleJudge`, offline and deterministic.

Owns: `RuleJudge`, a `Judge` that scores by exact match or token F1 (`reward.rules`) instead of asking a model:
the default of the embedded world, whose gold answers are exact.

Must never: call a model or a service, cache (nothing to save), or fail on a well-formed item.
"""

from __future__ import annotations

from collections.abc import Sequence

from reward.judge_types import JudgeItem, JudgeResult
from reward.rules import exact_match, f1_score

__all__ = ["RuleJudge"]


class RuleJudge:
    """The `JudgeClient` interface on rule metrics of `reward.rules`: "exact_match" (SQuAD-normalised, 1/0) or
    "f1" (token F1 in [0, 1]); max over several golds. Offline, deterministic, instant: never fails, never
    caches (nothing to save); `kind` is ignored."""

    _METRICS = {"exact_match": exact_match, "f1": f1_score}

    def __init__(self, metric: str = "exact_match"):
        if metric not in self._METRICS:
            raise ValueError(f"RuleJudge: unknown metric {metric!r}; known: {sorted(self._METRICS)}")
        self.metric = metric
        self._score = self._METRICS[metric]
        self._items = 0

    async def judge_batch(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        return self.judge_batch_sync(items)

    def judge_batch_sync(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Plain computation: safe to call with or without an event loop."""
        items = list(items)
        self._items += len(items)
        return [JudgeResult(float(self._score(item.prediction, item.gold)), ok=True) for item in items]

    def metrics(self) -> dict[str, float]:
        """The same keys as `JudgeClient.metrics`; only `items` moves."""
        return {"items": self._items, "requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                "mean_latency_s": 0.0, "max_latency_s": 0.0, "cache_size": 0}

    def reset_metrics(self) -> None:
        self._items = 0

    def clear_cache(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
