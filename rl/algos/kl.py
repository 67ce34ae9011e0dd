"""KL estimators between the policy and the reference model, and the policy entropy.

Owns: the `KL_ESTIMATORS` registry under verl's names (`kl_penalty` in verl/trainer/ppo/core_algos.py): "kl" / "k1",
"abs", "mse" / "k2", "low_var_kl" / "k3", and the straight-through variants "kl+" / "k1+", "abs+", "low_var_kl+" /
"k3+"; `kl_penalty` and `entropy_from_logits`.
Never: imports Ray, torch.distributed or any other part of the project; applies a mask or a coefficient (the caller
aggregates `kl_coef * kl_penalty(...)` with the loss mask, or subtracts it from the reward for reward-side KL).

All estimators take per-token log-probabilities of the sampled tokens, log π_θ and log π_ref, of any equal shape,
and return a tensor of that shape (Schulman, "Approximating KL divergence", 2020). Each is exactly 0 where the two
are equal. Its gradient there is 0 for every estimator but k1, whose per-token gradient is 1 (only its expectation
over samples vanishes), which is why k1 belongs in the reward (kl_in_reward) and k3 in the loss (SEEDS 1.1, 14
item 5). "k3" is verl's low-variance estimator, clamped: one wild token (log r = ±30) gives at most 10, never e^30.
A name ending in "+" keeps the value of its base estimator and takes the gradient of k2, ½ (log π_θ - log π_ref)²,
whose expected gradient is the gradient of KL[π_θ || π_ref] (verl PR 2953, docs/algo/grpo.md `kl_loss_type`).
"""

from __future__ import annotations

import torch

from rl.algos.registry import Registry

KL_ESTIMATORS = Registry("KL estimator")

# verl clamps log r to [-20, 20] before exp() and k3 to [-10, 10] (numerical stability)
_MAX_LOG_RATIO = 20.0
_MAX_K3 = 10.0


@KL_ESTIMATORS.register("kl")
@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π_θ - log π_ref (unbiased, can be negative)."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("abs")
def kl_abs(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """|log π_θ - log π_ref|."""
    return (logprobs - ref_logprobs).abs()


@KL_ESTIMATORS.register("mse")
@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_θ - log π_ref)² (biased, low variance, ≥ 0)."""
    return 0.5 * (logprobs - ref_logprobs).square()


@KL_ESTIMATORS.register("low_var_kl")
@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = r - 1 - log r, r = π_ref/π_θ (SEEDS 1.1; unbiased, ≥ 0), as verl's `low_var_kl`: log r clamped to
    [-20, 20], the result to [-10, 10]."""
    log_ratio = (ref_logprobs - logprobs).clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO)
    return (torch.expm1(log_ratio) - log_ratio).clamp(min=-_MAX_K3, max=_MAX_K3)


def _k2_gradient(value: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Straight-through: the value of `value`, the gradient of k2 (verl `kl_penalty` with a "+" name)."""
    k2 = kl_k2(logprobs, ref_logprobs)
    return k2 - k2.detach() + value.detach()


@KL_ESTIMATORS.register("kl+")
@KL_ESTIMATORS.register("k1+")
def kl_k1_plus(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1's value, k2's gradient."""
    return _k2_gradient(kl_k1(logprobs, ref_logprobs), logprobs, ref_logprobs)


@KL_ESTIMATORS.register("abs+")
def kl_abs_plus(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """|log π_θ - log π_ref|'s value, k2's gradient."""
    return _k2_gradient(kl_abs(logprobs, ref_logprobs), logprobs, ref_logprobs)


@KL_ESTIMATORS.register("low_var_kl+")
@KL_ESTIMATORS.register("k3+")
def kl_k3_plus(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3's (clamped) value, k2's gradient."""
    return _k2_gradient(kl_k3(logprobs, ref_logprobs), logprobs, ref_logprobs)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str, **kwargs: object) -> torch.Tensor:
    """Per-token KL[π_θ || π_ref] estimate of the estimator `kind` registered in `KL_ESTIMATORS` (SEEDS 1.1, 1.3);
    kwargs (its declared parameters; the built-in estimators have none) go to it.

    GRPO puts β·k3 in the loss with β = 0.04 (SEEDS 1.3); DAPO/DUPO use none (β = 0, no reference model).
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"kl_penalty: logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ"
        )
    return KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs, **kwargs)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last axis: H = logsumexp(l) - Σ_v softmax(l)_v l_v, shape logits.shape[:-1].

    Computed on l - max(l) (H is shift-invariant), so it stays exact for large logits; vocabulary entries at -inf
    (masked out) contribute 0 to the value and to the gradient.
    """
    top = logits.detach().amax(dim=-1, keepdim=True)
    shifted = logits - torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    probs = torch.softmax(shifted, dim=-1)
    finite = torch.where(probs > 0, shifted, torch.zeros((), dtype=logits.dtype, device=logits.device))
    return torch.logsumexp(shifted, dim=-1) - (probs * finite).sum(dim=-1)
