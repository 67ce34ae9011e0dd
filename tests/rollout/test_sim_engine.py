"""The simulated engine backend (rollout/engines/sim_engine.py), in-process: its latency model, its scripted
ReAct policy through the real agent loop (tool calls, visits of the URLs a search showed, the answer), prefix
caching, concurrency, the slot limit, time scaling, the protocol's edges and its configuration errors."""

from __future__ import annotations

import asyncio
import time

import pytest
from transformers import AutoTokenizer

from envs.base import LocalEnv, Observation
from rl.config import ConfigError, load_config
from rollout.agent import AgentConfig, run_episode
from rollout.engines import SamplingParams, encode_bucket, make_engine
from rollout.engines.sim_engine import SimParams, decode_step_seconds, request_seconds, sim_params
from rollout.formats.react import ReActFormat
from rollout.worker import agent_template

FAST = 1e-4  # real seconds per simulated second: tests run the model, not the clock


class Search:
    name = "search"
    schema = {"name": "search", "description": "web search",
              "parameters": {"type": "object", "properties": {"query": {"type": "array", "items": {"type": "string"}}}}}

    def __init__(self):
        self.queries = []

    async def call(self, arguments):
        self.queries.append(arguments["query"])
        k = "_".join(arguments["query"][0].split())
        return Observation(f"1. [Page {k}a](http://127.0.0.1:9/wiki/{k}a) a snippet\n"
                           f"2. [Page {k}b](http://127.0.0.1:9/wiki/{k}b) another")


class Visit:
    name = "visit"
    schema = {"name": "visit", "description": "visit pages",
              "parameters": {"type": "object", "properties": {"url": {"type": "array", "items": {"type": "string"}},
                                                              "goal": {"type": "string"}}}}

    def __init__(self):
        self.urls = []

    async def call(self, arguments):
        self.urls += arguments["url"]
        return Observation("The page says the river is long.")


def test_latency_model_matches_the_stated_gpu_figures():
    p = SimParams()
    assert decode_step_seconds(p, 1, 0) == pytest.approx(p.decode_step_s + p.decode_s_per_seq)
    assert 120 < 1 / decode_step_seconds(p, 1, 500) < 150  # single-stream tokens/s of an 8B model on an H100
    batch = 256 / decode_step_seconds(p, 256, 256 * 1500)
    assert 8_000 < batch < 12_000  # high-concurrency output tokens/s (published vLLM range)
    assert request_seconds(p, 1000, 10, 4, 4000) == pytest.approx(
        1000 * p.prefill_s_per_token + 10 * decode_step_seconds(p, 4, 4000))


async def _episodes(tiny_model, engine, num, env):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    template, fmt = agent_template(tok, env.tool_schemas())
    cfg = AgentConfig(max_tool_calls=20, max_context_tokens=16000, max_tokens_per_turn=512)
    return await asyncio.gather(*(run_episode(engine, env, template, {"uid": f"t{i // 4}", "group": i // 4,
                                                                      "question": f"Where is river {i // 4}?"},
                                              SamplingParams(max_tokens=512, seed=7).derive(i), cfg, fmt, sample=i % 4)
                                  for i in range(num)))


def test_scripted_episodes_through_the_agent_loop(tiny_model):
    search, visit = Search(), Visit()
    engine = make_engine("sim", tiny_model, seed=1, time_scale=FAST, tool_calls=3, tokens_per_turn=40)
    eps = asyncio.run(_episodes(tiny_model, engine, 16, LocalEnv([search, visit], timeout_s=10)))
    assert all(e.record.finish == "answer" and e.record.num_tool_calls == 3 and e.record.num_turns == 4 for e in eps)
    assert all(e.metrics["invalid_actions"] == 0 and e.record.answer_text for e in eps)
    # search, then the first result it showed, then the next one
    assert len(search.queries) == 16 and len(visit.urls) == 32
    shown = [f"http://127.0.0.1:9/wiki/{'_'.join(q[0].split())}{x}" for q in search.queries for x in "ab"]
    assert sorted(visit.urls) == sorted(shown)
    for e in eps:
        r = e.record
        assert len(r.response_ids) == len(r.rollout_logprobs) == len(r.loss_mask)
        assert all(lp <= 0 for lp in r.rollout_logprobs)
    s = engine.stats()
    assert s["requests"] == 64 and s["generated_tokens"] == sum(sum(e.record.loss_mask) for e in eps)
    # prefix caching: each turn prefills only what is new (the observation), the 4 samples of a task share the prompt
    prompt_tokens = sum(len(e.record.prompt_ids) for e in eps)
    assert s["prefill_tokens"] < prompt_tokens / 4 + sum(len(e.record.response_ids) for e in eps)


def test_same_seed_same_episode(tiny_model):
    runs = []
    for _ in range(2):
        engine = make_engine("sim", tiny_model, seed=5, time_scale=FAST, tool_calls=2, tool_calls_sigma=0.5)
        eps = asyncio.run(_episodes(tiny_model, engine, 8, LocalEnv([Search(), Visit()], timeout_s=10)))
        runs.append([(e.record.response_ids, e.record.num_tool_calls) for e in eps])
    assert runs[0] == runs[1]


def test_concurrency_slows_every_request_and_slots_queue(tiny_model):
    async def modelled_per_request(concurrent, **kw):
        engine = make_engine("sim", tiny_model, time_scale=FAST, tokens_per_turn=64, tokens_sigma=0.0, **kw)
        await asyncio.gather(*(engine.generate(list(range(10, 60 + i)), SamplingParams(max_tokens=200))
                               for i in range(concurrent)))
        s = engine.stats()
        return s["modelled_s"] / s["requests"], s

    alone, _ = asyncio.run(modelled_per_request(1))
    crowded, _ = asyncio.run(modelled_per_request(128))
    assert crowded > alone * 1.2
    _, s = asyncio.run(modelled_per_request(6, max_num_seqs=2))
    assert s["max_running"] == 2 and s["requests"] == 6


def test_time_scale_is_real_seconds_per_simulated_second(tiny_model):
    engine = make_engine("sim", tiny_model, time_scale=0.02, tokens_per_turn=100, tokens_sigma=0.0)
    t0 = time.perf_counter()
    asyncio.run(engine.generate(list(range(10, 110)), SamplingParams(max_tokens=300)))
    wall = time.perf_counter() - t0
    s = engine.stats()
    assert s["slept_s"] == pytest.approx(0.02 * s["modelled_s"])
    assert s["modelled_s"] > 0.5 and wall >= s["slept_s"] * 0.95 and s["busy_fraction"] > 0.5


def test_single_turn_callers_length_cuts_and_weights(tiny_model):
    engine = make_engine("sim", tiny_model, time_scale=FAST, tokens_per_turn=30, tokens_sigma=0.0)
    tok = AutoTokenizer.from_pretrained(tiny_model)

    async def go():
        plain = await engine.generate([5, 6, 7], SamplingParams(max_tokens=100))
        cut = await engine.generate([5, 6, 7], SamplingParams(max_tokens=8))
        exact = await engine.generate([5, 6, 7], SamplingParams(max_tokens=50, ignore_eos=True))
        await engine.update_weights([encode_bucket([])], 3)
        after = await engine.generate([5, 6, 7], SamplingParams(max_tokens=100))
        return plain, cut, exact, after

    plain, cut, exact, after = asyncio.run(go())
    assert plain.finish_reason == "stop" and plain.token_ids[-1] == tok.eos_token_id and len(plain.token_ids) == 30
    assert ReActFormat().parse(tok.decode(plain.token_ids)).kind == "none"  # filler: no action, no tag
    assert cut.finish_reason == "length" and len(cut.token_ids) == 8
    assert exact.finish_reason == "length" and len(exact.token_ids) == 50
    assert (plain.policy_version, after.policy_version) == (0, 3)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="tokens_per_tun"):
        sim_params({"tokens_per_tun": 5})
    with pytest.raises(ValueError, match="time_scale"):
        sim_params({"time_scale": 0})
    with pytest.raises(ConfigError, match="rollout.sim"):
        load_config(None, ["rollout.backend=sim", "rollout.sim.decode_step=0.1"])
    with pytest.raises(ConfigError, match="rollout.sim"):  # set but read by nothing: the backend is vllm
        load_config(None, ["rollout.sim.time_scale=0.1"])
    with pytest.raises(ConfigError, match="trainer.sim"):
        load_config(None, ["trainer.backend=sim", "trainer.sim.mfu=2"])
    cfg = load_config(None, ["rollout.backend=sim", "rollout.sim.time_scale=0.5", "trainer.backend=sim"])
    assert cfg.rollout.sim == {"time_scale": 0.5}
