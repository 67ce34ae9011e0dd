"""The trainer's logprob kernels (rl/trainer/logprobs.py): chunked = reference, gradients included, and a
peak memory that a chunk bounds, not the vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rl.trainer.logprobs import (chunk_rows_for, grid_logprobs, install_logprob_head, logprob_memory_bytes,
                                 reference_token_logprobs, selective_logprobs)


def _reference(h, w, b, t, temperature):
    z = (h @ w.T + b) / temperature
    logp = z.log_softmax(-1).gather(-1, t[:, None]).squeeze(-1)
    p = z.softmax(-1)
    return logp, torch.logsumexp(z, -1) - (p * z).sum(-1)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_selective_logprobs_equal_the_reference_values_and_gradients(entropy_grad):
    g = torch.Generator().manual_seed(0)
    n, hdim, vocab = 37, 16, 301
    h = torch.randn(n, hdim, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hdim, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, vocab, (n,), generator=g)
    c1, c2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    # a chunk of 5 rows: several chunks and a ragged last one
    lp, ent = selective_logprobs(h, w, t, bias=b, temperature=0.7, with_entropy=True, entropy_grad=entropy_grad,
                                 chunk_bytes=5 * vocab * 4 * 3)
    ref_lp, ref_ent = _reference(h, w, b, t, 0.7)
    assert torch.allclose(lp, ref_lp, atol=1e-6) and torch.allclose(ent, ref_ent, atol=1e-6)
    loss = (c1 * lp).sum() + ((c2 * ent).sum() if entropy_grad else 0.0)
    grads = torch.autograd.grad(loss, (h, w, b))
    ref_loss = (c1 * ref_lp).sum() + ((c2 * ref_ent).sum() if entropy_grad else 0.0)
    ref_grads = torch.autograd.grad(ref_loss, (h, w, b))
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    assert not ent.requires_grad or entropy_grad


def _tiny_lm(vocab=97):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True)
    return Qwen3ForCausalLM(cfg).double()


def test_grid_logprobs_of_a_model_equal_the_full_log_softmax_where_asked():
    model = _tiny_lm()
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    attn[2, 8:] = 0
    want = torch.zeros(3, 10, dtype=torch.bool)
    want[0, 4:] = want[1, 2:7] = want[2, 5:7] = True
    ref, ref_ent = reference_token_logprobs(model, ids, attn, temperature=0.9, with_entropy=True)
    assert install_logprob_head(model)
    lp, ent = grid_logprobs(model, ids, want, attention_mask=attn, temperature=0.9, with_entropy=True,
                            chunk_bytes=4 * 97 * 12)
    assert torch.allclose(lp[want], ref[want], atol=1e-6) and torch.allclose(ent[want], ref_ent[want], atol=1e-6)
    assert (lp[~want] == 0).all()
    # the layer still gives plain logits outside a request (generation, the reference path)
    assert model(input_ids=ids).logits.shape == (3, 11, 97)


def _peak_rss_mib(vocab: int, tokens: int, chunk_mib: int) -> dict:
    code = f"""
import json, resource, torch
from rl.trainer.logprobs import selective_logprobs
torch.set_num_threads(1)
h = torch.randn({tokens}, 32, requires_grad=True); w = torch.randn({vocab}, 32, requires_grad=True)
t = torch.randint(0, {vocab}, ({tokens},))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lp, _ = selective_logprobs(h, w, t, with_entropy=True, chunk_bytes={chunk_mib} << 20)
lp.sum().backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"peak_mib": (after - before) / 1024, "weight_mib": w.numel() * 4 / 2**20}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_is_bounded_by_the_chunk_not_by_vocabulary_times_tokens():
    """Measured (ru_maxrss of a fresh process): 1,024 tokens, 131,072-row vocabulary. The full log-softmax
    would hold 1,024 x 131,072 x 4 B = 512 MiB per copy; the kernel stays within its chunk (16 MiB here) plus
    the head's weight and its gradient (and their fp32 accumulator)."""
    m = _peak_rss_mib(vocab=131_072, tokens=1024, chunk_mib=16)
    bound = 3 * m["weight_mib"] + 2 * 16 + 32
    assert m["peak_mib"] < bound, m
    assert m["peak_mib"] < 512 / 4, m


def test_memory_projection_of_the_7b_config():
    """Per micro-batch at the 7B config (152,064-row vocabulary, 32k-token budget, hidden 3,584, bf16): the
    full log-softmax needs tens of GiB; the chunked kernel needs the chunk plus the selected hidden states."""
    full = logprob_memory_bytes(vocab=152_064, tokens=32_768, hidden=3584, chunked=False)
    chunked = logprob_memory_bytes(vocab=152_064, tokens=32_768, hidden=3584, chunked=True, chunk_bytes=64 << 20)
    assert full > 50 * 2**30
    assert chunked < 1 * 2**30
    assert chunk_rows_for(64 << 20, 152_064) >= 32
