"""Engines: the same result format from vLLM and HF; their logprobs match the trainer's
recomputation on the same weights, before and after an in-place weight update."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl.trainer.logprobs import reference_token_logprobs as token_logprobs
from rollout.engines import Generation, SamplingParams, encode_bucket
from rollout.engines.hf_engine import HFEngine

PROMPTS = [[5, 6, 7, 8, 9], [100, 20, 3], [42] * 12]


def trainer_logprobs(model, prompt, gen: Generation) -> torch.Tensor:
    ids = torch.tensor([prompt + gen.token_ids])
    lp, _ = token_logprobs(model, ids, torch.ones_like(ids))
    return lp[0, len(prompt) - 1:]


def perturbed_state(model_path: str, seed: int) -> dict:
    """The model's state with noise added to every parameter (tied ones stay tied)."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


def check_engine(run, engine, model_path: str):
    sp = SamplingParams(max_tokens=12, temperature=1.0, seed=3)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    # the model's own weights first: the engine may be a session-wide one that earlier tests updated
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for version, state in ((0, base), (7, perturbed_state(model_path, 1))):
        run(engine.update_weights([encode_bucket(state.items())], version))
        model.load_state_dict(state, strict=False)
        assert engine.policy_version == version
        async def all_prompts():
            return await asyncio.gather(*(engine.generate(p, sp) for p in PROMPTS))

        gens = run(all_prompts())
        diffs = []
        for p, gen in zip(PROMPTS, gens):
            assert isinstance(gen, Generation) and gen.finish_reason in ("stop", "length")
            assert len(gen.token_ids) == len(gen.logprobs) >= 1
            with torch.no_grad():
                ref = trainer_logprobs(model, p, gen)
            diffs.append((ref - torch.tensor(gen.logprobs)).abs())
        mad = torch.cat(diffs).mean().item()
        assert mad < 2e-2, f"engine vs trainer logprob mean abs diff {mad} (version {version})"
    return gens


@pytest.mark.slow
def test_vllm_logprobs_match_trainer(vllm_engine, tiny_model, loop_thread):
    gens = check_engine(loop_thread.run, vllm_engine, tiny_model)
    assert all(g.policy_version == 7 for g in gens)


@pytest.mark.slow
def test_hf_logprobs_match_trainer(tiny_model, loop_thread):
    engine = HFEngine(tiny_model)
    gens = check_engine(loop_thread.run, engine, tiny_model)
    assert all(g.policy_version == 7 for g in gens)


@pytest.mark.slow
def test_weight_update_changes_outputs(vllm_engine, tiny_model, loop_thread):
    """Greedy outputs follow the weights: a different state gives different logprobs, and
    loading the first state again restores the first outputs exactly."""
    run = loop_thread.run
    greedy = SamplingParams(max_tokens=8, temperature=0.0)
    a, b = perturbed_state(tiny_model, 11), perturbed_state(tiny_model, 12)
    run(vllm_engine.update_weights([encode_bucket(a.items())], 20))
    out_a = run(vllm_engine.generate(PROMPTS[0], greedy))
    run(vllm_engine.update_weights([encode_bucket(b.items())], 21))
    out_b = run(vllm_engine.generate(PROMPTS[0], greedy))
    run(vllm_engine.update_weights([encode_bucket(a.items())], 22))
    out_a2 = run(vllm_engine.generate(PROMPTS[0], greedy))
    assert out_a.logprobs != out_b.logprobs
    assert out_a.token_ids == out_a2.token_ids
    assert out_a.logprobs == pytest.approx(out_a2.logprobs, abs=1e-5)


@pytest.mark.slow
def test_seeded_requests_survive_chunked_prefill(vllm_engine, loop_thread):
    """Many seeded requests with long prompts would need chunked prefills, whose discarded samples make vLLM's
    worker rewind a request's generator; a CPU generator cannot ("CPU Generator does not use offset") and the
    engine died. On CPU chunked prefill is off, so every seeded request finishes."""
    prompts = [[(7 * i + j) % 400 + 20 for j in range(120)] for i in range(64)]

    async def many():
        return await asyncio.gather(*(vllm_engine.generate(p, SamplingParams(max_tokens=4, seed=1000 + i))
                                      for i, p in enumerate(prompts)))

    gens = loop_thread.run(many())
    assert len(gens) == 64 and all(len(g.token_ids) >= 1 for g in gens)


@pytest.mark.slow
def test_seeded_request_samples_the_same_whatever_shares_its_batches(vllm_engine, loop_thread):
    """A request's tokens depend on its seed only: the same 24 seeded requests, once alone in order and once in
    reverse order among 40 others (so they prefill in other steps beside other requests), sample the same
    tokens. launch/evaluate.py re-runs a run's rollouts this way; before, on CPU, the engine's one shared
    stream made them depend on the order requests arrived in."""
    prompts = [[(11 * i + j) % 450 + 20 for j in range(100 + 7 * i)] for i in range(24)]
    sp = lambda i: SamplingParams(max_tokens=16, temperature=1.0, seed=5000 + i)  # noqa: E731

    async def alone():
        return await asyncio.gather(*(vllm_engine.generate(p, sp(i)) for i, p in enumerate(prompts)))

    async def crowded():
        others = [vllm_engine.generate([(3 * k + j) % 300 + 30 for j in range(150)], sp(100 + k)) for k in range(40)]
        mine = [vllm_engine.generate(p, sp(i)) for i, p in reversed(list(enumerate(prompts)))]
        return (await asyncio.gather(*(mine + others)))[:len(prompts)][::-1]

    first, second = loop_thread.run(alone()), loop_thread.run(crowded())
    assert [g.token_ids for g in first] == [g.token_ids for g in second]
    assert len({tuple(g.token_ids) for g in first}) > 20  # temperature 1: the seeds really differ


def test_an_hf_request_waiting_for_a_busy_engine_times_out_naming_it(tiny_model):
    """The HF engine serves one generation at a time; a request's bound covers its wait for the engine, and
    the error names the engine and the request (it waited forever behind a generation that never ended)."""
    engine = HFEngine(tiny_model, request_timeout_s=0.5)

    async def main():
        async with engine._lock:  # a generation that never ends
            await engine.generate([1, 2, 3], SamplingParams(max_tokens=2), request_id="r-7")

    with pytest.raises(TimeoutError, match=r"HF engine .*: request r-7 not done within 0.5s"):
        asyncio.run(asyncio.wait_for(main(), 20))
