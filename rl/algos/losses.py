"""Policy-gradient surrogate losses, per token.

Owns: the `POLICY_LOSSES` registry ("ppo_clip", "gspo"), each loss's declared parameters (its clip range: GSPO's
is not PPO's) and aggregation, and `policy_loss`.
Never: imports Ray, torch.distributed or any other part of the project; aggregates (that is
`rl.algos.aggregation.aggregate`, chosen separately by `loss_agg_mode`); adds the KL or entropy terms.

Contract of every registered loss (a user loss registered with `@POLICY_LOSSES.register("name")` follows it too):

    fn(logprobs, old_logprobs, advantages, loss_mask, **kwargs) -> (per_token_loss [B, T], metrics: dict[str, float])

`logprobs` [B, T] are log π_θ of the sampled tokens (with grad), `old_logprobs` [B, T] log π_θold (no grad),
`advantages` [B] (one per sequence, broadcast over tokens) or [B, T], `loss_mask` [B, T] float/uint8/bool with 1 on
tokens the policy generated. The returned per-token loss is the quantity to *minimise* (minus the surrogate
objective) and is exactly 0 at masked positions; values at masked positions of any input change neither the loss,
nor the metrics, nor the gradient (they are replaced by 0 with `torch.where` before any arithmetic). Metrics are
Python floats, masked means over loss tokens of this micro-batch.

Parameters: a loss declares the keyword arguments the configuration may set (`params=`, see `rl.algos.registry.Param`);
the trainer passes it exactly those, resolved by `rl.algos.params.piece_kwargs` from `algo.policy_loss_args` and the
flat keys it reads. A loss whose objective fixes its aggregation declares it (`aggregation=`): GSPO's is
"seq-mean-token-mean" whatever `algo.loss_agg_mode` says (verl `compute_policy_loss_gspo` forces it too).
"""

from __future__ import annotations

import torch

from rl.algos.aggregation import masked_mean, masked_sum
from rl.algos.registry import Param, Registry

POLICY_LOSSES = Registry("policy loss", info={"aggregation": None})

# log-ratios are clamped before exp() so that one wild token cannot overflow the loss (verl does the same).
_MAX_LOG_RATIO = 20.0


def _prepare(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, where: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes; return (mask bool, logprobs, old_logprobs, advantages [B, T]) with masked positions set to 0."""
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or loss_mask.shape != logprobs.shape:
        raise ValueError(
            f"{where}: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and loss_mask "
            f"{tuple(loss_mask.shape)} must all be [B, T]"
        )
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages.unsqueeze(-1).expand_as(logprobs)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"{where}: advantages {tuple(advantages.shape)} must be [B] or [B, T] for logprobs {tuple(logprobs.shape)}"
        )
    mask = loss_mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    return (
        mask,
        torch.where(mask, logprobs, zero),
        torch.where(mask, old_logprobs.detach(), zero),
        torch.where(mask, advantages.detach().to(logprobs.dtype), zero),
    )


def _check_clip(clip_low: float, clip_high: float, where: str) -> None:
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"{where}: need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")


def _metrics(mask: torch.Tensor, **fractions: torch.Tensor) -> dict[str, float]:
    """Masked means of each tensor, read back to Python in one device sync."""
    with torch.no_grad():
        values = torch.stack([masked_mean(v.to(torch.float32), mask) for v in fractions.values()])
    return dict(zip(fractions, values.tolist(), strict=True))


@POLICY_LOSSES.register("ppo_clip", params={
    "clip_low": Param(0.2, ge=0, lt=1, key="clip_low", help="ε_low"),
    "clip_high": Param(0.2, ge=0, key="clip_high", help="ε_high (DAPO clip-higher 0.28)"),
    "dual_clip": Param(None, gt=1, value_type=float, key="dual_clip", help="dual-clip c for Â < 0; null = off"),
})
def ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with decoupled ε_low / ε_high (SEEDS 1.1 GRPO, 2.1 item 1 clip-higher, 14 items 2-3).

        r_t = exp(log π_θ - log π_θold)
        l_t = -min(r_t Â_t, clip(r_t, 1 - ε_low, 1 + ε_high) Â_t)
        dual clip (Ye et al. 2020, verl `clip_ratio_c`), only where Â_t < 0:  l_t = min(l_t, -c Â_t),  c > 1

    GRPO uses ε = 0.2 / 0.2; DAPO and DUPO 0.2 / 0.28.
    Metrics: `clip_frac_low` (Â<0 and r < 1-ε_low: the lower clip is active, no gradient), `clip_frac_high`
    (Â>0 and r > 1+ε_high), `approx_kl` = mean of k1 = log π_θold - log π_θ (verl `ppo_kl`), `ratio_mean`,
    and `dual_clip_frac` (Â<0 and -r Â > -c Â) when `dual_clip` is set.
    """
    _check_clip(clip_low, clip_high, "ppo_clip")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_clip: dual_clip must be > 1 (verl clip_ratio_c), got {dual_clip}")
    mask, logprobs, old_logprobs, advantages = _prepare(logprobs, old_logprobs, advantages, loss_mask, "ppo_clip")

    log_ratio = (logprobs - old_logprobs).clamp(min=-_MAX_LOG_RATIO, max=_MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(min=1.0 - clip_low, max=1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)

    fractions = {
        "clip_frac_low": (advantages < 0) & (ratio < 1.0 - clip_low),
        "clip_frac_high": (advantages > 0) & (ratio > 1.0 + clip_high),
        "approx_kl": -log_ratio,
        "ratio_mean": ratio,
    }
    if dual_clip is not None:
        loss_dual = -advantages * dual_clip
        fractions["dual_clip_frac"] = (advantages < 0) & (loss > loss_dual)
        loss = torch.where(advantages < 0, torch.minimum(loss, loss_dual), loss)

    loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss, _metrics(mask, **fractions)


@POLICY_LOSSES.register("gspo", params={
    "clip_low": Param(3e-4, ge=0, lt=1, help="ε_low on the sequence ratio (paper Sec. 5.1: 3e-4)"),
    "clip_high": Param(4e-4, ge=0, help="ε_high on the sequence ratio (paper Sec. 5.1: 4e-4)"),
}, aggregation="seq-mean-token-mean")
def gspo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO, sequence-level importance ratio (Qwen, arXiv 2507.18071, Eq. 5-7 "GSPO-token"; verl
    `compute_policy_loss_gspo`).

        s_i     = exp( (1/|o_i|) Σ_t m_{i,t} (log π_θ - log π_θold) )   (geometric-mean sequence ratio)
        s_{i,t} = sg[s_i] · π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]             (value s_i, gradient s_i ∇log π_θ)
        l_{i,t} = -min(s_{i,t} Â_{i,t}, clip(s_{i,t}, 1 - ε_low, 1 + ε_high) Â_{i,t})

    Defaults ε = 3e-4 / 4e-4 are the paper's (Sec. 5.1); they are declared as GSPO's own parameters, so the PPO
    range of a preset (algo.clip_low / clip_high) never reaches it (set algo.policy_loss_args.clip_low/high).
    log s_{i,t} is clamped at 10 as in verl. GSPO is registered with aggregation "seq-mean-token-mean" (the paper's
    1/G Σ_i 1/|o_i| Σ_t; verl forces it): with that mode the gradient equals GSPO's sequence-level one. Metrics as
    `ppo_clip`, with the clip fractions counted on s_i (token-weighted).
    """
    _check_clip(clip_low, clip_high, "gspo")
    mask, logprobs, old_logprobs, advantages = _prepare(logprobs, old_logprobs, advantages, loss_mask, "gspo")

    token_log_ratio = logprobs - old_logprobs
    seq_len = mask.sum(dim=-1).clamp(min=1).to(logprobs.dtype)
    seq_log_ratio = masked_sum(token_log_ratio, mask, dim=-1) / seq_len  # log s_i, [B]
    log_ratio = logprobs - logprobs.detach() + seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(log_ratio.clamp(max=10.0))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(min=1.0 - clip_low, max=1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))

    seq_ratio = ratio.detach()
    metrics = _metrics(
        mask,
        clip_frac_low=(advantages < 0) & (seq_ratio < 1.0 - clip_low),
        clip_frac_high=(advantages > 0) & (seq_ratio > 1.0 + clip_high),
        approx_kl=-token_log_ratio.detach(),
        ratio_mean=seq_ratio,
    )
    return loss, metrics


def policy_loss(
    name: str,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    **kwargs: object,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(per_token_loss [B, T], metrics) of the loss `name` registered in `POLICY_LOSSES`; kwargs go to it."""
    return POLICY_LOSSES.get(name)(logprobs, old_logprobs, advantages, loss_mask, **kwargs)


def policy_loss_aggregation(name: str, loss_agg_mode: str) -> str:
    """The aggregation mode of the loss `name`: its own when it declares one (gspo: "seq-mean-token-mean"), else
    `loss_agg_mode` (algo.loss_agg_mode, which also aggregates the KL and entropy terms, as in verl)."""
    return POLICY_LOSSES.info(name, "aggregation") or loss_agg_mode
