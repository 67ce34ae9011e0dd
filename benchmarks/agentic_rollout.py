"""Agentic rollout: the per-episode async loop against a turn-synchronous batched loop, equal work.

Real vLLM engine (CPU build here) on a tiny Qwen3 with the real Qwen3 tokenizer; every episode makes
exactly `--turns` tool calls and then stops (a random-init policy cannot write tool calls, so a
benchmark format turns every model turn into a call of the latency tool; the loop, the templating,
the engine requests and the tool calls are the real ones). The tool sleeps a lognormal latency
(median `--latency-ms`, sigma 0.8: a long tail).
  async - `rollout.agent.run_episode` for every episode at once: each episode calls its tool as soon
          as its turn is generated, while the others keep the engine busy;
  sync  - all episodes generate turn t (one batch), then all their tools run, then turn t+1 (as
          Search-R1 and VRAG-RL do): the engine idles while the slowest tool of the turn runs.
Engine busy fraction = share of wall time with at least one request in the engine.

    python benchmarks/agentic_rollout.py [--quick]      last line: async_vs_sync=<ratio>

--sim: the same two loops against a simulated GPU engine (`rollout/engines/sim_engine.py`: vLLM serving an 8B
model on one H100; its scripted ReAct policy makes exactly `--turns` calls of the latency tool, then answers;
turn lengths lognormal, median `--tokens`, the same per episode and turn in both loops), then the whole RL loop
end to end (`rl.controller.train` on launch/configs/sim_cluster.yaml: simulated engines and trainer, the real
controller, agent loop, the world's search and visit through the EnvGroup with the world's page latency
`--latency-ms`, RewardGroup): sync mode against async mode (max_staleness 1 and 2, partial rollout), seconds
per step after the first. Simulated seconds pass at `--time-scale` real seconds each (tool latencies too).

    python benchmarks/agentic_rollout.py --sim [--quick]   prints async_vs_sync=, then async_e2e_vs_sync= last
                                                           (max_staleness 1; the staleness-2 ratio above it)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from envs.base import LocalEnv, Observation  # noqa: E402
from rollout.agent import AgentConfig, run_episode  # noqa: E402
from rollout.engines import SamplingParams  # noqa: E402
from rollout.formats.react import Action, ReActFormat  # noqa: E402


class EveryTurnCalls(ReActFormat):
    """Benchmark format: every model turn is a call of the latency tool."""

    def parse(self, text: str) -> Action:
        return Action("tool_call", name="lookup", arguments={})


class LatencyTool:
    name = "lookup"
    schema = {"name": "lookup", "description": "a tool with web-like latency", "parameters": {"type": "object"}}

    def __init__(self, median_s: float, seed: int):
        self.median_s, self.rng = median_s, np.random.default_rng(seed)

    async def call(self, arguments):
        await asyncio.sleep(float(self.rng.lognormal(np.log(self.median_s), 0.8)))
        return Observation("result: the page says 42.")


class BusyMeter:
    """Wraps an engine; measures the time with at least one request in flight."""

    def __init__(self, engine):
        self.engine, self.in_flight, self.busy, self.since = engine, 0, 0.0, None

    @property
    def policy_version(self):
        return self.engine.policy_version

    async def generate(self, prompt_ids, sampling, request_id=None):
        if self.in_flight == 0:
            self.since = time.perf_counter()
        self.in_flight += 1
        try:
            return await self.engine.generate(prompt_ids, sampling, request_id)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.busy += time.perf_counter() - self.since


async def async_loop(engine, template, episodes, turns, tool, sampling):
    env = LocalEnv([tool], timeout_s=60)
    cfg = AgentConfig(max_tool_calls=turns, max_tokens_per_turn=sampling.max_tokens)
    eps = await asyncio.gather(*(run_episode(engine, env, template, {"uid": f"e{i}", "question": f"Q{i}?"},
                                             sampling, cfg, EveryTurnCalls()) for i in range(episodes)))
    return sum(int(np.sum(e.record.loss_mask)) for e in eps)


async def sync_loop(engine, template, episodes, turns, tool, sampling):
    """Turn-synchronous: generate for all, then run all tools, then the next turn."""
    convs = [template.prompt_ids(template.initial_messages(f"Q{i}?")) for i in range(episodes)]
    generated = 0
    for _ in range(turns):
        gens = await asyncio.gather(*(engine.generate(c, sampling) for c in convs))
        generated += sum(len(g.token_ids) for g in gens)
        obs = await asyncio.gather(*(tool.call({}) for _ in convs))
        convs = [c + g.token_ids + template.message_ids("tool", o.text, g.token_ids)
                 for c, g, o in zip(convs, gens, obs)]
    gens = await asyncio.gather(*(engine.generate(c, sampling) for c in convs))  # the last turn, as above
    return generated + sum(len(g.token_ids) for g in gens)


async def main_async(args):
    from transformers import AutoTokenizer

    from rl.models import build_tiny_model
    from rollout.chat import ChatTemplate
    from rollout.engines.vllm_engine import VLLMEngine

    path = build_tiny_model(tokenizer="qwen3")
    template = ChatTemplate(AutoTokenizer.from_pretrained(str(path)))
    engine = VLLMEngine(str(path), max_model_len=4096, kv_cache_gib=2)
    sampling = SamplingParams(max_tokens=args.tokens, temperature=1.0, ignore_eos=True)
    results = {}
    try:
        await engine.generate([1, 2, 3], sampling)  # warm-up
        for name, fn in (("sync", sync_loop), ("async", async_loop)):
            meter = BusyMeter(engine)
            tool = LatencyTool(args.latency_ms / 1000, seed=0)
            t0 = time.perf_counter()
            tokens = await fn(meter, template, args.episodes, args.turns, tool, sampling)
            wall = time.perf_counter() - t0
            results[name] = (wall, tokens, meter.busy / wall)
    finally:
        await engine.shutdown()
    return results


async def sim_loops(args):
    """Both loops against a simulated engine; the tool's latency is scaled like the engine's time."""
    from transformers import AutoTokenizer

    from rl.models import build_tiny_model
    from rollout.engines.sim_engine import SimEngine
    from rollout.formats.react import ReActFormat
    from rollout.worker import agent_template

    path = str(build_tiny_model())
    sim = dict(time_scale=args.time_scale, tokens_per_turn=args.tokens, tool_calls=args.turns, tools=("lookup",))
    env_tool = LatencyTool(args.latency_ms / 1000 * args.time_scale, seed=0)
    template, fmt = agent_template(AutoTokenizer.from_pretrained(path), [env_tool.schema], ReActFormat())
    sampling = SamplingParams(max_tokens=4 * args.tokens, temperature=1.0, seed=11)
    results = {}
    for name in ("sync", "async"):
        engine = SimEngine(path, seed=0, **sim)
        tool = LatencyTool(args.latency_ms / 1000 * args.time_scale, seed=0)
        t0 = time.perf_counter()
        if name == "async":
            env = LocalEnv([tool], timeout_s=600)
            cfg = AgentConfig(max_tool_calls=args.turns, max_context_tokens=10**6, max_tokens_per_turn=4 * args.tokens)
            eps = await asyncio.gather(*(run_episode(engine, env, template, {"uid": f"e{i}", "question": f"Q{i}?"},
                                                     sampling.derive(i), cfg, fmt) for i in range(args.episodes)))
            tokens = sum(int(np.sum(e.record.loss_mask)) for e in eps)
        else:
            tokens = await sim_sync_loop(engine, template, fmt, args.episodes, args.turns, tool, sampling)
        wall = time.perf_counter() - t0
        results[name] = (wall / args.time_scale, tokens, engine.stats()["busy_fraction"])
    return results


async def sim_sync_loop(engine, template, fmt, episodes, turns, tool, sampling):
    """Turn-synchronous batching with the agent loop's own per-turn sampling (seeds, stops), so that the
    simulated engine draws the same turn lengths as in the async loop: equal work."""
    import dataclasses

    stop_ids = tuple(template.tok.convert_tokens_to_ids(t) for t in fmt.stop_tokens)
    convs = [template.prompt_ids(template.initial_messages(f"Q{i}?", fmt.system_prompt([tool.schema])))
             for i in range(episodes)]
    generated = 0
    for turn in range(turns + 1):  # `turns` tool calls, then the answer
        sps = [dataclasses.replace(sampling.derive(i).derive("turn", turn), stop=tuple(fmt.stop_strings),
                                   stop_token_ids=stop_ids) for i in range(episodes)]
        gens = await asyncio.gather(*(engine.generate(c, sp) for c, sp in zip(convs, sps)))
        generated += sum(len(g.token_ids) for g in gens)
        if turn == turns:
            break
        obs = await asyncio.gather(*(tool.call({}) for _ in convs))
        convs = [c + g.token_ids + template.message_ids("tool", o.text, g.token_ids)
                 for c, g, o in zip(convs, gens, obs)]
    return generated


def e2e(args) -> dict:
    """Seconds per RL step (after the first) of sync and async modes on one set of simulated actor groups."""
    import tempfile

    import ray

    from rl.cluster import wait
    from rl.config import load_config
    from rl.controller import train
    from rl.groups import RLGroups

    scale = args.time_scale
    base = [f"rollout.num_engines={args.engines}", "rollout.n=8", f"data.batch_size={args.batch}",
            f"data.num_tasks={max(64, args.batch)}", "rollout.max_inflight_groups=64",
            f"rollout.sim={{time_scale: {scale}, engines_per_actor: {args.engines}, tokens_per_turn: {args.tokens}, "
            f"tool_calls: {args.e2e_calls}, tool_calls_sigma: 0.8}}", f"trainer.sim={{gpus: {args.train_gpus}}}",
            f"env.page_latency_s={args.latency_ms / 1000 * scale}", "agent.max_tool_calls=32",
            f"run.steps={args.steps}", "run.save_trajectories=false", "run.stage_timeout_s=1800"]
    modes = {"sync": ["rollout.mode=sync"], "async_s1": ["rollout.mode=async", "rollout.max_staleness=1"],
             "async_s2": ["rollout.mode=async", "rollout.max_staleness=2"]}
    cfgs = {k: load_config(ROOT / "launch/configs/sim_cluster.yaml", base + v) for k, v in modes.items()}
    groups = RLGroups(cfgs["sync"])
    out, version = {}, 0
    try:
        for name, cfg in cfgs.items():
            drain(groups)  # what an async producer left in flight is not this mode's
            wait([a.__ray_call__.remote(lambda w: w.engine.reset_stats()) for a in groups.rollout.actors], 120,
                 "the engines' statistics reset", groups.rollout.rank_names())
            with tempfile.TemporaryDirectory() as run_dir:
                summary = train(cfg, Path(run_dir), groups=groups, start_version=version)
            version = summary["policy_version"]
            busy = wait([a.__ray_call__.remote(lambda w: w.engine.stats()["busy_fraction"])
                         for a in groups.rollout.actors], 120, "the engines' busy fractions", groups.rollout.rank_names())
            steps = [h["time/step"] / scale for h in summary["history"][1:]]
            phases = {k: float(np.mean([h[f"time/{k}"] / scale for h in summary["history"][1:]]))
                      for k in ("generate", "train", "sync")}
            out[name] = (float(np.mean(steps)), float(np.mean(busy)), phases)
    finally:
        groups.shutdown()
        ray.shutdown()
    return out


def drain(groups) -> None:
    d = groups.dispatcher
    d.pending.clear()
    deadline = time.monotonic() + 600
    while d.inflight and time.monotonic() < deadline:
        d.poll(5.0)
    if d.inflight:  # the next mode's numbers would include these
        raise TimeoutError(f"drain: {len(d.inflight)} task group(s) still in flight after 600 s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 episodes x 4 turns (--sim: fewer steps)")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32, help="generated tokens per turn (--sim: the median, 256)")
    p.add_argument("--latency-ms", type=float, default=200.0, help="median tool latency")
    p.add_argument("--sim", action="store_true", help="a simulated GPU engine, then the RL loop end to end")
    p.add_argument("--time-scale", type=float, default=0.1, help="--sim: real seconds per simulated second")
    p.add_argument("--engines", type=int, default=8, help="--sim end to end: simulated engines")
    p.add_argument("--batch", type=int, default=32, help="--sim end to end: tasks per step (x 8 samples)")
    p.add_argument("--e2e-calls", type=float, default=6.0, help="--sim end to end: median tool calls per episode")
    p.add_argument("--train-gpus", type=float, default=8.0, help="--sim end to end: GPUs of the simulated trainer")
    p.add_argument("--steps", type=int, default=6, help="--sim end to end: RL steps per mode (the first not counted)")
    args = p.parse_args()
    if args.sim:
        return main_sim(args)
    if args.quick:
        args.episodes, args.turns = 16, 4
    res = asyncio.run(main_async(args))
    print(f"{args.episodes} episodes x {args.turns} tool turns x {args.tokens} tokens, tool latency median "
          f"{args.latency_ms:.0f} ms (lognormal sigma 0.8)")
    for name, (wall, tokens, busy) in res.items():
        print(f"{name:5s}: {wall:7.2f} s  {tokens / wall:7.0f} generated tokens/s  engine busy {busy:.2f}")
    print(f"async_vs_sync={res['sync'][0] / res['async'][0]:.2f}")


def main_sim(args):
    if args.tokens == 32:
        args.tokens = 256
    if args.quick:
        args.episodes, args.steps = 32, 4
    res = asyncio.run(sim_loops(args))
    print(f"simulated engine (8B on an H100, vLLM-like continuous batching): {args.episodes} episodes x {args.turns} "
          f"tool turns, median {args.tokens} tokens per turn (lognormal sigma 0.6), tool latency median "
          f"{args.latency_ms:.0f} ms (lognormal sigma 0.8); simulated seconds")
    for name, (wall, tokens, busy) in res.items():
        print(f"{name:5s}: {wall:7.2f} s  {tokens / wall:7.0f} generated tokens/s  engine busy {busy:.2f}")
    print(f"async_vs_sync={res['sync'][0] / res['async'][0]:.2f}", flush=True)
    out = e2e(args)
    print(f"end to end: {args.engines} simulated engines, {args.batch} tasks x 8 per step, tool calls per episode "
          f"lognormal (median {args.e2e_calls:g}, sigma 0.8, at most 32), search and visit through the EnvGroup, "
          f"page latency {args.latency_ms:.0f} ms, trainer {args.train_gpus:g} GPUs; simulated seconds per step")
    for name, (step, busy, ph) in out.items():
        print(f"{name:8s}: {step:7.1f} s/step  engine busy {busy:.2f}  (generate {ph['generate']:.1f}, "
              f"train {ph['train']:.1f}, sync {ph['sync']:.1f})")
    for name in ("async_s1", "async_s2"):
        print(f"{name}_vs_sync={out['sync'][0] / out[name][0]:.2f}")
    # the default max_staleness (1): with 2, the few steps measured include the pipeline's fill (3 batches
    # admitted at the start) and may overstate the steady state
    print(f"async_e2e_vs_sync={out['sync'][0] / out['async_s1'][0]:.2f}")


if __name__ == "__main__":
    main()
