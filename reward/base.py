"""The reward-function protocol and registry (DESIGN section 3, "Rewards").

Owns: `RewardFn` (the columns a reward needs and `score(batch) -> parts`), the registry of reward
functions by name, and the built-in `target_token` reward of the spine's learnable task. The other built-in
rewards register themselves in `reward/fns.py` and `reward/rm.py` (imported by `reward/__init__.py`).

Never: import Ray or anything of the project but the trajectory schema; call a model here
(judges live in their own module, async and batched).
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import pyarrow as pa

from rollout.trajectory import ragged_numpy


class RewardFn(Protocol):
    """A reward function. Optional attributes the RewardWorker reads:
    `parts` (tuple of the part names `score` returns, known at construction: clashes and a composition's missing
    parts are then reported before any batch); `gateable = True` (`score(batch, active=mask)` scores only the
    rows where the boolean mask is set and returns NaN elsewhere: judges and reward models, so that a composition's
    gate saves their calls); `needs_judge = True` (the factory gets the worker's judge as `judge=`);
    `metrics()` / `reset_metrics()` (counters for the log)."""

    #: the trajectory columns `score` reads (the controller sends only these)
    columns: tuple[str, ...]

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """One float array per reward part, each of length batch.num_rows."""


REWARD_FNS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str):
    def deco(factory):
        if name in REWARD_FNS:
            raise KeyError(f"reward {name!r} is already registered")
        REWARD_FNS[name] = factory
        return factory
    return deco


def make_reward(name: str, **kwargs) -> RewardFn:
    if name not in REWARD_FNS:
        raise KeyError(f"unknown reward {name!r}; registered: {sorted(REWARD_FNS)}")
    return REWARD_FNS[name](**kwargs)


@register_reward("target_token")
class TargetTokenFraction:
    """Fraction of the policy's response tokens equal to `token_id`: a trivially learnable
    reward for checking that the whole loop learns (the spine's built-in task)."""

    columns = ("response_ids", "loss_mask")
    parts = ("target_token",)

    def __init__(self, token_id: int):
        self.token_id = int(token_id)

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        ids, off = ragged_numpy(batch, "response_ids")
        mask, _ = ragged_numpy(batch, "loss_mask")
        hit = ((ids == self.token_id) & (mask == 1)).astype(np.float64)
        gen = mask.astype(np.float64)
        # per-row sums via cumulative sums at the offsets (no Python loop over rows)
        hits = np.diff(np.concatenate([[0.0], np.cumsum(hit)])[off])
        counts = np.diff(np.concatenate([[0.0], np.cumsum(gen)])[off])
        return {"target_token": np.divide(hits, counts, out=np.zeros_like(hits), where=counts > 0)}
