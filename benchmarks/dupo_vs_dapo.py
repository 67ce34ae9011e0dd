"""DUPO vs DAPO: wall-clock per training step at the same number of groups in the update.

The real controller sampling code (`rl.controller.collect_batch`: rollout -> reward -> advantages ->
group sampler, DAPO's regeneration loop and DUPO's duplication) runs against rollout groups whose
cost follows an agentic latency model, so the measurement is of the sampling strategy, not of a
tiny model:
  - a trajectory makes 3-12 turns; each turn costs a generation (lognormal, median 1.5 s) plus a
    tool call (lognormal, median 0.8 s, long tail: sigma 1.0);
  - all trajectories of a round run concurrently (as in our async rollout), so a round lasts as
    long as its slowest trajectory (the long tail);
  - tasks pass with a per-task rate: 30 % never (p = 0), 30 % always (p = 1), 40 % in between,
    so about 60 % of the groups have zero reward variance (WebSailor / DAPO's regime);
  - a training step costs `--train-s` simulated seconds (the same for both: the same B groups).
Simulated seconds are slept at `--time-scale` real seconds each and the wall clock is measured.

    python benchmarks/dupo_vs_dapo.py [--quick]        last line: dupo_speedup=<ratio>
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from rl.config import load_config  # noqa: E402
from rl.controller import collect_batch  # noqa: E402
from rl.data import TaskSampler  # noqa: E402
from rl.metrics import StageTimer  # noqa: E402
from rollout.engines import Generation  # noqa: E402
from rollout.trajectory import build_batch, record_from_generation, with_columns  # noqa: E402



def _fns(groups, sampler):
    """collect_batch's rollout and score functions over scripted groups and a task sampler."""
    return (lambda: groups.generate(sampler.next_batch())), groups.score, sampler.batch_size

class LatencyModelGroups:
    """Rollout and reward groups with the latency model above (stand-ins for RLGroups)."""

    def __init__(self, pass_rate: dict[str, float], n: int, scale: float, seed: int):
        self.pass_rate, self.n, self.scale = pass_rate, n, scale
        self.rng = np.random.default_rng(seed)
        self.simulated_s = 0.0

    def trajectory_seconds(self) -> float:
        turns = self.rng.integers(3, 13)
        gen = self.rng.lognormal(np.log(1.5), 0.5, turns)
        tool = self.rng.lognormal(np.log(0.8), 1.0, turns)
        return float(gen.sum() + tool.sum())

    def generate(self, tasks, n=None):
        n = n or self.n
        makespan = max(self.trajectory_seconds() for _ in range(len(tasks) * n))
        self.simulated_s += makespan
        time.sleep(makespan * self.scale)
        recs = [record_from_generation(t["uid"], t["group"], s, t["prompt_ids"],
                                       Generation([7] * 8, [-1.0] * 8, "stop"))
                for t in tasks for s in range(n)]
        return build_batch(recs)

    def score(self, batch):
        uids = batch.column("uid").to_pylist()
        r = (self.rng.random(len(uids)) < np.array([self.pass_rate[u] for u in uids])).astype(np.float32)
        return with_columns(batch, {"reward": r})


def run(preset: str, steps: int, batch: int, n: int, scale: float, train_s: float, seed: int):
    rng = np.random.default_rng(seed)
    uids = [f"t{i}" for i in range(4000)]
    kind = rng.random(len(uids))
    rates = np.where(kind < 0.3, 0.0, np.where(kind < 0.6, 1.0, rng.uniform(0.2, 0.8, len(uids))))
    groups = LatencyModelGroups(dict(zip(uids, rates)), n, scale, seed)
    sampler = TaskSampler([{"uid": u, "prompt_ids": [1, 2, 3]} for u in uids], batch, seed=seed)
    rounds_cap = ["algo.max_gen_rounds=20"] if preset == "dapo" else []  # only DAPO generates again
    algo = load_config(None, [f"algo.preset={preset}"] + rounds_cap).algo
    step_times, rounds, groups_in_update = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, update, m = collect_batch(*_fns(groups, sampler), algo, StageTimer(), rng)
        time.sleep(train_s * scale)  # the training step: same B groups for both
        step_times.append((time.perf_counter() - t0) / scale)
        rounds.append(m["sampler/gen_rounds"])
        groups_in_update.append(len(np.unique(update.column("group").to_numpy())) if update is not None else 0)
    return statistics.mean(step_times), statistics.mean(rounds), statistics.mean(groups_in_update)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 steps instead of 10")
    p.add_argument("--batch", type=int, default=32, help="groups per update (B)")
    p.add_argument("--n", type=int, default=8, help="rollouts per group (G)")
    p.add_argument("--train-s", type=float, default=60.0, help="simulated seconds of one training step")
    p.add_argument("--time-scale", type=float, default=0.002, help="real seconds per simulated second")
    args = p.parse_args()
    steps = 4 if args.quick else 10
    res = {preset: run(preset, steps, args.batch, args.n, args.time_scale, args.train_s, seed=1)
           for preset in ("dapo", "dupo")}
    print(f"B={args.batch} groups x G={args.n}, {steps} steps, ~60% zero-variance groups, "
          f"training {args.train_s:.0f} s/step (simulated seconds)")
    for preset, (sec, rounds, g) in res.items():
        print(f"{preset}: {sec:8.1f} s/step  generation rounds/step {rounds:.2f}  groups in update {g:.1f}")
    print(f"dupo_speedup={res['dapo'][0] / res['dupo'][0]:.2f}")


if __name__ == "__main__":
    main()
