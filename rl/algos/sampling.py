"""Group samplers: which rows of a rolled-out batch go into the update, and how rows are spread over ranks.

Owns: the `GROUP_SAMPLERS` registry ("keep", "dapo", "dupo") and `sampler_regenerates`, group statistics, DAPO
selection, DUPO in-batch duplication and offline pre-filter, and group-aware balancing over data-parallel ranks.
Everything works on numpy index arrays; the controller applies them to the Arrow batch with `batch.take(row_indices)`.
Never: imports Ray, torch.distributed or any other part of the project; touches the batch itself; generates.

Sampler protocol (what `GROUP_SAMPLERS.get(name)` returns; register a new one with the same signature):

    sampler(rewards [N], group [N], *, num_groups_target: int | None, rng: numpy.random.Generator)
        -> (row_indices int64 [M], dup_of int64 [M], new_group int64 [M])

`row_indices` are rows of the input batch in update order; `dup_of[i]` is -1 for an original row and, for a copy,
the position j in the *update* batch (an index into `row_indices`) of the original row it copies, so
`row_indices[dup_of[i]] == row_indices[i]`; `new_group[i]` is the group index to store for row i of the update batch
(the original one for original rows, a fresh one per copied group). Empty arrays mean "no row is trainable: skip the
step". The controller then does::

    batch = batch.take(row_indices); set columns group = new_group, dup_of = dup_of

A sampler may declare parameters the configuration sets (`params=`, from `algo.sampler_args`; the controller passes
`piece_kwargs("sampler", name, settings)`) and says whether it regenerates (`regenerates=True`, DAPO): the controller
then runs the loop below for it, rather than sampling the one batch it got. It asks `sampler_regenerates(name)`.

DAPO dynamic sampling loop (SEEDS 2.4, 14 item 7), run by the controller, not here:

    valid, rounds = [], 0
    while dapo_needs_more(len(valid), B) and rounds < max_gen_rounds:
        generate and score one generation batch; rounds += 1
        valid += the groups of dapo_select(rewards, group)
    batch = first B valid groups ("dapo" sampler on the concatenated rounds)

It logs `gen_batches_per_step = rounds` every step; when `max_gen_rounds` stops the loop with fewer than B valid
groups it trains on those it has (skips the step if none) and says so: a warning with the counts (valid groups,
target B, rounds) and the metric `dapo_bound_hit = 1`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rl.algos.registry import Registry

GROUP_SAMPLERS = Registry("group sampler", info={"regenerates": False})

_EMPTY = np.zeros(0, dtype=np.int64)


def _as_arrays(rewards: np.ndarray, group: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rewards, dtype=np.float64)
    g = np.asarray(group)
    if r.ndim != 1 or g.shape != r.shape:
        raise ValueError(f"{where}: rewards {r.shape} and group {g.shape} must both be [N]")
    if g.size and not np.issubdtype(g.dtype, np.integer):
        raise TypeError(f"{where}: group must hold integers, got {g.dtype}")
    return r, g.astype(np.int64, copy=False)


class _Groups:
    """The groups of one batch: ids (sorted), rows of each, first-appearance order, std and mean."""

    def __init__(self, rewards: np.ndarray, group: np.ndarray) -> None:
        self.ids, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        n_groups = self.ids.size
        order = np.argsort(inverse, kind="stable")
        self.rows = np.split(order, np.cumsum(counts)[:-1]) if n_groups else []
        first_row = np.full(n_groups, group.size, dtype=np.int64)
        np.minimum.at(first_row, inverse, np.arange(group.size))
        self.appearance = np.argsort(first_row, kind="stable")  # group positions by first appearance
        self.mean = np.bincount(inverse, weights=rewards, minlength=n_groups) / np.maximum(counts, 1)
        sq = np.bincount(inverse, weights=(rewards - self.mean[inverse]) ** 2, minlength=n_groups)
        std = np.sqrt(sq / np.maximum(counts - 1, 1))
        high = np.full(n_groups, -np.inf)
        low = np.full(n_groups, np.inf)
        np.maximum.at(high, inverse, rewards)
        np.minimum.at(low, inverse, rewards)
        # exactly 0 for equal rewards (no rounding residue) and for groups of one
        self.std = np.where((high == low) | (counts < 2), 0.0, std)

    def valid_in_order(self, tol: float) -> np.ndarray:
        """Positions (into `ids`) of groups with std > tol, in order of first appearance."""
        return self.appearance[self.std[self.appearance] > tol]

    def rows_of(self, positions: np.ndarray) -> np.ndarray:
        return np.concatenate([self.rows[p] for p in positions]).astype(np.int64) if len(positions) else _EMPTY


def group_stats(rewards: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group_ids sorted, std per group, mean per group) of the rewards.

    std is unbiased (N-1, as GRPO's), exactly 0 when all members are equal, and 0 for a group of one (one sample
    carries no within-group signal, so DAPO and DUPO drop it).
    """
    r, g = _as_arrays(rewards, group, "group_stats")
    groups = _Groups(r, g)
    return groups.ids, groups.std, groups.mean


def zero_variance_groups(rewards: np.ndarray, group: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Ids of groups whose reward std is <= tol (all right or all wrong: GRPO advantage 0, no gradient; SEEDS 1.2)."""
    ids, std, _ = group_stats(rewards, group)
    return ids[std <= tol]


def keep(rewards: np.ndarray, group: np.ndarray) -> np.ndarray:
    """GRPO: every row, in order (no filtering)."""
    r, _ = _as_arrays(rewards, group, "keep")
    return np.arange(r.size, dtype=np.int64)


def dapo_select(rewards: np.ndarray, group: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """DAPO dynamic sampling filter (SEEDS 2.1 item 2): rows of groups with 0 < acc < 1, i.e. reward std > tol.

    Groups in order of first appearance, rows of a group in ascending order.
    """
    r, g = _as_arrays(rewards, group, "dapo_select")
    groups = _Groups(r, g)
    return groups.rows_of(groups.valid_in_order(tol))


def dapo_needs_more(valid_groups: int, target: int) -> bool:
    """Whether DAPO's loop must generate another round: fewer than `target` (B) valid groups so far (SEEDS 2.4)."""
    return valid_groups < target


def dupo_fill(
    rewards: np.ndarray,
    group: np.ndarray,
    num_groups_target: int,
    rng: np.random.Generator,
    tol: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DUPO in-batch duplication (SEEDS 3.5 item 2, 14 item 8): drop std == 0 groups, refill with copies.

    Keeps the groups with std > tol (first-appearance order, at most `num_groups_target` of them), then draws the
    missing `num_groups_target - kept` groups uniformly with replacement from the kept ones and appends each as a
    whole-group copy. Returns (row_indices, dup_of, new_group) as in the module's sampler protocol: a copied group
    gets the fresh group index max(group) + 1 + k (k = 0, 1, ... in append order), so a copy never merges with its
    source and GRPO advantages recomputed on the update batch equal those of the source rows. No log-prob or
    reward is recomputed for a copy: copies are gathers of existing rows. No valid group -> three empty arrays.
    """
    r, g = _as_arrays(rewards, group, "dupo_fill")
    if num_groups_target < 1:
        raise ValueError(f"dupo_fill: num_groups_target must be >= 1, got {num_groups_target}")
    groups = _Groups(r, g)
    kept = groups.valid_in_order(tol)[:num_groups_target]
    if kept.size == 0:
        return _EMPTY.copy(), _EMPTY.copy(), _EMPTY.copy()

    rows = [groups.rows_of(kept)]
    dup_of = [np.full(rows[0].size, -1, dtype=np.int64)]
    new_group = [g[rows[0]]]
    position_of_row = {int(row): i for i, row in enumerate(rows[0])}
    next_group = int(g.max()) + 1
    for k, source in enumerate(rng.integers(0, kept.size, size=num_groups_target - kept.size)):
        source_rows = groups.rows[kept[source]].astype(np.int64)
        rows.append(source_rows)
        dup_of.append(np.array([position_of_row[int(row)] for row in source_rows], dtype=np.int64))
        new_group.append(np.full(source_rows.size, next_group + k, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(dup_of), np.concatenate(new_group)


def dupo_prefilter(pass_counts: Mapping[str, int], num_rollouts: int) -> tuple[list[str], dict[str, object]]:
    """DUPO pre-RL filter (SEEDS 3.5 item 1, 14 item 9): drop tasks solved by all `num_rollouts` (8) rollouts.

    `pass_counts` maps task id -> number of correct rollouts of the cold-start policy. All-wrong tasks are kept
    (the in-training rule handles them). Returns (kept ids in input order, manifest) where the manifest is
    {"num_rollouts", "num_tasks", "num_kept", "num_dropped", "dropped": [ids], "pass_counts": {id: count}}.
    """
    if num_rollouts < 1:
        raise ValueError(f"dupo_prefilter: num_rollouts must be >= 1, got {num_rollouts}")
    counts: dict[str, int] = {}
    for task_id, passed in pass_counts.items():
        if not 0 <= int(passed) <= num_rollouts:
            raise ValueError(f"dupo_prefilter: task {task_id!r} has pass count {passed}, outside [0, {num_rollouts}]")
        counts[task_id] = int(passed)
    kept = [task_id for task_id, passed in counts.items() if passed < num_rollouts]
    dropped = [task_id for task_id, passed in counts.items() if passed == num_rollouts]
    manifest: dict[str, object] = {
        "num_rollouts": num_rollouts,
        "num_tasks": len(counts),
        "num_kept": len(kept),
        "num_dropped": len(dropped),
        "dropped": dropped,
        "pass_counts": counts,
    }
    return kept, manifest


def balance_groups(seq_lens: np.ndarray, group: np.ndarray, num_ranks: int) -> list[np.ndarray]:
    """Split rows over `num_ranks` data-parallel ranks, whole groups only, balancing token counts (SEEDS 13.6, 14.45).

    Greedy longest-processing-time: groups sorted by total tokens (descending; ties by first appearance) go one by
    one to the rank with the fewest tokens so far (ties: lowest rank). Max minus min rank load is at most the
    largest group's token count. Returns one int64 array of row indices per rank, ascending; a rank gets an empty
    array when there are fewer groups than ranks.
    """
    if num_ranks < 1:
        raise ValueError(f"balance_groups: num_ranks must be >= 1, got {num_ranks}")
    lens, g = _as_arrays(seq_lens, group, "balance_groups")
    groups = _Groups(lens, g)
    tokens = np.array([lens[rows].sum() for rows in groups.rows])
    by_size = groups.appearance[np.argsort(-tokens[groups.appearance], kind="stable")]
    load = np.zeros(num_ranks)
    assigned: list[list[np.ndarray]] = [[] for _ in range(num_ranks)]
    for position in by_size:
        rank = int(np.argmin(load))
        assigned[rank].append(groups.rows[position])
        load[rank] += tokens[position]
    return [np.sort(np.concatenate(parts)).astype(np.int64) if parts else _EMPTY.copy() for parts in assigned]


def sampler_regenerates(name: str) -> bool:
    """Whether the group sampler `name` filters and regenerates (DAPO: the controller rolls out more tasks until
    it has the target number of valid groups or `max_gen_rounds`), rather than working on the one batch it gets."""
    return bool(GROUP_SAMPLERS.info(name, "regenerates"))


def sampler_metrics(rewards: np.ndarray, group: np.ndarray, dup_of: np.ndarray | None = None) -> dict[str, float]:
    """Per-step metrics (SEEDS 14 item 46) of the rolled-out batch (`rewards`, `group`) and, for DUPO, of the update
    batch (`dup_of`): `zero_variance_group_frac`, `num_groups`, and `duplication_ratio` = copied rows / update rows.
    """
    ids, std, _ = group_stats(rewards, group)
    metrics = {
        "zero_variance_group_frac": float((std == 0).mean()) if ids.size else 0.0,
        "num_groups": float(ids.size),
    }
    if dup_of is not None:
        dup_of = np.asarray(dup_of)
        metrics["duplication_ratio"] = float((dup_of >= 0).mean()) if dup_of.size else 0.0
    return metrics


# --- the sampler protocol (see module docstring) --------------------------------------------------------------


@GROUP_SAMPLERS.register("keep")
def keep_sampler(
    rewards: np.ndarray,
    group: np.ndarray,
    *,
    num_groups_target: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GRPO: the whole batch, unchanged."""
    rows = keep(rewards, group)
    return rows, np.full(rows.size, -1, dtype=np.int64), np.asarray(group, dtype=np.int64)[rows]


@GROUP_SAMPLERS.register("dapo", regenerates=True)
def dapo_sampler(
    rewards: np.ndarray,
    group: np.ndarray,
    *,
    num_groups_target: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DAPO: rows of the first `num_groups_target` non-zero-variance groups (all of them if None); no copies."""
    r, g = _as_arrays(rewards, group, "dapo")
    groups = _Groups(r, g)
    valid = groups.valid_in_order(0.0)
    rows = groups.rows_of(valid if num_groups_target is None else valid[:num_groups_target])
    return rows, np.full(rows.size, -1, dtype=np.int64), g[rows]


@GROUP_SAMPLERS.register("dupo")
def dupo_sampler(
    rewards: np.ndarray,
    group: np.ndarray,
    *,
    num_groups_target: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DUPO: `dupo_fill` to `num_groups_target` groups (default: the number of groups in the batch)."""
    if rng is None:
        raise ValueError("dupo sampler: pass rng=numpy.random.Generator (seeded by the controller) for duplication")
    target = num_groups_target if num_groups_target is not None else int(np.unique(np.asarray(group)).size)
    return dupo_fill(rewards, group, target, rng)
