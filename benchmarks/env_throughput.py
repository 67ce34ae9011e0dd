"""Env throughput: tool calls/s through the EnvGroup at 1, 4 and 16 concurrent episodes, search and visit.

A local Ray cluster runs the EnvGroup (`--servers` EnvServer actors and the world host) on the synthetic
world; the world server adds `--latency-ms` to every page (default 100 ms, like the real web). Each episode
is an async loop in the driver that issues calls back to back through the RemoteEnvClient (as an agent loop
in a RolloutWorker does) for `--seconds`: search with a random entity's name, visit of a random page. The
cache is off, so every call does the work. A waiting tool must not hold the others up: with 16 episodes
visit should reach at least 8x the calls/s of one episode.

    python benchmarks/env_throughput.py [--quick]      last line: visit_scaling_16_vs_1=<ratio>
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from envs.server import latency_summary  # noqa: E402
from envs.world import generate_world, page_url  # noqa: E402
from rl.cluster import connect  # noqa: E402
from rl.env_group import EnvGroup  # noqa: E402

CONCURRENCY = (1, 4, 16)


async def episode(env, tool: str, names: list[str], paths: list[str], base_url: str, deadline: float,
                  rng: random.Random, latencies: list[float], errors: list[str], key: str) -> int:
    calls = 0
    while time.perf_counter() < deadline:
        if tool == "search":
            args = {"query": [rng.choice(names)]}
        else:
            args = {"url": [base_url + rng.choice(paths)], "goal": "facts"}
        t0 = time.perf_counter()
        obs = await env.call(tool, args, key=key)
        latencies.append(time.perf_counter() - t0)
        calls += 1
        if obs.error:
            errors.append(obs.text[:200])
    return calls


async def measure(env, tool: str, n: int, seconds: float, names, paths, base_url, seed: int) -> dict:
    latencies, errors = [], []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    counts = await asyncio.gather(*(episode(env, tool, names, paths, base_url, deadline, random.Random(seed + i),
                                            latencies, errors, f"ep{i}") for i in range(n)))
    wall = time.perf_counter() - t0
    return {"calls": sum(counts), "wall": wall, "rate": sum(counts) / wall, "errors": len(errors),
            "first_error": errors[0] if errors else "", **latency_summary(latencies)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per measurement instead of 8")
    p.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    p.add_argument("--servers", type=int, default=4, help="EnvServer actors")
    p.add_argument("--latency-ms", type=float, default=100.0, help="added by the world server to every page")
    p.add_argument("--size", default="small", help="world size: tiny, small, large")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.seconds = 2.0
    world_cfg = {"seed": args.seed, "size": args.size, "latency_s": args.latency_ms / 1000}
    print(connect(num_cpus=max(4, args.servers)))
    t0 = time.perf_counter()
    group = EnvGroup({"search": {}, "visit": {}}, num_servers=args.servers, world=world_cfg,
                     limits={"search": {"cache": False}, "visit": {"cache": False}}, num_cpus=0.5)
    print(f"EnvGroup up in {time.perf_counter() - t0:.1f} s: {args.servers} servers, world {args.size} "
          f"(seed {args.seed}), {args.latency_ms:.0f} ms per page, cache off, {args.seconds:g} s per point")
    world = generate_world(args.seed, args.size)
    names = [e.name for e in world.entities.values()]
    paths = [page_url(eid) for eid in world.entities]
    env = group.client()
    results: dict[tuple[str, int], dict] = {}
    try:
        asyncio.run(measure(env, "visit", 4, 0.5, names, paths, group.base_url, 99))  # warm-up
        for tool in ("search", "visit"):
            for n in CONCURRENCY:
                results[tool, n] = asyncio.run(measure(env, tool, n, args.seconds, names, paths, group.base_url,
                                                       seed=1000 * n))
    finally:
        server_metrics = group.metrics()
        group.shutdown()
        ray.shutdown()
    print(f"\n{'tool':6s} {'episodes':>8s} {'calls':>6s} {'calls/s':>9s} {'x vs 1':>7s} {'p50 ms':>7s} "
          f"{'p95 ms':>7s} {'errors':>6s}")
    for (tool, n), r in results.items():
        base = results[tool, 1]["rate"]
        print(f"{tool:6s} {n:8d} {r['calls']:6d} {r['rate']:9.1f} {r['rate'] / base:7.2f} "
              f"{1000 * r['latency_p50_s']:7.1f} {1000 * r['latency_p95_s']:7.1f} {r['errors']:6d}")
        if r["errors"]:
            print(f"       first error: {r['first_error']}")
    for tool in ("search", "visit"):
        m = server_metrics[tool]
        print(f"server side {tool}: {m['calls']} calls, p50 {1000 * m['latency_p50_s']:.1f} ms, "
              f"p95 {1000 * m['latency_p95_s']:.1f} ms")
    ratio = results["visit", 16]["rate"] / results["visit", 1]["rate"]
    print(f"search_scaling_16_vs_1={results['search', 16]['rate'] / results['search', 1]['rate']:.2f}")
    print(f"visit_scaling_16_vs_1={ratio:.2f}")


if __name__ == "__main__":
    main()
