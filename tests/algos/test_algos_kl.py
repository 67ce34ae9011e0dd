"""KL estimators and entropy (SEEDS 1.1; checklist item 5), pinned to verl's `kl_penalty`."""

import math

import pytest
import torch

from rl.algos.kl import KL_ESTIMATORS, entropy_from_logits, kl_penalty

KINDS = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "kl+", "k1+", "abs+", "low_var_kl+", "k3+")


def verl_kl_penalty_forward(logprob, ref_logprob, kl_penalty):
    """verl/trainer/ppo/core_algos.py `kl_penalty_forward` (volcengine/verl b178a3c, Jan 2026), copied as is."""
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    if kl_penalty == "abs":
        return (logprob - ref_logprob).abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    if kl_penalty in ("low_var_kl", "k3"):
        kl = ref_logprob - logprob
        kl = torch.clamp(kl, min=-20, max=20)
        ratio = torch.exp(kl)
        kld = (ratio - kl - 1).contiguous()
        return torch.clamp(kld, min=-10, max=10)
    raise NotImplementedError


def verl_kl_penalty(logprob, ref_logprob, kl_penalty):
    """verl `kl_penalty`: a name ending in "+" keeps the base estimator's value with k2's gradient (straight
    through). verl passes the "+" name itself to `kl_penalty_forward`, which raises NotImplementedError for it; its
    docs (docs/algo/grpo.md, `kl_loss_type`) say "k3+" is k3's value with k2's gradient, so the base name is used."""
    forward_score = verl_kl_penalty_forward(logprob, ref_logprob, kl_penalty.removesuffix("+"))
    if not kl_penalty.endswith("+") or kl_penalty in ("mse", "k2"):
        return forward_score
    backward_score = 0.5 * (logprob - ref_logprob).square()
    return backward_score - backward_score.detach() + forward_score.detach()


def test_registered_kinds():
    assert set(KL_ESTIMATORS.names()) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_value_and_gradient_match_verl(kind):
    gen = torch.Generator().manual_seed(11)
    logprobs = -3 * torch.rand(4, 7, generator=gen, dtype=torch.float64)
    ref = -3 * torch.rand(4, 7, generator=gen, dtype=torch.float64)
    logprobs[0, :3] = torch.tensor([-40.0, 0.0, -1e-9])  # wild tokens (both clamps) and a near-equal one
    ref[0, :3] = torch.tensor([0.0, -40.0, 0.0])
    ours_lp, verl_lp = logprobs.clone().requires_grad_(True), logprobs.clone().requires_grad_(True)
    ours, expected = kl_penalty(ours_lp, ref, kind), verl_kl_penalty(verl_lp, ref, kind)
    assert torch.allclose(ours, expected, rtol=1e-9, atol=1e-12)
    weights = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    (ours * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(ours_lp.grad, verl_lp.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_when_policy_equals_reference(kind):
    ref = -torch.rand(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logprobs = ref.clone().requires_grad_(True)
    kl = kl_penalty(logprobs, ref, kind)
    assert torch.equal(kl, torch.zeros_like(kl))
    kl.sum().backward()
    expected_grad = torch.ones_like(ref) if kind in ("k1", "kl") else torch.zeros_like(ref)  # d(lp - ref)/dlp = 1
    assert torch.equal(logprobs.grad, expected_grad)


def test_values():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    d = lp - ref  # [0.5, -1.0]
    assert torch.allclose(kl_penalty(lp, ref, "k1"), d)
    assert torch.allclose(kl_penalty(lp, ref, "k2"), 0.5 * d**2)
    assert torch.allclose(kl_penalty(lp, ref, "abs"), d.abs())
    k3 = torch.exp(-d) - 1 + d  # SEEDS 1.1: π_ref/π_θ - log(π_ref/π_θ) - 1
    assert torch.allclose(kl_penalty(lp, ref, "k3"), k3)
    assert torch.all(kl_penalty(lp, ref, "k3") > 0)
    for kind in ("k3", "low_var_kl", "k3+"):  # verl's k3 is the clamped low-variance estimator
        assert kl_penalty(torch.tensor([-30.0]), torch.tensor([0.0]), kind).item() == 10.0
    with pytest.raises(KeyError):
        kl_penalty(lp, ref, "k4")
    with pytest.raises(ValueError):
        kl_penalty(lp, ref[:1], "k1")


def test_plus_variants_take_the_k2_gradient():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    kl_penalty(lp, ref, "k3+").sum().backward()
    assert torch.allclose(lp.grad, (lp - ref).detach())  # d/dlp ½ (lp - ref)²


def test_entropy_from_logits():
    assert entropy_from_logits(torch.zeros(2, 8)).allclose(torch.full((2,), math.log(8)))
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    p = torch.softmax(logits, -1)
    assert entropy_from_logits(logits).allclose(-(p * p.log()).sum(-1))
    big = torch.tensor([[1000.0, 1000.0, -1000.0]])  # stable for huge logits
    assert entropy_from_logits(big).item() == pytest.approx(math.log(2), abs=1e-6)
    masked = torch.tensor([[0.0, 0.0, float("-inf")]], requires_grad=True)  # -inf vocabulary entries
    h = entropy_from_logits(masked)
    h.sum().backward()
    assert h.item() == pytest.approx(math.log(2)) and torch.isfinite(masked.grad).all()
