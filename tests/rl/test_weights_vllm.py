"""Weights straight into a running vLLM engine (rl/weights/ into rollout/engines/vllm_ext.py): a portable
stream is taken by the engine's worker process itself and loaded bucket by bucket, and buckets that split a
stacked parameter (q, k, v into qkv_proj; gate, up into gate_up_proj) load exactly as one whole state does.
The tied word embedding loads once, through the output layer, and the engine then matches the trainer.
A stream that breaks half way leaves a serving engine that the next sync repairs."""

from __future__ import annotations

import re
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl.weights import iter_buckets, make_transport
from rollout.engines import SamplingParams, decode_bucket, encode_bucket
from tests.rl.test_weights import free_port
from tests.rollout.test_engines import PROMPTS, perturbed_state, trainer_logprobs

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
SMALL = 4096  # bytes: every weight matrix of the tiny model gets a bucket of its own


def transport_for(kind: str, tmp_path, timeout_s: float = 60):
    if kind == "disk":
        return make_transport("disk", 1, folder=tmp_path / "weights", timeout_s=timeout_s)
    return make_transport(kind, 1, host="127.0.0.1", port=free_port(), timeout_s=timeout_s)


def send_in_thread(transport, version: int, buckets) -> tuple[threading.Thread, dict]:
    """Trainer rank 0's side, in a thread of this process."""
    out: dict = {}

    def run():
        try:
            out["stats"] = transport.send(version, buckets)
        except Exception as err:  # reported by the test
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_small_buckets_split_the_stacked_parameters(tiny_model):
    """The premise of the test below: q, k and v (and gate and up) of one layer arrive in different buckets."""
    state = perturbed_state(tiny_model, 31)
    where = {name: i for i, b in enumerate(iter_buckets(state.items(), SMALL)) for name, _ in decode_bucket(b)}
    layer = "model.layers.0."
    assert len({where[layer + f"self_attn.{p}_proj.weight"] for p in "qkv"}) == 3
    assert where[layer + "mlp.gate_proj.weight"] != where[layer + "mlp.up_proj.weight"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["collective", "ipc", "disk", "rpc"])
def test_vllm_loads_a_stream_bucket_by_bucket(kind, vllm_engine, tiny_model, loop_thread, tmp_path):
    run = loop_thread.run
    state, other = perturbed_state(tiny_model, 31), perturbed_state(tiny_model, 32)
    run(vllm_engine.update_weights([encode_bucket(state.items())], 1))  # the reference: one whole bucket
    want = run(vllm_engine.generate(PROMPTS[0], GREEDY))
    run(vllm_engine.update_weights([encode_bucket(other.items())], 2))
    assert run(vllm_engine.generate(PROMPTS[0], GREEDY)).logprobs != want.logprobs
    if kind == "rpc":  # not portable (e.g. the object store): one RPC per bucket
        run(vllm_engine.update_weights(list(iter_buckets(state.items(), SMALL)), 3))
    else:
        transport = transport_for(kind, tmp_path)
        try:  # twice: the second time a transport may reuse the memory of the first (ipc's slots)
            for version, weights in ((3, other), (4, state)):
                sender, out = send_in_thread(transport, version, iter_buckets(weights.items(), SMALL,
                                                                               allocate=transport.allocate))
                run(vllm_engine.update_weights(transport.stream(version, 0), version))
                sender.join(timeout=60)
                assert "error" not in out and out["stats"].buckets > 10
        finally:
            transport.close()
    got = run(vllm_engine.generate(PROMPTS[0], GREEDY))
    assert vllm_engine.policy_version == (3 if kind == "rpc" else 4)
    assert got.token_ids == want.token_ids
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-6)


@pytest.mark.slow
def test_a_stream_that_breaks_half_way_leaves_a_serving_engine(vllm_engine, tiny_model, loop_thread, tmp_path):
    run = loop_thread.run
    state = perturbed_state(tiny_model, 41)
    run(vllm_engine.update_weights([encode_bucket(state.items())], 10))
    want = run(vllm_engine.generate(PROMPTS[1], GREEDY))
    bad = list(iter_buckets(perturbed_state(tiny_model, 42).items(), SMALL))
    bad.insert(3, encode_bucket([("model.layers.0.no_such_module.weight", torch.ones(2))]))
    transport = transport_for("collective", tmp_path, timeout_s=5)
    try:
        sender, out = send_in_thread(transport, 11, bad)
        with pytest.raises(Exception, match="failed after 3 bucket\\(s\\); the engine now holds a mix"):
            run(vllm_engine.update_weights(transport.stream(11, 0), 11))
        sender.join(timeout=60)
        # nobody takes the rest: the sender's wait ends (the worker may have read ahead before it failed)
        assert re.search("sending bucket \\d+ of version 11.*timed out", str(out.get("error"))), out
    finally:
        transport.close()
    assert vllm_engine.policy_version == 10
    assert len(run(vllm_engine.generate(PROMPTS[1], GREEDY)).token_ids) >= 1  # no layer left on meta
    run(vllm_engine.update_weights(list(iter_buckets(state.items(), SMALL)), 12))  # the next full sync
    got = run(vllm_engine.generate(PROMPTS[1], GREEDY))
    assert got.token_ids == want.token_ids and got.logprobs == pytest.approx(want.logprobs, abs=1e-6)


@pytest.mark.slow
def test_the_tied_embedding_loads_through_the_output_layer(vllm_engine, tiny_model, loop_thread):
    """The tiny model ties its word embedding to the output layer. With the shared weight tripled, the engine
    must match the trainer's logprobs (both the lookup and the logits changed); an update that brings the
    embedding without `lm_head.weight` would leave the logits on the old weight, so it is an error."""
    run = loop_thread.run
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    run(vllm_engine.update_weights(list(iter_buckets(state.items(), SMALL)), 30))
    gen = run(vllm_engine.generate(PROMPTS[2], GREEDY))
    with torch.no_grad():
        ref = trainer_logprobs(model, PROMPTS[2], gen)
    assert (ref - torch.tensor(gen.logprobs)).abs().max().item() < 1e-4
    no_head = [(k, v) for k, v in state.items() if k != "lm_head.weight"]
    with pytest.raises(Exception, match="'model.embed_tokens.weight'\\] arrived without \\['lm_head.weight'\\]"):
        run(vllm_engine.update_weights([encode_bucket(no_head)], 31))
    assert vllm_engine.policy_version == 30
