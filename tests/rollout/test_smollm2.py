"""SmolLM2-135M-Instruct, a real pretrained model shipped as GGUF in a registry package (rl/pretrained.py):
the folder builds offline, both engines load it, and their logprobs agree with the trainer's recomputation
(hence with each other) on the model's own weights; the ReAct stop tag, not one token in its vocabulary, stops
generation as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl.config import LOCAL_MODELS as CONFIG_NAMES
from rl.pretrained import LOCAL_MODELS


def test_config_knows_every_local_model():
    assert set(CONFIG_NAMES) == set(LOCAL_MODELS)


@pytest.fixture(scope="module")
def smollm2():
    from rl.pretrained import build_smollm2

    return str(build_smollm2())


@pytest.mark.slow
def test_smollm2_in_both_engines(smollm2, loop_thread):
    import torch

    from rollout.agent import stop_token_ids
    from rollout.engines import SamplingParams
    from rollout.engines.hf_engine import HFEngine
    from rollout.engines.vllm_engine import VLLMEngine
    from rl.trainer.logprobs import reference_token_logprobs

    tok = AutoTokenizer.from_pretrained(smollm2)
    meta = json.loads((Path(smollm2) / "windward_model.json").read_text())
    assert meta["model"] == "smollm2-135m-instruct"
    # the grammar's closing tag is several tokens here: it becomes a stop string, never the unknown-token id
    assert stop_token_ids(tok, ("</tool_call>", "<|im_end|>")) == ((tok.convert_tokens_to_ids("<|im_end|>"),),
                                                                   ("</tool_call>",))
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    sp = SamplingParams(max_tokens=16, temperature=1.0, seed=5)

    async def make():
        return VLLMEngine(smollm2, max_model_len=512, kv_cache_gib=1)

    vllm = loop_thread.run(make(), timeout=600)
    try:
        engines = {"vllm": vllm, "hf": HFEngine(smollm2)}
        greedy = {}
        for name, engine in engines.items():
            gen = loop_thread.run(engine.generate(prompt, sp))
            ids = torch.tensor([prompt + gen.token_ids])
            with torch.no_grad():
                ref = reference_token_logprobs(model, ids, torch.ones_like(ids))[0][0, len(prompt) - 1:]
            mad = (ref - torch.tensor(gen.logprobs)).abs().mean().item()
            assert mad < 2e-2, f"{name}: engine vs trainer logprob mean abs diff {mad}"
            g = loop_thread.run(engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0)))
            greedy[name] = tok.decode(g.token_ids)
        assert greedy["vllm"] == greedy["hf"] and "Paris" in greedy["hf"], greedy  # a real model, the same answer
    finally:
        loop_thread.run(vllm.shutdown(), timeout=60)
