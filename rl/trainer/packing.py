"""Micro-batch planning: which rows of a rank's shard go through the model together.

Owns: `plan_micro_batches` (pure numpy): fixed-size slices in arrival order (the historical
layout), or micro-batches bounded by a token budget, and `micro_batch_cost`, the budget's measure.
A micro-batch's cost is what the model actually computes on:

    padded:  rows x longest row   (right padding to the longest)
    packed:  sum of row lengths   (one row, no padding; `rl/trainer/collate.py: packed_microbatch`)

Never: split a sequence (a row longer than the budget is a micro-batch of its own), build tensors
(collate does), or balance across ranks: the controller gives each rank whole groups with
`rl.algos.balance_groups`, and every rank plans its own micro-batches (the trainer then agrees on
their count, adding empty ones where a rank has fewer).
"""

from __future__ import annotations

import numpy as np


def micro_batch_cost(lengths: np.ndarray, packing: bool) -> int:
    """Tokens the model processes for one micro-batch of rows of these lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return 0
    return int(lengths.sum()) if packing else int(lengths.size * lengths.max())


def plan_micro_batches(lengths: np.ndarray, *, micro_batch_size: int = 8, token_budget: int = 0,
                       packing: bool = False) -> list[np.ndarray]:
    """Indices into `lengths`, one ascending int64 array per micro-batch; every index exactly once.

    token_budget == 0: consecutive slices of `micro_batch_size` rows, in order (rows per
    forward/backward, the layout before budgets existed).
    token_budget > 0: rows longest first. Packed: first-fit decreasing, each row into the first
    micro-batch whose sum stays within the budget. Padded: consecutive runs of the sorted rows, as
    many as fit `rows x longest <= budget` (sorting puts similar lengths together, so little padding).
    A row longer than the budget gets a micro-batch of its own. `micro_batch_size` is ignored.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = lengths.size
    if token_budget < 0 or micro_batch_size < 1:
        raise ValueError(f"plan_micro_batches: need token_budget >= 0 and micro_batch_size >= 1, "
                         f"got {token_budget} and {micro_batch_size}")
    if n == 0:
        return []
    if not token_budget:
        return [np.arange(i, min(i + micro_batch_size, n), dtype=np.int64) for i in range(0, n, micro_batch_size)]
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    if packing:
        loads: list[int] = []
        for i in order:
            need = int(lengths[i])
            for b, load in enumerate(loads):
                if load + need <= token_budget:
                    bins[b].append(int(i))
                    loads[b] += need
                    break
            else:
                bins.append([int(i)])
                loads.append(need)
    else:
        for i in order:
            if bins and (len(bins[-1]) + 1) * int(lengths[bins[-1][0]]) <= token_budget:
                bins[-1].append(int(i))
            else:
                bins.append([int(i)])
    return [np.sort(np.asarray(b, dtype=np.int64)) for b in bins]
