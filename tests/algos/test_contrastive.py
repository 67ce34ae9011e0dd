"""The improved InfoNCE of SEEDS 11.4 (acceptance item 40) and slerp merging."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algos.contrastive import improved_infonce


def unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


def test_single_row_matches_the_formula():
    q, dp = unit([1.0, 0.0, 0.0]), unit([0.8, 0.6, 0.0])
    dn = unit([0.0, 1.0, 0.0], [0.6, 0.0, 0.8]).unsqueeze(0)
    loss, _ = improved_infonce(q, dp, dn, temperature=0.5)
    s_pos, s_neg = 0.8, [0.0, 0.6]
    want = -math.log(math.exp(s_pos / 0.5) / (math.exp(s_pos / 0.5) + sum(math.exp(s / 0.5) for s in s_neg)))
    assert float(loss) == pytest.approx(want, rel=1e-9)


def test_in_batch_terms_match_the_formula():
    torch.manual_seed(0)
    q, dp = (torch.nn.functional.normalize(torch.randn(3, 5, dtype=torch.float64), dim=-1) for _ in range(2))
    tau = 0.7
    loss, _ = improved_infonce(q, dp, None, temperature=tau, margin=None)
    want = 0.0
    for i in range(3):
        z = math.exp(float(q[i] @ dp[i]) / tau)
        for j in range(3):
            if j != i:
                z += sum(math.exp(float(a @ b) / tau) for a, b in ((q[i], q[j]), (dp[i], dp[j]), (q[i], dp[j])))
        want -= math.log(math.exp(float(q[i] @ dp[i]) / tau) / z) / 3
    assert float(loss) == pytest.approx(want, rel=1e-9)


def test_masked_negatives_contribute_zero():
    """A negative identical to the positive (same id) or with s > s+ + 0.1 adds nothing to Z (item 40)."""
    q, dp = unit([1.0, 0.0, 0.0]), unit([0.6, 0.8, 0.0])  # s+ = 0.6
    plain = unit([0.0, 0.0, 1.0])  # s = 0
    too_close = unit([0.9, 0.0, math.sqrt(1 - 0.81)])  # s = 0.9 > 0.7
    alone, _ = improved_infonce(q, dp, plain.unsqueeze(0), temperature=0.1)
    with_masked, m = improved_infonce(q, dp, torch.stack([plain[0], too_close[0], dp[0]]).unsqueeze(0),
                                      temperature=0.1, pos_ids=torch.tensor([7]), neg_ids=torch.tensor([[1, 2, 7]]))
    assert float(with_masked) == pytest.approx(float(alone), rel=1e-12)
    assert m["masked_hard"] == pytest.approx(2 / 3)
    # just under the margin it counts
    kept = unit([0.69, 0.0, math.sqrt(1 - 0.69 ** 2)])
    counted, _ = improved_infonce(q, dp, torch.stack([plain[0], kept[0]]).unsqueeze(0), temperature=0.1)
    assert float(counted) > float(alone) + 1e-3


def test_same_gold_page_in_batch_is_masked_and_padding_is_ignored():
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    dp = torch.nn.functional.normalize(torch.randn(1, 4, dtype=torch.float64), dim=-1).repeat(2, 1)
    loss, _ = improved_infonce(q, dp, None, temperature=0.2, pos_ids=torch.tensor([3, 3]))
    assert float(loss) == pytest.approx(0.0, abs=1e-12)  # everything else in the batch asks for the same page
    dn = torch.nn.functional.normalize(torch.randn(2, 1, 4, dtype=torch.float64), dim=-1)
    padded, _ = improved_infonce(q, dp, dn, temperature=0.2, pos_ids=torch.tensor([3, 3]),
                                 neg_ids=torch.tensor([[5], [5]]), neg_valid=torch.tensor([[False], [False]]))
    assert float(padded) == pytest.approx(0.0, abs=1e-12)


def test_gradient_pulls_the_positive_closer():
    torch.manual_seed(2)
    q = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    d = torch.randn(4, 8, dtype=torch.float64)
    first = None
    for _ in range(20):
        loss, m = improved_infonce(torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(d, dim=-1),
                                   None, temperature=0.1)
        first = m["s_pos"] if first is None else first
        q.grad = None
        loss.backward()
        with torch.no_grad():
            q -= 0.5 * q.grad
    assert m["s_pos"] > first + 0.1


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        improved_infonce(unit([1.0, 0.0]), unit([1.0, 0.0]), None, temperature=0.0)


def test_slerp_keeps_norm_on_the_arc_and_merges_states():
    from rl.embed_train import slerp, slerp_merge

    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)  # lerp would give 0.5, 0.5
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, a * 2, 0.5), a * 1.5)  # parallel: lerp
    merged = slerp_merge([{"w": a, "n": torch.tensor([3])}, {"w": b, "n": torch.tensor([3])}], 0.5)
    assert torch.allclose(merged["w"], mid) and merged["n"].item() == 3
    with pytest.raises(ValueError, match="different parameter names"):
        slerp_merge([{"w": a}, {"v": a}], 0.5)
