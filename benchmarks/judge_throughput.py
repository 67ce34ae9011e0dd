"""Judgements/s through the RewardGroup with the judge served on the project's vLLM engine: all of a step's
requests at once against one request at a time, and the cache hit rate on a step with repeated answers.

RewardGroup: one Ray actor of `reward.worker.RewardWorker` (`rl.cluster.ActorGroup`, as the controller makes it)
with rewards={"judge": {"kind": "gaia"}} and judge={"backend": "engine", "engine": "vllm", ...}: the judge model
runs inside the actor on `rollout.engines.vllm_engine.VLLMEngine` (CPU build here: fp32, enforce_eager,
gpu_memory_utilization 0.3, 2 GiB KV cache). Judge model, `--judge`:
  scripted - (default) a tiny Qwen3 on the real Qwen3 tokenizer (`rl.models.build_tiny_model(tokenizer="qwen3")`)
             with its blocks zeroed and an output layer that makes greedy decoding say "Correct"
             (tests/reward/scripted_judge.py): replies parse, as a real judge's do, so verdicts are cached;
             a GAIA verdict is 2 generated tokens, as with a real judge;
  random   - the random-init tiny Qwen3 itself: every reply is garbage of `--max-tokens` tokens and falls back to
             0 (max_retries 0, so each judgement is one request); nothing is cached.
Workload: a step of 16 tasks x 8 samples (--quick: 8 x 8), GAIA judge prompt (about 145 tokens on the Qwen3
template), every answer distinct. batched: one `score` call with the whole step (the judge sends every request
at once; vLLM's continuous batching batches them). sequential: one `score` call per trajectory, in turn (one
request in the engine at a time), on another step of fresh questions. cache: a step where each task's samples
give one of 3 answers (identical items of a batch are judged once), then the same step again (every verdict
cached; a fallback never is, so the random judge shows 0 hits but still sends one request per distinct item).
Timed after a warm-up batch; the engine start is not timed.

    python benchmarks/judge_throughput.py [--quick] [--judge scripted|random]
    last line: batched_vs_sequential=<ratio>
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "reward"))

import pyarrow as pa  # noqa: E402


def step(tasks: int, samples: int, tag: str, answers_per_task: int | None = None) -> pa.RecordBatch:
    """One step's judge columns: task g, sample s; answers distinct, or one of `answers_per_task` per task."""
    rows = [(g, s) for g in range(tasks) for s in range(samples)]
    choice = (lambda g, s: s) if answers_per_task is None else (lambda g, s: s % answers_per_task)
    return pa.RecordBatch.from_pydict({
        "question": pa.array([f"[{tag}] Task {g}: which city hosted the event described in report {g}, and in "
                              f"which year did it first take place?" for g, _ in rows], pa.string()),
        "answer_text": pa.array([f"City {g}-{choice(g, s)}, first held in {1900 + choice(g, s)}" for g, s in rows],
                                pa.string()),
        "gold_answer": pa.array([f"City {g}-0, first held in 1900" for g, _ in rows], pa.string()),
    })


def timed_score(group, batch: pa.RecordBatch) -> float:
    t0 = time.perf_counter()
    group.call_split("score", [batch])
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="8 tasks x 8 samples (default 16 x 8)")
    p.add_argument("--judge", choices=["scripted", "random"], default="scripted")
    p.add_argument("--max-tokens", type=int, default=16, help="judge reply limit (the random judge uses all)")
    args = p.parse_args()
    tasks, samples = (8, 8) if args.quick else (16, 8)
    n = tasks * samples

    from rl.cluster import ActorGroup, connect
    from rl.models import build_tiny_model
    from reward.worker import RewardWorker

    if args.judge == "scripted":
        from scripted_judge import build_scripted_judge

        model = build_scripted_judge("Correct", tokenizer="qwen3")
    else:
        model = build_tiny_model(tokenizer="qwen3")
    cpus = os.cpu_count() or 2
    connect(num_cpus=cpus)
    judge = {"backend": "engine", "engine": "vllm", "model_path": str(model), "max_tokens": args.max_tokens,
             "max_retries": 0, "timeout_s": 300.0,
             "engine_kwargs": {"max_model_len": 1024, "gpu_memory_utilization": 0.3, "kv_cache_gib": 2,
                               "enforce_eager": True}}
    group = ActorGroup(RewardWorker, 1, name="reward", num_cpus=cpus, timeout_s=900,
                       kwargs_for=lambda rank: dict(rewards={"judge": {"kind": "gaia"}}, judge=judge))
    try:
        t0 = time.perf_counter()
        group.call("start")
        start_s = time.perf_counter() - t0
        timed_score(group, step(2, 4, "warm-up"))
        group.call("metrics", reset=True)

        batched_s = timed_score(group, step(tasks, samples, "batched"))
        batched = group.call("metrics", reset=True)[0]
        sequential_batch = step(tasks, samples, "sequential")
        t0 = time.perf_counter()
        for i in range(n):
            group.call_split("score", [sequential_batch.slice(i, 1)])
        sequential_s = time.perf_counter() - t0
        sequential = group.call("metrics", reset=True)[0]

        repeated = step(tasks, samples, "repeated", answers_per_task=3)
        first_s = timed_score(group, repeated)
        first = group.call("metrics", reset=True)[0]
        again_s = timed_score(group, repeated)
        again = group.call("metrics", reset=True)[0]
    finally:
        group.call("close")
        group.shutdown()

    for name, m in (("batched", batched), ("sequential", sequential)):
        assert m["judge/requests"] == n and m["judge/cache_hits"] == 0, (name, m)
    verdicts = "fall back to 0 (garbage replies)" if args.judge == "random" else "parse"
    print(f"workload: {tasks} tasks x {samples} samples = {n} judgements per step; judge {args.judge} "
          f"({Path(model).name}), GAIA prompt, max_tokens {args.max_tokens}; replies {verdicts}; "
          f"failures batched {batched['judge/failures']}/{n}; engine start {start_s:.0f} s (not timed)")
    print(f"batched     {n / batched_s:8.1f} judgements/s  ({batched_s:.2f} s, mean request latency "
          f"{batched['judge/mean_latency_s']:.2f} s)")
    print(f"sequential  {n / sequential_s:8.1f} judgements/s  ({sequential_s:.2f} s, mean request latency "
          f"{sequential['judge/mean_latency_s']:.3f} s)")
    print(f"cache, step with 3 answers per task: hit rate {first['judge/cache_hit_rate']:.3f} "
          f"({first['judge/requests']} requests for {n} judgements, {first_s:.2f} s); the same step again: hit "
          f"rate {again['judge/cache_hit_rate']:.3f} ({again['judge/requests']} requests, {again_s * 1000:.0f} ms)")
    print(f"batched_vs_sequential={sequential_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
