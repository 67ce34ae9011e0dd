"""Windward's RL algorithms: pure functions on tensors and index arrays, published in named registries.

Owns the math of learning (DESIGN.md section 3 "Algorithms"; formulas in shared/spec/SEEDS.md sections 1-3):

    registry.py      Registry: name -> function and the parameters it declares (Param); snapshot/restore to ship
                     user registrations to Ray workers
    params.py        PIECES; piece_kwargs (a chosen piece's declared parameters from the settings), check_piece_params
    advantages.py    ADVANTAGES       grpo, dr_grpo, rloo, reinforce_pp_baseline; broadcast_to_tokens
    losses.py        POLICY_LOSSES    ppo_clip (decoupled ε, dual clip), gspo (own ε, own aggregation)
                                      -> per-token loss + metrics; policy_loss_aggregation
    aggregation.py   AGGREGATIONS     token-mean, seq-mean-token-mean, seq-mean-token-sum-norm; masked_mean
    kl.py            KL_ESTIMATORS    verl's: kl/k1, abs, mse/k2, low_var_kl/k3 (clamped), and k1+ abs+ k3+
                                      (straight-through k2 gradient); entropy_from_logits
    importance.py    tis_weights: truncated importance sampling for rollout-vs-trainer log-prob mismatch
    shaping.py       soft_overlong_penalty (DAPO R_length), overlong_filter_mask
    sampling.py      GROUP_SAMPLERS   keep, dapo (regenerates), dupo; sampler_regenerates, group_stats,
                                      dupo_prefilter, balance_groups (numpy)
    rewards_math.py  is_equivalent, dapo_rule_reward (math-verify when installed)
    presets.py       PRESETS          grpo, dapo, dupo as plain dicts of config fields

Never: imports Ray, torch.distributed or any other part of the project (rollout, reward, envs, other rl modules);
takes config objects (plain arguments only); holds state beyond the registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rl.algos.advantages import (
    ADVANTAGES,
    broadcast_to_tokens,
    compute_advantage,
    dr_grpo,
    grpo,
    reinforce_pp_baseline,
    rloo,
)
from rl.algos.aggregation import AGGREGATIONS, aggregate, aggregation_counts, masked_mean, masked_sum
from rl.algos.importance import tis_weights
from rl.algos.kl import KL_ESTIMATORS, entropy_from_logits, kl_penalty
from rl.algos.losses import POLICY_LOSSES, gspo, policy_loss, policy_loss_aggregation, ppo_clip
from rl.algos.params import PIECES, check_piece_params, piece_kwargs
from rl.algos.presets import PRESET_FIELDS, PRESETS, preset
from rl.algos.registry import Entry, Param, Registry
from rl.algos.rewards_math import dapo_rule_reward, is_equivalent
from rl.algos.sampling import (
    GROUP_SAMPLERS,
    balance_groups,
    dapo_needs_more,
    dapo_select,
    dupo_fill,
    dupo_prefilter,
    group_stats,
    keep,
    sampler_metrics,
    sampler_regenerates,
    zero_variance_groups,
)
from rl.algos.shaping import overlong_filter_mask, soft_overlong_penalty

REGISTRIES: dict[str, Registry] = {
    "advantage": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "aggregation": AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "group_sampler": GROUP_SAMPLERS,
}


def snapshot_registries() -> dict[str, dict[str, Entry]]:
    """Every registry's table (functions with their declared parameters), for the trainer to cloudpickle to its
    workers (see `rl.algos.registry`)."""
    return {kind: registry.snapshot() for kind, registry in REGISTRIES.items()}


def restore_registries(snapshot: dict[str, dict[str, Entry | Callable[..., Any]]]) -> None:
    """Merge a `snapshot_registries()` result into this process's registries (driver entries win)."""
    unknown = sorted(set(snapshot) - set(REGISTRIES))
    if unknown:
        raise KeyError(f"restore_registries: unknown registry kind(s) {unknown}; kinds: {', '.join(REGISTRIES)}")
    for kind, table in snapshot.items():
        REGISTRIES[kind].restore(table)


__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "GROUP_SAMPLERS",
    "KL_ESTIMATORS",
    "PIECES",
    "POLICY_LOSSES",
    "PRESETS",
    "PRESET_FIELDS",
    "REGISTRIES",
    "Entry",
    "Param",
    "Registry",
    "aggregate",
    "aggregation_counts",
    "balance_groups",
    "broadcast_to_tokens",
    "check_piece_params",
    "compute_advantage",
    "dapo_needs_more",
    "dapo_rule_reward",
    "dapo_select",
    "dr_grpo",
    "dupo_fill",
    "dupo_prefilter",
    "entropy_from_logits",
    "group_stats",
    "grpo",
    "gspo",
    "is_equivalent",
    "keep",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "overlong_filter_mask",
    "piece_kwargs",
    "policy_loss",
    "policy_loss_aggregation",
    "ppo_clip",
    "preset",
    "reinforce_pp_baseline",
    "restore_registries",
    "rloo",
    "sampler_metrics",
    "sampler_regenerates",
    "snapshot_registries",
    "soft_overlong_penalty",
    "tis_weights",
    "zero_variance_groups",
]
