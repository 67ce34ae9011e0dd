"""Faults of issue 16: every algorithm piece gets its own hyper-parameters, not the preset's.

GSPO ran almost unclipped because the trainer handed every loss the preset's PPO clip range (0.2 / 0.28) instead
of GSPO's own 3e-4 / 4e-4 (Zheng et al. 2025, arXiv 2507.18071, Sec. 5.1; verl `compute_policy_loss_gspo`);
`k3` was the unclamped estimator where verl's `k3` is the clamped `low_var_kl`; an unknown loss parameter in
the config was not caught at load.
"""

from __future__ import annotations

import math

import pytest
import torch

import rl.algos as algos
from rl.config import ConfigError, load_config, to_dict
from rl.trainer.base import TrainerBackend


def _trainer(*overrides: str) -> TrainerBackend:
    """A trainer rank holding the algo settings the driver ships (`rl/groups.py`: to_dict(cfg.algo)); `_loss`
    reads nothing else, so no model or process group is needed."""
    trainer = TrainerBackend.__new__(TrainerBackend)
    trainer.algo = to_dict(load_config(None, list(overrides)).algo)
    return trainer


def _micro_batch(seq_ratio: float, advantages: list[float], lengths: list[int]):
    """(mb, lp, old_lp): rows of `lengths` loss tokens whose sequence ratio s_i = π_θ/π_θold is `seq_ratio`."""
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    lp = torch.full((len(lengths), width), -1.0, dtype=torch.float64).requires_grad_(True)
    old = (lp.detach() - math.log(seq_ratio)) * mask
    mb = {"loss_mask": mask, "advantage": torch.tensor(advantages, dtype=torch.float64), "rollout_logprobs": old}
    return mb, lp, old


def test_trainer_gives_gspo_its_own_clip_range_under_the_dapo_preset():
    trainer = _trainer("algo.preset=dapo", "algo.policy_loss=gspo")
    assert trainer.algo["clip_high"] == 0.28  # the preset's PPO range is still in the settings...
    mb, lp, old = _micro_batch(1.01, [1.0, 1.0], [3, 3])  # s_i = 1.01: inside 1 + 0.28, outside 1 + 4e-4
    loss, metrics = trainer._loss(mb, lp, torch.zeros_like(lp), old, None, 6.0, 2.0)
    assert metrics["clip_frac_high"] == 1.0  # ...but GSPO clips at 1 + 4e-4
    loss.backward()
    assert torch.count_nonzero(lp.grad) == 0  # a clipped sequence with Â > 0 gives no gradient


def test_gspo_clip_override_reaches_the_loss():
    trainer = _trainer("algo.preset=dapo", "algo.policy_loss=gspo", "algo.policy_loss_args.clip_high=0.28")
    mb, lp, old = _micro_batch(1.01, [1.0, 1.0], [3, 3])
    _, metrics = trainer._loss(mb, lp, torch.zeros_like(lp), old, None, 6.0, 2.0)
    assert metrics["clip_frac_high"] == 0.0


def test_gspo_aggregates_per_sequence_even_when_the_preset_says_token_mean():
    trainer = _trainer("algo.preset=dapo", "algo.policy_loss=gspo")
    assert trainer.algo["loss_agg_mode"] == "token-mean"
    mb, lp, old = _micro_batch(1.0, [1.0, 3.0], [1, 3])  # s_i = 1: per-token loss -Â_i
    loss, _ = trainer._loss(mb, lp, torch.zeros_like(lp), old, None, 4.0, 2.0)
    assert loss.item() == pytest.approx((-1.0 + -3.0) / 2)  # seq-mean-token-mean; token-mean would be -10/4


def test_ppo_clip_under_the_presets_is_unchanged():
    for preset, high in (("grpo", 0.2), ("dapo", 0.28), ("dupo", 0.28)):
        trainer = _trainer(f"algo.preset={preset}")
        assert algos.piece_kwargs("policy_loss", "ppo_clip", trainer.algo) == {
            "clip_low": 0.2, "clip_high": high, "dual_clip": None}
        mb, lp, old = _micro_batch(1.25, [1.0], [2])  # r = 1.25: clipped under 0.2, not under 0.28
        _, metrics = trainer._loss(mb, lp, torch.zeros_like(lp), old, None, 2.0, 1.0)
        assert metrics["clip_frac_high"] == (1.0 if high == 0.2 else 0.0), preset


def test_k3_with_a_wild_token_stays_bounded():
    wild = torch.tensor([-30.0, 0.0, -1000.0])  # π_θ far below, equal to, far above π_ref
    ref = torch.tensor([0.0, 0.0, 0.0])
    k3 = algos.kl_penalty(wild, ref, "k3")
    assert torch.isfinite(k3).all() and k3.max().item() <= 10.0
    assert torch.equal(k3, algos.kl_penalty(wild, ref, "low_var_kl"))


@pytest.mark.parametrize("overrides, fragments", [
    (["algo.policy_loss=gspo", "algo.policy_loss_args.clip_lo=0.1"],
     ["'algo.policy_loss_args.clip_lo'", "policy loss 'gspo'", "clip_low, clip_high"]),
    (["algo.policy_loss_args.eps=0.1"], ["'algo.policy_loss_args.eps'", "policy loss 'ppo_clip'", "dual_clip"]),
    (["algo.policy_loss=gspo", "algo.policy_loss_args.clip_low=1.5"],
     ["'algo.policy_loss_args.clip_low'", "'gspo'", "< 1", "1.5"]),
    (["algo.policy_loss=gspo", "algo.policy_loss_args.clip_high=wide"], ["'algo.policy_loss_args.clip_high'", "float"]),
    (["algo.policy_loss=gspo", "algo.clip_high=0.3"],
     ["'algo.clip_high'", "'gspo'", "algo.policy_loss_args.clip_high"]),
    (["algo.dual_clip=0.5"], ["'algo.dual_clip'", "'ppo_clip'", "> 1"]),
    (["algo.adv_estimator=rloo", "algo.adv_estimator_args.eps=0.1"], ["'algo.adv_estimator_args.eps'", "'rloo'"]),
    (["algo.adv_estimator=rloo", "algo.norm_adv_by_std=false"], ["'algo.norm_adv_by_std'", "'rloo'"]),
    (["algo.kl_estimator_args.beta=1"], ["'algo.kl_estimator_args.beta'", "KL estimator 'low_var_kl'"]),
    (["algo.sampler=dupo", "algo.sampler_args.tol=0.1"], ["'algo.sampler_args.tol'", "group sampler 'dupo'"]),
    (["algo.policy_loss_args=3"], ["'algo.policy_loss_args'"]),
])
def test_bad_piece_parameters_fail_at_load_naming_key_and_piece(overrides, fragments):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_piece_parameters_from_the_command_line_are_read_as_numbers():
    cfg = load_config(None, ["algo.policy_loss=gspo", "algo.policy_loss_args.clip_low=1e-4"])  # YAML 1.1: a str
    assert algos.piece_kwargs("policy_loss", "gspo", to_dict(cfg.algo)) == {"clip_low": 1e-4, "clip_high": 4e-4}


def test_samplers_say_whether_they_regenerate():
    assert algos.sampler_regenerates("dapo") is True
    assert algos.sampler_regenerates("keep") is False and algos.sampler_regenerates("dupo") is False
    with pytest.raises(KeyError, match="keep"):
        algos.sampler_regenerates("nope")


def test_a_user_loss_with_a_new_hyper_parameter_needs_no_trainer_or_config_change():
    @algos.POLICY_LOSSES.register("test_scaled_pg", params={"scale": algos.Param(1.0, gt=0)})
    def scaled_pg(logprobs, old_logprobs, advantages, loss_mask, scale=1.0):
        per_token = -scale * advantages.unsqueeze(-1) * logprobs * loss_mask
        return per_token, {"scale": scale}

    try:
        trainer = _trainer("algo.policy_loss=test_scaled_pg", "algo.policy_loss_args.scale=2.5")
        mb, lp, old = _micro_batch(1.0, [1.0], [2])
        _, metrics = trainer._loss(mb, lp, torch.zeros_like(lp), old, None, 2.0, 1.0)
        assert metrics["scale"] == 2.5
        with pytest.raises(ConfigError, match="'algo.policy_loss_args.scale'.*'test_scaled_pg'.*> 0"):
            load_config(None, ["algo.policy_loss=test_scaled_pg", "algo.policy_loss_args.scale=0"])
    finally:
        algos.POLICY_LOSSES._entries.pop("test_scaled_pg", None)
