"""Packing, token budgets, rank balancing and the SFT loss mask.

Packed rows (one row, positions restarting per sequence, no padding) give the same loss and the
same gradients as padded rows under every loss aggregation; token-budget micro-batches respect the
budget; rank balancing never splits a group; the SFT step counts only loss_mask == 1 tokens.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from rl import algos
from rl.trainer.base import microbatch_logprobs
from rl.trainer.collate import packed_microbatch, padded_microbatch, row_lengths
from rl.trainer.fsdp import FSDPTrainer
from rl.trainer.packing import micro_batch_cost, plan_micro_batches
from rollout.trajectory import TrajectoryRecord, build_batch, with_columns


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multi_turn_batch(seed=0, sizes=((3, 9), (6, 2), (1, 12), (5, 1), (8, 6), (2, 4))):
    """Rows whose responses mix policy tokens (mask 1) and observation tokens (mask 0)."""
    rng = np.random.default_rng(seed)
    recs = []
    for i, (p, r) in enumerate(sizes):
        mask = (rng.random(r) < 0.6).astype(int).tolist()
        recs.append(TrajectoryRecord(uid=f"u{i}", group=i // 2, sample=i % 2, prompt_ids=rng.integers(20, 400, p).tolist(),
                                     response_ids=rng.integers(20, 400, r).tolist(), loss_mask=mask,
                                     rollout_logprobs=[-2.5 * m for m in mask]))
    adv = rng.normal(size=len(sizes)).astype(np.float32)
    return with_columns(build_batch(recs), {"advantage": adv})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and OpenMP spinning on a busy 2-core machine is 30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def test_packed_row_has_restarting_positions_and_the_padded_grid():
    batch = multi_turn_batch()
    rows = np.array([0, 2, 3])
    pad, pack = padded_microbatch(batch, rows), packed_microbatch(batch, rows)
    lengths = row_lengths(batch)[rows]
    assert pack["input_ids"].shape == (1, lengths.sum()) and "attention_mask" not in pack
    assert pack["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    assert pack["input_ids"][0].tolist() == pad["input_ids"][pad["attention_mask"].bool()].tolist()
    for key in ("loss_mask", "rollout_logprobs", "advantage", "response_start", "response_len"):
        assert torch.equal(pack[key], pad[key]), key
    assert pack["num_tokens"] == pad["num_tokens"]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("loss_name", ["ppo_clip", "gspo"])
def test_packed_and_padded_give_the_same_loss_and_gradients(model, mode, loss_name):
    batch = multi_turn_batch()
    rows = np.arange(batch.num_rows)
    results = []
    for layout in (padded_microbatch, packed_microbatch):
        model.zero_grad(set_to_none=True)
        mb = layout(batch, rows)
        lp, ent = microbatch_logprobs(model, mb, with_entropy=True)
        old = lp.detach() - 0.05 * mb["loss_mask"]  # ratios away from 1: clipping active on some tokens
        per_tok, metrics = algos.policy_loss(loss_name, lp, old, mb["advantage"], mb["loss_mask"])
        loss = algos.aggregate(per_tok, mb["loss_mask"], mode, norm_len=16)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((loss.item(), float(algos.masked_mean(ent, mb["loss_mask"])), metrics, grads))
    (loss_a, ent_a, m_a, g_a), (loss_b, ent_b, m_b, g_b) = results
    assert loss_b == pytest.approx(loss_a, abs=1e-6)
    assert ent_b == pytest.approx(ent_a, abs=1e-5)
    assert m_b == pytest.approx(m_a, abs=1e-6)
    for name, g in g_a.items():
        torch.testing.assert_close(g_b[name], g, atol=1e-5, rtol=1e-5, msg=lambda s, name=name: f"{name}: {s}")
    assert any(g.abs().sum() > 0 for g in g_a.values())


def test_attention_never_crosses_sequences_in_a_packed_row(model):
    """Changing the first sequence of a packed row leaves the second one's logprobs unchanged."""
    batch = multi_turn_batch(sizes=((4, 6), (3, 5)))
    other = multi_turn_batch(seed=7, sizes=((4, 6), (3, 5)))
    mixed = build_batch([TrajectoryRecord(**{**_record(other, 0)}), TrajectoryRecord(**_record(batch, 1))])
    with torch.no_grad():
        a, _ = microbatch_logprobs(model, packed_microbatch(batch, [0, 1]))
        b, _ = microbatch_logprobs(model, packed_microbatch(mixed, [0, 1]))
    assert not torch.allclose(a[0], b[0])
    assert torch.equal(a[1], b[1])


def _record(batch, i):
    cols = ("uid", "group", "sample", "prompt_ids", "response_ids", "loss_mask", "rollout_logprobs")
    return {c: batch.column(c)[i].as_py() for c in cols}


def test_trainer_step_packed_equals_padded(tiny_model):
    """The whole train step (old/ref logprobs, token-budget micro-batches, KL) packed vs padded."""
    batch = multi_turn_batch()
    out = {}
    for packing in (False, True):
        algo = {"loss_agg_mode": "seq-mean-token-mean", "kl_coef": 0.1, "entropy_coef": 0.01}
        t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, grad_clip=1.0, algo=algo, token_budget=24,
                        packing=packing)
        t.init_distributed("127.0.0.1", free_port())
        try:
            metrics = t.train_step(batch)
            metrics2 = t.train_step(batch)  # second step: pi_old != pi_ref, KL and clipping non-trivial
            state = {k: v.full_tensor() for k, v in t.model.state_dict().items()}
        finally:
            t.shutdown()
        out[packing] = (metrics, metrics2, state)
    for i in (0, 1):
        a, b = out[False][i], out[True][i]
        for key in a:
            if not key.startswith("time/"):
                assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), key
    for name, p in out[False][2].items():
        torch.testing.assert_close(out[True][2][name], p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("packing", [False, True])
def test_token_budget_micro_batches_respect_the_budget(packing):
    rng = np.random.default_rng(0)
    for trial in range(50):
        lengths = np.minimum(rng.lognormal(4.0, 1.0, size=rng.integers(1, 60)).astype(np.int64) + 1, 3000)
        budget = int(rng.integers(64, 1024))
        plan = plan_micro_batches(lengths, token_budget=budget, packing=packing)
        used = np.concatenate(plan)
        assert sorted(used.tolist()) == list(range(len(lengths)))  # every row exactly once
        for part in plan:
            cost = micro_batch_cost(lengths[part], packing)
            assert cost <= budget or len(part) == 1, (trial, lengths[part], budget)
    # packing fills micro-batches: never more of them than padding needs
    lengths = np.array([300, 250, 200, 250])
    assert [p.tolist() for p in plan_micro_batches(lengths, token_budget=512, packing=True)] == [[0, 2], [1, 3]]
    assert [p.tolist() for p in plan_micro_batches(lengths, token_budget=512, packing=False)] == [[0], [1, 3], [2]]


def test_without_a_budget_micro_batches_are_fixed_row_slices():
    plan = plan_micro_batches(np.array([5, 900, 3, 7, 1]), micro_batch_size=2)
    assert [p.tolist() for p in plan] == [[0, 1], [2, 3], [4]]


def test_rank_balancing_never_splits_a_group():
    rng = np.random.default_rng(0)
    for trial in range(30):
        num_groups, g_size = int(rng.integers(1, 20)), int(rng.integers(1, 9))
        group = np.repeat(rng.permutation(num_groups), g_size)
        lengths = np.minimum(rng.lognormal(5.0, 1.2, size=group.size).astype(np.int64) + 1, 8192)
        ranks = int(rng.integers(1, 5))
        parts = algos.balance_groups(lengths, group, ranks)
        assert sorted(np.concatenate(parts).tolist()) == list(range(group.size))
        owner = {}
        for r, rows in enumerate(parts):
            for g in np.unique(group[rows]):
                assert owner.setdefault(int(g), r) == r, f"group {g} split across ranks"
        loads = [int(lengths[rows].sum()) for rows in parts]
        biggest = max(int(lengths[group == g].sum()) for g in np.unique(group))
        assert max(loads) - min(loads) <= biggest


def _sft(tiny_model, batch, **kwargs):
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, grad_clip=0.0, **kwargs)
    t.init_distributed("127.0.0.1", free_port())
    try:
        return t.sft_step(batch)
    finally:
        t.shutdown()


def _replace_token(batch, row, index, token):
    recs = [TrajectoryRecord(**_record(batch, i)) for i in range(batch.num_rows)]
    ids = list(recs[row].response_ids)
    ids[index] = token
    recs[row].response_ids = ids
    return build_batch(recs)


def test_sft_step_counts_only_policy_tokens(tiny_model, model):
    rng = np.random.default_rng(3)
    masks = [[1, 1, 0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]]  # 0: observation
    batch = build_batch([TrajectoryRecord(uid=f"u{i}", group=i, sample=0, prompt_ids=rng.integers(20, 400, 3).tolist(),
                                          response_ids=rng.integers(20, 400, len(m)).tolist(), loss_mask=m,
                                          rollout_logprobs=[0.0] * len(m)) for i, m in enumerate(masks)])

    # reference: token-mean NLL over loss_mask == 1 tokens of the whole batch
    mb = padded_microbatch(batch, np.arange(batch.num_rows))
    with torch.no_grad():
        lp, _ = microbatch_logprobs(model, mb)
    want = float(-algos.masked_sum(lp, mb["loss_mask"]) / mb["loss_mask"].sum())

    base = _sft(tiny_model, batch, micro_batch_size=2)
    assert base["sft/loss"] == pytest.approx(want, abs=1e-6)
    assert base["sft/tokens"] == sum(map(sum, masks))
    packed = _sft(tiny_model, batch, token_budget=16, packing=True)
    assert packed["sft/loss"] == pytest.approx(want, abs=1e-6)
    assert packed["sft/grad_norm"] == pytest.approx(base["sft/grad_norm"], rel=1e-5)

    # an observation token is never a target: changing one changes neither the loss nor the gradient
    obs = _sft(tiny_model, _replace_token(batch, 0, -1, 77), micro_batch_size=2)
    assert obs["sft/loss"] == base["sft/loss"] and obs["sft/grad_norm"] == base["sft/grad_norm"]
    # a policy token is
    pol = _sft(tiny_model, _replace_token(batch, 2, -1, 77), micro_batch_size=2)
    assert pol["sft/loss"] != pytest.approx(base["sft/loss"], abs=1e-6)


def test_set_lr_changes_the_peak_and_keeps_the_warmup(tiny_model):
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, warmup_steps=4)
    t.init_distributed("127.0.0.1", free_port())
    try:
        batch = multi_turn_batch()
        assert t.sft_step(batch)["sft/lr"] == pytest.approx(1e-3 * 1 / 4)  # step 1 of the warm-up: 1/4 of the peak
        t.set_lr(1e-2)
        assert t.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 2 / 4)
        assert t.sft_step(batch)["sft/lr"] == pytest.approx(1e-2 * 2 / 4)
        assert t.sft_step(batch)["sft/lr"] == pytest.approx(1e-2 * 3 / 4)
    finally:
        t.shutdown()


def test_logprobs_are_aligned_with_the_response(tiny_model, model):
    batch = multi_turn_batch()
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, token_budget=20, packing=True)
    t.init_distributed("127.0.0.1", free_port())
    try:
        got = t.logprobs(batch)
    finally:
        t.shutdown()
    mb = padded_microbatch(batch, np.arange(batch.num_rows))
    with torch.no_grad():
        lp, _ = microbatch_logprobs(model, mb)
    for i, row in enumerate(got):
        start, n = int(mb["response_start"][i]), int(mb["response_len"][i])
        assert row.shape == (n,)
        np.testing.assert_allclose(row, lp[i, start:start + n].numpy(), atol=1e-5)
