"""FSDP2 trainer (one rank, gloo, in-process): micro-batching and the global loss normalisation
give the same update as one plain forward/backward over the whole batch."""

from __future__ import annotations

import socket

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM

from rl import algos
from rl.trainer.collate import padded_microbatch
from rl.trainer.fsdp import FSDPTrainer
from rl.trainer.logprobs import reference_token_logprobs as token_logprobs
from rollout.engines import Generation
from rollout.trajectory import build_batch, record_from_generation, with_columns


def make_batch():
    rng = np.random.default_rng(0)
    recs = []
    for i, (p, r) in enumerate([(3, 5), (6, 2), (4, 7), (2, 1), (5, 4)]):
        gen = Generation(rng.integers(20, 400, r).tolist(), [-3.0] * r, "length")
        recs.append(record_from_generation(f"u{i}", i // 2, i % 2, rng.integers(20, 400, p).tolist(), gen))
    b = build_batch(recs)
    return with_columns(b, {"advantage": np.array([1.0, -0.5, 0.3, -1.2, 0.8], np.float32)})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_micro_batched_step_matches_reference(tiny_model, mode):
    batch = make_batch()
    algo = {"loss_agg_mode": mode, "clip_low": 0.2, "clip_high": 0.28}
    trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-2, micro_batch_size=2, grad_clip=0.0, algo=algo)
    trainer.init_distributed("127.0.0.1", free_port())
    try:
        metrics = trainer.train_step(batch)
        got = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in trainer.model.state_dict().items()}
    finally:
        trainer.shutdown()

    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    mb = padded_microbatch(batch, np.arange(batch.num_rows))
    lp, _ = token_logprobs(ref, mb["input_ids"], mb["attention_mask"])
    per_tok, _ = algos.ppo_clip(lp, lp.detach(), mb["advantage"], mb["loss_mask"], 0.2, 0.28)
    loss = algos.aggregate(per_tok, mb["loss_mask"], mode)
    loss.backward()
    opt.step()

    ref_grad_norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()]).item()
    assert metrics["train/loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert metrics["train/tokens"] == mb["num_tokens"] == 19
    # the gradient's scale: Adam's update below is blind to it, the norm is not
    assert metrics["train/grad_norm"] == pytest.approx(ref_grad_norm, rel=1e-5)
    # Adam's first step is lr * g / (|g| + eps): float-order differences in near-zero gradients
    # move single elements by up to ~0.1% of lr, hence atol = 5e-3 * lr
    init = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    for name, p in ref.named_parameters():
        assert not torch.equal(got[name], init[name]), f"{name} did not move"
        torch.testing.assert_close(got[name], p.detach(), atol=5e-5, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_tis_reweights_by_the_rollout_mismatch(tiny_model):
    """With tis_cap set, tokens are weighted by min(pi_old / pi_rollout, cap) and the mismatch is reported."""
    batch = make_batch()  # rollout logprobs are all -3.0: far from the trainer's, so weights hit the cap
    out = {}
    for cap in (None, 1.5):
        trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-2, micro_batch_size=8, grad_clip=0.0,
                              algo={"loss_agg_mode": "token-mean", "tis_cap": cap})
        trainer.init_distributed("127.0.0.1", free_port())
        try:
            out[cap] = trainer.train_step(batch)
        finally:
            trainer.shutdown()
    assert "train/mismatch_kl" not in out[None]
    assert out[1.5]["train/mismatch_kl"] > 0 and 0 <= out[1.5]["train/tis_clip_frac"] <= 1
    # pi_old / pi_rollout = exp(-6.2 + 3) here: every token is down-weighted, so the loss changes
    assert out[1.5]["train/loss"] != pytest.approx(out[None]["train/loss"])


def test_overlong_filter_masks_truncated_samples(tiny_model):
    """With algo.overlong_filter, truncated samples (finish == max_tokens) contribute no token."""
    batch = make_batch()  # every row ended by length ...
    finish = ["max_tokens", "answer", "max_tokens", "answer", "answer"]  # ... relabel some as answered
    batch = batch.set_column(batch.schema.get_field_index("finish"), "finish", pa.array(finish))
    kept_tokens = sum(n for n, f in zip([5, 2, 7, 1, 4], finish) if f != "max_tokens")
    out = {}
    for flag in (False, True):
        trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-2, micro_batch_size=2, grad_clip=0.0,
                              algo={"loss_agg_mode": "token-mean", "overlong_filter": flag})
        trainer.init_distributed("127.0.0.1", free_port())
        try:
            out[flag] = trainer.train_step(batch)
        finally:
            trainer.shutdown()
    assert out[False]["train/tokens"] == 19 and out[True]["train/tokens"] == kept_tokens == 7


def _step_with_grads(tiny_model, batch, on_policy: bool, **kw):
    """One train_step in fp64; returns its metrics and the gradients the optimizer saw."""
    trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, micro_batch_size=2, grad_clip=0.0,
                          dtype="float64", algo={"loss_agg_mode": "token-mean", "clip_low": 0.2, "clip_high": 0.28,
                                                 "kl_coef": 0.0}, **kw)
    trainer.init_distributed("127.0.0.1", free_port())
    grads, step = {}, trainer._optimizer_step

    def capture():
        for name, p in trainer.model.named_parameters():
            if p.grad is not None:
                grads[name] = (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
        return step()

    trainer._optimizer_step = capture
    try:
        metrics = trainer.train_step(batch, on_policy=on_policy)
    finally:
        trainer.shutdown()
    return metrics, grads


def test_on_policy_shortcut_equals_the_two_pass_step(tiny_model):
    """One optimizer step per batch on rows of the current policy: pi_old = the detached current logprobs, so
    skipping the old-logprob pass changes neither the loss nor any gradient (fp64, 1e-6)."""
    batch = make_batch()
    one, g_one = _step_with_grads(tiny_model, batch, on_policy=True)
    two, g_two = _step_with_grads(tiny_model, batch, on_policy=False)
    assert one["train/old_logprob_pass"] == 0.0 and two["train/old_logprob_pass"] == 1.0
    assert one["train/loss"] == pytest.approx(two["train/loss"], abs=1e-6)
    assert one["train/grad_norm"] == pytest.approx(two["train/grad_norm"], abs=1e-6)
    assert g_one.keys() == g_two.keys() and g_one
    for name in g_one:
        torch.testing.assert_close(g_one[name], g_two[name], atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    # more than one optimizer step per batch is off-policy after the first: the pass stays
    off, _ = _step_with_grads(tiny_model, batch, on_policy=True, mini_batches=2)
    assert off["train/old_logprob_pass"] == 1.0


def test_bf16_trainer_on_cpu_measures_the_engine_gap_and_runs_tis(tiny_model):
    """The GPU run trains in bf16 against an engine's logprobs: on CPU, an FSDP2 bf16 step against fp32 engine
    logprobs (the HF model's own) reports a small, non-zero mismatch and TIS reweights by it."""
    batch = make_batch()
    ref = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    mb = padded_microbatch(batch, np.arange(batch.num_rows))
    with torch.no_grad():
        lp, _ = token_logprobs(ref, mb["input_ids"], mb["attention_mask"])
    p_len = batch.column("prompt_ids").value_lengths().to_numpy()
    r_len = batch.column("response_ids").value_lengths().to_numpy()
    engine_lp = [lp[i, p - 1:p - 1 + r].tolist() for i, (p, r) in enumerate(zip(p_len, r_len))]
    batch = batch.set_column(batch.schema.get_field_index("rollout_logprobs"), "rollout_logprobs",
                             pa.array(engine_lp, pa.list_(pa.float32())))
    trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, micro_batch_size=8, grad_clip=1.0,
                          dtype="bfloat16", algo={"loss_agg_mode": "token-mean", "tis_cap": 2.0})
    trainer.init_distributed("127.0.0.1", free_port())
    try:
        m = trainer.train_step(batch, on_policy=False)  # TIS: the old-logprob pass runs
    finally:
        trainer.shutdown()
    print(f"bf16 trainer vs fp32 engine: |dlogp| {m['train/logprob_abs_diff']:.4f}, "
          f"mismatch_kl {m['train/mismatch_kl']:.2e}, tis_clip_frac {m['train/tis_clip_frac']:.3f}")
    assert 0 < m["train/logprob_abs_diff"] < 0.1
    assert m["train/mismatch_kl"] > 0 and 0 <= m["train/tis_clip_frac"] <= 1
    assert np.isfinite(m["train/loss"]) and m["train/grad_norm"] > 0


def test_a_tied_embedding_is_sent_once_under_the_output_layers_name(tiny_model):
    """The tiny model ties its word embedding to the output layer: the engines load it through `lm_head.weight`,
    so the sync sends it there alone (not gathered, packed or moved twice); every other entry is sent as is."""
    from rollout.engines.base import unpack_bucket

    trainer = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, algo={})
    trainer.init_distributed("127.0.0.1", free_port())
    try:
        assert trainer.tied_aliases() == {"model.embed_tokens.weight"}
        sent = {n: t.clone() for b in trainer.state_buckets(1 << 16) for n, t in unpack_bucket(b)}
        full = {n: t.clone() for n, t in trainer.named_full_state()}
    finally:
        trainer.shutdown()
    assert set(full) - set(sent) == {"model.embed_tokens.weight"} and set(sent) < set(full)
    torch.testing.assert_close(sent["lm_head.weight"], full["model.embed_tokens.weight"], rtol=0, atol=0)
    for name, t in sent.items():
        torch.testing.assert_close(t, full[name], rtol=0, atol=0)
