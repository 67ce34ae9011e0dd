"""Outcome advantage estimators: one scalar reward per trajectory -> one advantage per trajectory.

Owns: the `ADVANTAGES` registry ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"), `compute_advantage` and
`broadcast_to_tokens`.
Never: imports Ray, torch.distributed or any other part of the project; loops in Python over groups (everything
is a scatter over the group index, so a 10k-row batch costs the same as one group).

Inputs of every estimator: `rewards` float [N] (R_i) and `group` int64 [N] (the group of row i: rows with equal
`group` are the G rollouts of one task). Group ids need not be contiguous or sorted. Output: float [N], detached.
Register a new estimator with `@ADVANTAGES.register("name", params={...})` and the signature
`fn(rewards, group, **kwargs)`; `params` declares the keyword arguments the configuration may set
(`algo.adv_estimator_args`, `rl.algos.params.piece_kwargs`).
"""

from __future__ import annotations

import torch

from rl.algos.registry import Param, Registry

ADVANTAGES = Registry("advantage estimator")


def _group_moments(
    rewards: torch.Tensor, group: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards as float64, index of each row's group in [0, G), size per group, sum per group)."""
    rewards = torch.as_tensor(rewards)
    group = torch.as_tensor(group)
    if rewards.dim() != 1 or group.shape != rewards.shape:
        raise ValueError(f"advantage: rewards {tuple(rewards.shape)} and group {tuple(group.shape)} must both be [N]")
    if group.dtype.is_floating_point:
        raise TypeError(f"advantage: group must be an integer tensor, got {group.dtype}")
    values = rewards.detach().to(torch.float64)
    group_ids, inverse = torch.unique(group, return_inverse=True)
    num_groups = group_ids.numel()
    size = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(
        0, inverse, torch.ones_like(values)
    )
    total = torch.zeros(num_groups, dtype=torch.float64, device=values.device).index_add_(0, inverse, values)
    return values, inverse, size, total


def _out_dtype(rewards: torch.Tensor) -> torch.dtype:
    rewards = torch.as_tensor(rewards)
    return rewards.dtype if rewards.dtype.is_floating_point else torch.float32


_EPS = Param(1e-6, gt=0, help="added to the std before dividing")


@ADVANTAGES.register("grpo", params={
    "eps": _EPS,
    "norm_by_std": Param(True, key="norm_adv_by_std", help="divide by the group std (False: Dr. GRPO)"),
})
def grpo(rewards: torch.Tensor, group: torch.Tensor, eps: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """GRPO outcome advantage (SEEDS 1.2): Â_i = (R_i - mean_g) / (std_g + eps).

    std is the unbiased (N-1) `torch.std` of the group; a group of size 1 gets mean 0 and std 1 (verl
    `compute_grpo_outcome_advantage`), so its advantage is R_i / (1 + eps). A zero-variance group gives Â = 0 for
    every member (SEEDS 14 item 1). With `norm_by_std=False` this is Dr. GRPO: Â_i = R_i - mean_g.
    """
    values, inverse, size, total = _group_moments(rewards, group)
    single = size == 1
    mean = torch.where(single, torch.zeros_like(total), total / size)
    centred = values - mean[inverse]
    if norm_by_std:
        sq = torch.zeros_like(total).index_add_(0, inverse, centred.square())
        std = torch.where(single, torch.ones_like(total), (sq / (size - 1).clamp(min=1)).sqrt())
        centred = centred / (std[inverse] + eps)
    return centred.to(_out_dtype(rewards))


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (arXiv 2503.20783): Â_i = R_i - mean_g, no std division (size-1 group: mean 0, as in `grpo`)."""
    return grpo(rewards, group, norm_by_std=False)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO (arXiv 2402.14740): Â_i = R_i - (1/(n_g-1)) Σ_{j≠i in g} R_j, leave-one-out baseline.

    A group of size 1 has no other member: its advantage is 0.
    """
    values, inverse, size, total = _group_moments(rewards, group)
    n = size[inverse]
    others_mean = (total[inverse] - values) / (n - 1).clamp(min=1)
    return torch.where(n > 1, values - others_mean, torch.zeros_like(values)).to(_out_dtype(rewards))


@ADVANTAGES.register("reinforce_pp_baseline", params={"eps": _EPS})
def reinforce_pp_baseline(rewards: torch.Tensor, group: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE++-baseline (arXiv 2501.03262; verl "reinforce_plus_plus_baseline").

    x_i = R_i - mean_g (size-1 group: mean 0), then whitened over the whole batch: Â_i = (x_i - mean(x)) /
    (std(x) + eps), std unbiased over rows. verl whitens over response tokens (long responses weigh more);
    here every trajectory counts once. A batch of one row gives 0.
    """
    values, inverse, size, total = _group_moments(rewards, group)
    mean = torch.where(size == 1, torch.zeros_like(total), total / size)
    centred = values - mean[inverse]
    if centred.numel() < 2:
        return torch.zeros_like(centred).to(_out_dtype(rewards))
    whitened = (centred - centred.mean()) / (centred.std() + eps)
    return whitened.to(_out_dtype(rewards))


def compute_advantage(name: str, rewards: torch.Tensor, group: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """Advantage [N] from the estimator `name` registered in `ADVANTAGES` (SEEDS 1.2); kwargs go to it."""
    return ADVANTAGES.get(name)(rewards, group, **kwargs)


def broadcast_to_tokens(advantage: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Â_{i,t} = Â_i · m_{i,t}: the per-sequence advantage on every loss token, 0 elsewhere (SEEDS 1.2, 13.3)."""
    if advantage.dim() != 1 or advantage.shape[0] != loss_mask.shape[0]:
        raise ValueError(
            f"broadcast_to_tokens: advantage {tuple(advantage.shape)} must be [B] for loss_mask "
            f"{tuple(loss_mask.shape)}"
        )
    zero = torch.zeros((), dtype=advantage.dtype, device=advantage.device)
    return torch.where(loss_mask.bool(), advantage.unsqueeze(-1), zero)
