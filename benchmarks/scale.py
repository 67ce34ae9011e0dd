"""Cluster scale, simulated: the real controller driving 8-256 simulated engines and up to 10,000 episodes.

Everything is the real code (`rl.controller.train`, `RLGroups`, the Dispatcher's routing, async admission and
partial rollout, the agent loop, the world's search and visit through the EnvGroup, the RewardGroup, the group
sampler, Arrow batches) except the engines and the trainer, which are the simulation backends
(`rollout.backend: sim`, `trainer.backend: sim`; launch/configs/sim_cluster.yaml): vLLM serving an 8B model on
one H100 per engine, an 8B model trained on `--train-gpus` H100s. Many simulated engines share one Ray actor
process (`rollout.sim.engines_per_actor`).

Sweeps engines (8 -> 256), episodes in flight (100 -> 10,000; async mode, `(max_staleness + 1) * batch * n`
admitted at once) and tool calls per episode (4 -> 64), one axis at a time around a base point. Per point,
averaged over the measured steps (the first step, filling the pipeline, is left out):
  controller CPU   the driver process's CPU seconds per step (the controller loop, Ray's client threads,
                   Arrow work) and their share of the step's wall time: `controller_overhead`. Simulated
                   seconds pass at `--time-scale` real seconds each; at 1 (the default) the simulation runs in
                   real time, below 1 the share is stricter than a cluster would see (the step shrinks, the
                   driver's work does not). Also against the step's modelled floor (the training and
                   weight sync it runs, from the trainer model): on a machine too small for the simulated
                   rollout (`late` well above 0) the step's wall time stretches, and the floor is the fair
                   denominator.
  memory           the driver's resident set (now and peak) and the RewardGroup actors' (sum).
  Arrow bytes      rollout -> driver (finished groups), driver -> RewardGroup (the projected columns) and
                   back (reward columns), driver -> trainer (the shards).
  engine busy      the simulated engines' share of wall time with a request running (mean over engines),
                   and how late their sleeps ran (`late`: an event loop short of CPU slows the simulation).
  where time goes  the step's phases (generate = waiting for groups, reward, train, sync, other).
  accounting       every admitted group handed out, dropped as stale or still running (`lost` must be 0),
                   and every group with its n rows.

    python benchmarks/scale.py [--quick]       last line: controller_overhead=<share at the top point>
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from rl.cluster import wait  # noqa: E402
from rl.groups import RLGroups  # noqa: E402
from rollout.trajectory import project  # noqa: E402

CONFIG = ROOT / "launch/configs/sim_cluster.yaml"
N = 8           # samples per task
STALENESS = 1


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb(_worker=None) -> dict:
    """This process's resident set now and at its peak (MB), from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


class MeteredGroups(RLGroups):
    """RLGroups that also count what a step moves and costs (the benchmark's meter; nothing is replaced)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.bytes = {"rollout": 0, "to_reward": 0, "from_reward": 0, "to_trainer": 0}
        self.cpu = {"reward": 0.0, "train": 0.0, "sync": 0.0, "metrics": 0.0}
        self.steps: list[dict] = []
        self._cpu0, self._bytes0 = cpu_s(), 0

    def score(self, batch):
        c = cpu_s()
        self.bytes["to_reward"] += project(batch, self.reward_columns).nbytes
        out = super().score(batch)
        self.bytes["from_reward"] += sum(out.column(k).nbytes for k in out.schema.names if k not in batch.schema.names)
        self.cpu["reward"] += cpu_s() - c
        return out

    def train(self, batch, version):
        c = cpu_s()
        self.bytes["to_trainer"] += batch.nbytes
        out = super().train(batch, version)
        self.cpu["train"] += cpu_s() - c
        return out

    def sync_weights(self, version, abort=False):
        c = cpu_s()
        out = super().sync_weights(version, abort)
        self.cpu["sync"] += cpu_s() - c
        return out

    def rollout_metrics(self):
        """Once per step: the step's meters (driver CPU since the last call, bytes, memory, engines). The
        meters' own calls (engine and memory statistics) are the benchmark's, not the controller's: their CPU
        is left out of the step's."""
        c = cpu_s()
        out = super().rollout_metrics()
        import ray

        m = cpu_s()
        self.cpu["metrics"] += m - c
        engines = wait([a.__ray_call__.remote(_engine_stats) for a in self.rollout.actors], 120,
                       "the engines' statistics", self.rollout.rank_names())
        reward = wait([a.__ray_call__.remote(rss_mb) for a in self.reward.actors], 120,
                      "the reward workers' memory", self.reward.rank_names())
        now = cpu_s()
        received = self.dispatcher.received_bytes
        self.steps.append({"driver_cpu_s": m - self._cpu0, "cpu": dict(self.cpu), "bytes": dict(self.bytes,
                           rollout=received - self._bytes0), "driver": rss_mb(),
                           "reward_rss_mb": sum(r["VmRSS"] for r in reward),
                           "busy": float(np.mean([e["busy_fraction"] for e in engines])),
                           "late": float(np.mean([e["late_fraction"] for e in engines])),
                           "requests": sum(e["requests"] for e in engines),
                           "max_running": max(e["max_running"] for e in engines)})
        self._cpu0, self._bytes0 = now, received
        self.cpu = dict.fromkeys(self.cpu, 0.0)
        self.bytes = dict.fromkeys(self.bytes, 0)
        return out


def _engine_stats(worker) -> dict:
    out = worker.engine.stats()
    worker.engine.reset_stats()
    return out


def run_point(engines: int, episodes: int, tool_calls: int, args) -> dict:
    """One point of the sweep: build the groups, run `args.steps` steps, summarise the measured ones."""
    from rl.config import load_config
    from rl.controller import train

    batch = max(1, round(episodes / (N * (STALENESS + 1))))
    hosts = min(args.processes, engines)
    per_engine = math.ceil(batch * (STALENESS + 1) / engines) + 1
    overrides = [
        f"rollout.num_engines={engines}", f"rollout.n={N}", f"rollout.max_inflight_groups={per_engine}",
        "rollout.mode=async", f"rollout.max_staleness={STALENESS}",
        f"rollout.sim={{time_scale: {args.time_scale}, engines_per_actor: {math.ceil(engines / hosts)}, "
        f"tokens_per_turn: {args.tokens}, tool_calls: {tool_calls}, tool_calls_sigma: 0.0}}",
        f"trainer.sim={{gpus: {args.train_gpus}}}", f"data.batch_size={batch}",
        f"data.num_tasks={max(args.tasks, batch)}",
        f"env.num_servers={args.env_servers}", f"env.page_latency_s={args.page_latency * args.time_scale}",
        f"agent.max_tool_calls={tool_calls + 1}", f"run.steps={args.steps}", "run.progress=false",
        f"run.save_trajectories={str(args.save_trajectories).lower()}", f"run.stage_timeout_s={args.timeout}"]
    cfg = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    groups = MeteredGroups(cfg)
    startup = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            history = train(cfg, Path(run_dir), groups=groups)["history"]
    finally:
        groups.shutdown()
    measured = list(zip(history, groups.steps))[1:]
    step_s = np.array([h["time/step"] for h, _ in measured])
    cpu = np.array([m["driver_cpu_s"] for _, m in measured])
    rows_ok = all(h["num_trajectories"] == batch * N for h, _ in measured)
    mean = lambda key: float(np.mean([h.get(key, 0.0) for h, _ in measured]))  # noqa: E731
    phases = {k: mean(f"time/{k}") for k in ("generate", "reward", "train", "sync")}
    phases["other"] = float(step_s.mean()) - sum(phases.values())
    last = measured[-1][1]
    from rl.trainer.sim import TrainerModel, sync_seconds

    # a step cannot be shorter than the training and the weight sync it runs: the modelled floor of a step
    floor = mean("sim/train_modelled_s") + sync_seconds(TrainerModel(gpus=args.train_gpus))
    return {
        "engines": engines, "episodes": batch * N * (STALENESS + 1), "tool_calls": tool_calls, "batch": batch,
        "startup_s": startup, "step_s": float(step_s.mean()), "cpu_s": float(cpu.mean()),
        "overhead": float(cpu.sum() / step_s.sum()), "floor_s": floor, "overhead_floor": float(cpu.mean() / floor),
        "cpu_by_phase": {k: float(np.mean([m["cpu"][k] for _, m in measured])) for k in last["cpu"]},
        "driver_rss_mb": [m["driver"]["VmRSS"] for _, m in measured], "driver_peak_mb": last["driver"]["VmHWM"],
        "reward_rss_mb": last["reward_rss_mb"],
        "mb_moved": {k: float(np.mean([m["bytes"][k] for _, m in measured])) / 2**20 for k in last["bytes"]},
        "busy": float(np.mean([m["busy"] for _, m in measured])),
        "late": float(np.mean([m["late"] for _, m in measured])),
        "max_running": max(m["max_running"] for _, m in measured), "phases": phases,
        "lost": max(int(h.get("async/lost_groups", 0)) for h, _ in measured), "rows_ok": rows_ok,
        "stale_dropped": int(history[-1].get("async/stale_dropped", 0)),
        "errors": sum(h.get("finish/error", 0.0) for h, _ in measured),
        "tool_calls_mean": mean("num_tool_calls/mean"), "train_modelled_s": mean("sim/train_modelled_s"),
        "train_slept_s": mean("time/update"),
    }


def print_point(r: dict) -> None:
    mb = r["mb_moved"]
    ph = r["phases"]
    print(f"engines {r['engines']:4d}  episodes {r['episodes']:6d}  tool calls {r['tool_calls']:3d}  "
          f"(batch {r['batch']} x {N}; startup {r['startup_s']:.0f} s)")
    print(f"  step {r['step_s']:7.2f} s  controller CPU {r['cpu_s']:6.3f} s = {r['overhead']:.4f} of the step  "
          f"(reward {r['cpu_by_phase']['reward']:.3f}, train {r['cpu_by_phase']['train']:.3f}, "
          f"sync {r['cpu_by_phase']['sync']:.3f}, metrics {r['cpu_by_phase']['metrics']:.3f})")
    print(f"  modelled floor of the step (training + weight sync) {r['floor_s']:.2f} s: controller CPU / floor "
          f"= {r['overhead_floor']:.4f}")
    print(f"  where time goes: generate {ph['generate']:.2f} s, reward {ph['reward']:.2f}, train {ph['train']:.2f} "
          f"(modelled {r['train_modelled_s']:.2f}, slept {r['train_slept_s']:.2f}), sync {ph['sync']:.2f}, "
          f"other {ph['other']:.2f}")
    print(f"  driver RSS per step {[round(x) for x in r['driver_rss_mb']]} MB (peak {r['driver_peak_mb']:.0f}), "
          f"reward group {r['reward_rss_mb']:.0f} MB")
    print(f"  Arrow MB per step: rollout->driver {mb['rollout']:.1f}, ->reward {mb['to_reward']:.1f}, "
          f"reward-> {mb['from_reward']:.2f}, ->trainer {mb['to_trainer']:.1f}")
    print(f"  engines busy {r['busy']:.2f} (sleeps late by {r['late']:.2f} of their length), most sequences on one "
          f"engine {r['max_running']}; tool calls/episode {r['tool_calls_mean']:.1f}")
    print(f"  accounting: lost groups {r['lost']}, every group n rows {r['rows_ok']}, stale dropped "
          f"{r['stale_dropped']}, error episodes {r['errors']:.3f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the base point, the top point and two axis ends")
    p.add_argument("--steps", type=int, default=4, help="RL steps per point (the first is not measured)")
    p.add_argument("--time-scale", type=float, default=1.0, help="real seconds per simulated second")
    p.add_argument("--tokens", type=int, default=128, help="median generated tokens per turn")
    p.add_argument("--train-gpus", type=int, default=64, help="GPUs of the simulated trainer")
    p.add_argument("--page-latency", type=float, default=0.2, help="the world's page latency (simulated s)")
    p.add_argument("--processes", type=int, default=4, help="actor processes hosting the simulated engines")
    p.add_argument("--env-servers", type=int, default=2)
    p.add_argument("--tasks", type=int, default=256, help="distinct questions (the sampler cycles through them)")
    p.add_argument("--timeout", type=float, default=900.0, help="run.stage_timeout_s")
    p.add_argument("--save-trajectories", action="store_true", help="also write every step's parquet")
    p.add_argument("--points", default=None, help="engines:episodes:tool_calls,... instead of the sweep")
    args = p.parse_args()
    base, top = (128, 1000, 4), (128, 10000, 4)
    if args.points:
        points = [tuple(int(x) for x in pt.split(":")) for pt in args.points.split(",")]
    elif args.quick:
        points = [(8, 1000, 4), base, (128, 1000, 16), top]
    else:
        points = [(e, 1000, 4) for e in (8, 32, 64, 128, 256)] + [(128, ep, 4) for ep in (100, 4000)] \
            + [(128, 1000, t) for t in (16, 64)] + [top]
    print(f"simulated: {args.tokens} tokens/turn (median, lognormal sigma 0.6), {args.train_gpus} training GPUs, "
          f"page latency {args.page_latency} s, time scale {args.time_scale}, {args.steps} steps per point "
          f"(first not measured), {N} samples per task, max_staleness {STALENESS}")
    results = []
    for engines, episodes, calls in points:
        results.append(run_point(engines, episodes, calls, args))
        print_point(results[-1])
    at_top = [r for r in results if (r["engines"], r["tool_calls"]) == (top[0], top[2]) and r["episodes"] >= 9000]
    final = (at_top or results)[-1]
    print(f"controller CPU / the step's modelled floor at the top point: {final['overhead_floor']:.4f}")
    print(f"controller_overhead={final['overhead']:.4f}")


if __name__ == "__main__":
    main()
