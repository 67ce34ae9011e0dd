"""The controller: the only place that knows the order of a training step (DESIGN section 2).

    sample tasks -> rollout (n per task) -> reward -> advantages -> train -> sync weights -> log

`train` below is the whole loop. Sync mode runs the stages in turn; async mode (rollout.mode=async)
keeps the engines rolling out the next batches while a step trains, admitting tasks under AReaL's
staleness rule (rl/rollout_queue.py). The machinery lives elsewhere: the Ray actor groups and how a
batch moves between them in `rl/groups.py` (RLGroups), a run's tasks and their scoring in `rl/tasks.py`.

Never: compute a loss or a reward itself; wait without a timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from rl import algos
from rl.checkpoint import CheckpointManager
from rl.config import AlgoConfig, Config, to_dict
from rl.data import TaskSampler
from rl.groups import RLGroups
from rl.metrics import MetricsLogger, StageTimer, batch_metrics, read_metrics
from rl.rollout_queue import AsyncRollout
from rl.sft_data import write_trajectories
from rollout.trajectory import concat, reward_part_column, scalar_numpy, with_columns


def train(cfg: Config, run_dir: Path, groups: RLGroups | None = None, tasks: list[dict] | None = None,
          start_version: int = 0) -> dict:
    """Run `cfg.run.steps` RL steps (sync, or async with bounded staleness); metrics go to
    `run_dir/metrics.jsonl`, every rolled-out trajectory to `run_dir/trajectories/` (parquet).
    A recipe that runs several stages on the same actor groups passes them (and its tasks) in;
    then they stay up afterwards."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    own_groups = groups is None
    groups = groups or RLGroups(cfg)
    ckpt = CheckpointManager(run_dir, cfg.run.keep_last)
    tasks = tasks if tasks is not None else groups.tasks
    # the KL reference is the policy this stage starts from (after an SFT stage: the SFT policy), as in verl;
    # a resumed stage then loads its checkpoint's policy below, and the reference stays the stage's start
    groups.reset_reference()
    if cfg.algo.prefilter and not (cfg.run.resume and ckpt.latest()):
        tasks = prefilter_tasks(groups, tasks, cfg.algo.prefilter_rollouts, cfg.algo.prefilter_correct, run_dir)
    rl_seed = rl_stage_seed(cfg)
    sampler = TaskSampler(tasks, cfg.data.batch_size, seed=rl_seed)
    rng = np.random.default_rng(rl_seed)
    start, version, found_meta = 1, start_version, {}
    if cfg.run.resume and (found := ckpt.latest()):
        done, version = resume(found[1], groups, sampler, rng, run_dir)
        found_meta = json.loads((found[1] / "meta.json").read_text())
        start = done + 1
    rollout = RolloutSource(groups, sampler, cfg, found_meta.get("async"))
    logger = MetricsLogger(run_dir, cfg.run.steps, progress=cfg.run.progress, initial=start - 1,
                           loggers=cfg.run.loggers, name=cfg.run.name, config=to_dict(cfg))
    history = []
    try:
        for step in range(start, cfg.run.steps + 1):
            timer = StageTimer()
            with timer("step"):
                seed = step_seed(rl_seed, step)  # reproducible rollouts
                rolled, update, metrics = collect_batch(lambda: rollout.next(version, seed), groups.score,
                                                        cfg.data.batch_size, cfg.algo, timer, rng)
                if cfg.run.save_trajectories:
                    write_trajectories(run_dir / "trajectories" / f"step_{step:06d}.parquet", rolled)
                rollout.top_up(version)  # async: the engines keep working while the step trains
                if groups.memory is not None and cfg.memory.mode == "online":  # Memp: M <- Update(M, Build(tau, r))
                    metrics |= groups.memory.update(rolled, cfg.reward.correct_part)
                    groups.memory.save(run_dir / "memory.json")
                if update is not None:
                    with timer("train"):
                        metrics |= groups.train(update, version)
                    with timer("sync"):
                        version = groups.sync_weights(version + 1, abort=cfg.rollout.partial_rollout == "abort")
                metrics |= batch_metrics(rolled) | groups.rollout_metrics()
                metrics["probe/logprob"] = groups.probe()
            metrics |= timer.seconds | {"policy_version": version, "skipped": int(update is None)}
            metrics["throughput/generated_tokens_per_s"] = (
                metrics["response_length/mean"] * rolled.num_rows / metrics["time/generate"])
            logger.log(step, metrics)
            history.append(metrics)
            if cfg.run.save_every and (step % cfg.run.save_every == 0 or step == cfg.run.steps):
                save(ckpt, step, version, groups, sampler, rng, rollout.state_dict())
    finally:
        logger.close()
        if own_groups:
            groups.shutdown()
    return {"run_dir": str(run_dir), "history": history, "policy_version": version}


def rl_stage_seed(cfg: Config) -> int:
    """The seed of the RL stage's task draws, duplication choices and rollouts: `rollout.seed`, else `run.seed`."""
    return cfg.run.seed if cfg.rollout.seed is None else cfg.rollout.seed


def step_seed(run_seed: int, step: int) -> int:
    """The sampling seed of one RL step (engines derive each sample's seed from it)."""
    return run_seed * 1_000_003 + step * 10_007


class RolloutSource:
    """Where a step's groups come from, one interface for both modes. sync: roll the next batch of tasks
    out now. async (rollout.mode=async): take finished groups from the producer, which keeps the engines
    rolling out under AReaL's staleness bound (rl/rollout_queue.py) while a step trains."""

    def __init__(self, groups: RLGroups, sampler: TaskSampler, cfg: Config, async_state: dict | None = None):
        self.groups, self.sampler, self.batch_size = groups, sampler, cfg.data.batch_size
        self.producer = None
        if cfg.rollout.mode == "async":
            self.producer = AsyncRollout(groups.dispatcher, sampler, cfg.data.batch_size, cfg.rollout.max_staleness)
            if async_state:
                self.producer.load_state_dict(async_state)

    def next(self, version: int, seed: int):
        if self.producer is None:
            return self.groups.generate(self.sampler.next_batch(), seed=seed)
        return self.producer.take(self.batch_size, version, self.groups.timeout)

    def top_up(self, version: int) -> None:
        if self.producer is not None:
            self.producer.admit(version)

    def state_dict(self) -> dict | None:
        return self.producer.state_dict() if self.producer is not None else None


def save(ckpt: CheckpointManager, step: int, version: int, groups: RLGroups, sampler: TaskSampler,
         rng: np.random.Generator, async_state: dict | None = None) -> None:
    """Everything the run needs to continue as if never stopped, written atomically."""
    folder = ckpt.begin(step)
    groups.trainer.call("save_checkpoint", str(folder))
    if getattr(groups, "memory", None) is not None:  # resume continues with the same memory
        groups.memory.save(folder / "memory.json")
    meta = {"step": step, "policy_version": version, "sampler": sampler.state_dict(), "rng": rng.bit_generator.state}
    if async_state is not None:
        meta["async"] = async_state
    ckpt.commit(folder, step, meta)


def resume(folder: Path, groups: RLGroups, sampler: TaskSampler, rng: np.random.Generator,
           run_dir: Path) -> tuple[int, int]:
    """Load a checkpoint into the trainer, the sampler and the RNG; push the weights to the engines;
    drop metrics rows written after it. Returns (its step, the policy_version now served)."""
    meta = json.loads((folder / "meta.json").read_text())
    groups.trainer.call("load_checkpoint", str(folder))
    sampler.load_state_dict(meta["sampler"])
    if getattr(groups, "memory", None) is not None and (folder / "memory.json").exists():
        print(f"memory restored from {folder / 'memory.json'}: {groups.memory.load(folder / 'memory.json')} records")
    rng.bit_generator.state = meta["rng"]
    version = groups.sync_weights(meta["policy_version"])
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():  # rows written after the checkpoint go; a torn last line is skipped with a warning
        rows = [r for r in read_metrics(metrics) if r["step"] <= meta["step"]]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"resumed from {folder} (step {meta['step']}, policy_version {meta['policy_version']})")
    return meta["step"], version


def collect_batch(rollout_fn, score_fn, target: int, algo: AlgoConfig, timer: StageTimer,
                  rng: np.random.Generator) -> tuple[pa.RecordBatch, pa.RecordBatch | None, dict]:
    """Rollout -> reward -> shaping -> advantages -> group sampler (SEEDS 1-3).

    rollout_fn() -> one batch of `target` task groups (numbered 0..target-1), and optionally
    metrics; score_fn(batch) -> the batch with reward columns.

    keep: the batch as is. dapo: drop zero-variance groups and roll out new tasks until B valid
    groups or `algo.max_gen_rounds` rounds (then train on what there is, and say so). dupo: drop
    zero-variance groups and refill with copies of the others (advantages computed before).
    Returns (every rolled-out trajectory, the update batch or None to skip the step, metrics).
    """
    rolled, kept, rounds, extra = [], [], 0, {}
    while True:
        with timer("generate"):
            batch = rollout_fn()
        if isinstance(batch, tuple):
            batch, more = batch
            extra |= more
        if rounds:  # DAPO regeneration rounds: groups of round r are numbered r * target + g
            batch = with_columns(batch, {"group": scalar_numpy(batch, "group") + rounds * target})
        rounds += 1
        with timer("reward"):
            batch = score_fn(batch)
        batch = add_advantages(shape_rewards(batch, algo), algo)
        rolled.append(batch)
        if not algos.sampler_regenerates(algo.sampler):
            break
        kept.append(batch.take(pa.array(algos.dapo_select(filter_signal(batch, algo.filter_metric),
                                                          scalar_numpy(batch, "group")), pa.int64())))
        valid = sum(len(np.unique(scalar_numpy(k, "group"))) for k in kept)
        if not algos.dapo_needs_more(valid, target) or rounds >= algo.max_gen_rounds:
            break
    everything = concat(rolled)
    signal, group = filter_signal(everything, algo.filter_metric), scalar_numpy(everything, "group")
    metrics = {f"sampler/{k}": v for k, v in algos.sampler_metrics(signal, group).items()} | extra
    metrics["sampler/gen_rounds"] = rounds
    sampler_args = algos.piece_kwargs("sampler", algo.sampler, to_dict(algo))
    if algos.sampler_regenerates(algo.sampler):
        update = concat(kept)
        rows, _, _ = algos.GROUP_SAMPLERS.get(algo.sampler)(filter_signal(update, algo.filter_metric),
                                                            scalar_numpy(update, "group"), num_groups_target=target,
                                                            **sampler_args)
        update = update.take(pa.array(rows, pa.int64()))
        metrics["sampler/dapo_bound_hit"] = int(valid < target)
        metrics["sampler/valid_groups"] = min(valid, target)
    else:
        rows, dup_of, new_group = algos.GROUP_SAMPLERS.get(algo.sampler)(
            signal, group, num_groups_target=target, rng=rng, **sampler_args)
        keep_all = len(rows) == everything.num_rows and np.array_equal(rows, np.arange(len(rows)))
        update = everything if keep_all else everything.take(pa.array(rows, pa.int64()))  # keep: no copy
        update = with_columns(update, {"dup_of": dup_of.astype(np.int32), "group": new_group.astype(np.int32)})
        metrics["sampler/duplication_ratio"] = float((dup_of >= 0).mean()) if len(dup_of) else 0.0
    if update.num_rows == 0:
        print(f"warning: no group with non-zero {algo.filter_metric} variance after {rounds} round(s); step skipped")
        return everything, None, metrics
    return everything, update, metrics


def filter_signal(batch: pa.RecordBatch, metric: str) -> np.ndarray:
    """The per-row value whose spread within a group keeps the group (algo.filter_metric): the total
    `reward`, or the reward part `metric` (column reward_<metric>)."""
    return scalar_numpy(batch, reward_part_column(batch, metric, f"algo.filter_metric={metric!r}"))


def prefilter_tasks(groups: RLGroups, tasks: list[dict], num_rollouts: int, correct: float,
                    run_dir: Path) -> list[dict]:
    """DUPO's pre-RL filter (SEEDS 3.5 item 1): roll every task out `num_rollouts` times with the
    current policy, drop the tasks every rollout solves, write `dupo_prefilter.json` (dropped ids
    and every task's pass count). All-wrong tasks stay: the in-training rule handles them."""
    passes: dict[str, int] = {}
    # one rollout call per chunk of tasks: enough to keep every engine's in-flight window full until the
    # chunk's tail (the dispatcher bounds what runs at once), and a huge task set is never one batch in memory.
    chunk = groups.rollout.num * groups.cfg.rollout.max_inflight_groups * 4
    for start in range(0, len(tasks), chunk):
        part = [dict(t, group=i) for i, t in enumerate(tasks[start:start + chunk])]
        batch = groups.score(groups.generate(part, n=num_rollouts, progress="DUPO pre-filter"))
        ok = scalar_numpy(batch, "reward") >= correct
        for uid, hit in zip(batch.column("uid").to_pylist(), ok):
            passes[uid] = passes.get(uid, 0) + int(hit)
    kept_ids, manifest = algos.dupo_prefilter(passes, num_rollouts)
    manifest["correct_threshold"] = correct
    (run_dir / "dupo_prefilter.json").write_text(json.dumps(manifest, indent=1))
    kept = set(kept_ids)
    out = [t for t in tasks if t["uid"] in kept]
    print(f"DUPO pre-filter: kept {len(out)} of {len(tasks)} tasks ({manifest['num_dropped']} solved "
          f"{num_rollouts}/{num_rollouts}); manifest in {run_dir / 'dupo_prefilter.json'}")
    if not out:
        raise RuntimeError(f"the DUPO pre-filter dropped every task (all solved {num_rollouts}/{num_rollouts} "
                           f"at reward >= {correct}); see {run_dir / 'dupo_prefilter.json'}")
    return out


def shape_rewards(batch: pa.RecordBatch, algo: AlgoConfig) -> pa.RecordBatch:
    """DAPO's soft overlong punishment added to the reward, kept as its own part (SEEDS 2.1)."""
    if not algo.overlong_penalty:
        return batch
    lengths = batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False)
    penalty = algos.soft_overlong_penalty(torch.from_numpy(lengths.astype(np.int64)), algo.overlong_max_len,
                                          algo.overlong_cache_len).numpy()
    reward = scalar_numpy(batch, "reward") + penalty
    return with_columns(batch, {"reward": reward.astype(np.float32), "reward_overlong": penalty.astype(np.float32)})


def add_advantages(batch: pa.RecordBatch, algo: AlgoConfig) -> pa.RecordBatch:
    """Group-relative advantage per trajectory (SEEDS 1.2), from `reward` and `group`, by the estimator
    `algo.adv_estimator` with the parameters it declares."""
    rewards = torch.from_numpy(scalar_numpy(batch, "reward").astype(np.float32))
    group = torch.from_numpy(scalar_numpy(batch, "group").astype(np.int64))
    kwargs = algos.piece_kwargs("adv_estimator", algo.adv_estimator, to_dict(algo))
    adv = algos.compute_advantage(algo.adv_estimator, rewards, group, **kwargs)
    return with_columns(batch, {"advantage": adv.numpy()})
