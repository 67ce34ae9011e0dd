"""The controller: the only place that knows the order of a training step (DESIGN section 2).

    sample tasks -> rollout (n per task) -> reward -> advantages -> train -> sync weights -> log

`train` below is the whole loop. Sync mode runs the stages in turn; async mode (rollout.mode=async)
keeps the engines rolling out the next batches while a step trains, admitting tasks under AReaL's
staleness rule (rl/rollout_queue.py). `RLGroups` under it is the machinery: the Ray actor groups
(RolloutGroup, RewardGroup, TrainerGroup, and the EnvGroup of multi-turn tasks) and how a batch
moves between them.

Never: compute a loss or a reward itself; wait without a timeout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from rl import algos
from rl.checkpoint import CheckpointManager
from rl.cluster import ActorGroup, connect, wait
from rl.config import AlgoConfig, Config, to_dict
from rl.data import TaskSampler, file_tasks, target_token_tasks, visual_qa_tasks, world_qa_tasks
from rl.rollout_queue import AsyncRollout, Dispatcher
from rl.sft_data import write_trajectories
from rl.trainer.collate import TRAIN_COLUMNS
from rl.metrics import MetricsLogger, StageTimer, batch_metrics
from rollout.trajectory import concat, project, reward_part_column, scalar_numpy, validate, with_columns


def train(cfg: Config, run_dir: Path, groups: "RLGroups | None" = None, tasks: list[dict] | None = None,
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
    if cfg.algo.prefilter and not (cfg.run.resume and ckpt.latest()):
        tasks = prefilter_tasks(groups, tasks, cfg.algo.prefilter_rollouts, cfg.algo.prefilter_correct, run_dir)
    sampler = TaskSampler(tasks, cfg.data.batch_size, seed=cfg.run.seed)
    rng = np.random.default_rng(cfg.run.seed)
    start, version, found_meta = 1, start_version, {}
    if cfg.run.resume and (found := ckpt.latest()):
        done, version = resume(found[1], groups, sampler, rng, run_dir)
        found_meta = json.loads((found[1] / "meta.json").read_text())
        start = done + 1
    producer = None
    if cfg.rollout.mode == "async":  # rollout of step t+1 runs on the engines while step t trains
        producer = AsyncRollout(groups.dispatcher, sampler, cfg.data.batch_size, cfg.rollout.max_staleness)
        if start > 1 and "async" in found_meta:
            producer.load_state_dict(found_meta["async"])
    logger = MetricsLogger(run_dir, cfg.run.steps, progress=cfg.run.progress, initial=start - 1,
                           loggers=cfg.run.loggers, name=cfg.run.name, config=to_dict(cfg))
    history = []
    try:
        for step in range(start, cfg.run.steps + 1):
            timer = StageTimer()
            groups.sampling["seed"] = cfg.run.seed * 1_000_003 + step * 10_007  # reproducible rollouts
            if producer is None:
                rollout_fn = lambda: groups.generate(sampler.next_batch())  # noqa: E731
            else:
                rollout_fn = lambda: producer.take(cfg.data.batch_size, version, groups.timeout)  # noqa: E731
            rolled, update, sample_metrics = collect_batch(rollout_fn, groups.score, sampler.batch_size,
                                                           cfg.algo, timer, rng)
            metrics = batch_metrics(rolled) | sample_metrics
            if cfg.run.save_trajectories:
                write_trajectories(run_dir / "trajectories" / f"step_{step:06d}.parquet", rolled)
            if producer is not None:
                producer.admit(version)  # top up before training so the engines keep working
            if update is not None:
                with timer("train"):
                    metrics |= groups.train(update)
                with timer("sync"):
                    version = groups.sync_weights(version + 1, abort=cfg.rollout.partial_rollout == "abort")
            metrics |= timer.seconds
            metrics["policy_version"] = version
            metrics["skipped"] = int(update is None)
            metrics["throughput/generated_tokens_per_s"] = (
                metrics["response_length/mean"] * rolled.num_rows / metrics["time/generate"])
            metrics["probe/logprob"] = groups.probe()
            metrics |= groups.rollout_metrics()
            logger.log(step, metrics)
            history.append(metrics)
            if cfg.run.save_every and (step % cfg.run.save_every == 0 or step == cfg.run.steps):
                save(ckpt, step, version, groups, sampler, rng, producer)
    finally:
        logger.close()
        if own_groups:
            groups.shutdown()
    return {"run_dir": str(run_dir), "history": history, "policy_version": version}


def save(ckpt: CheckpointManager, step: int, version: int, groups: "RLGroups", sampler: TaskSampler,
         rng: np.random.Generator, producer: AsyncRollout | None = None) -> None:
    """Everything the run needs to continue as if never stopped, written atomically."""
    folder = ckpt.begin(step)
    groups.trainer.call("save_checkpoint", str(folder))
    meta = {"step": step, "policy_version": version, "sampler": sampler.state_dict(), "rng": rng.bit_generator.state}
    if producer is not None:
        meta["async"] = producer.state_dict()
    ckpt.commit(folder, step, meta)


def resume(folder: Path, groups: "RLGroups", sampler: TaskSampler, rng: np.random.Generator,
           run_dir: Path) -> tuple[int, int]:
    """Load a checkpoint into the trainer, the sampler and the RNG; push the weights to the engines;
    drop metrics rows written after it. Returns (its step, the policy_version now served)."""
    meta = json.loads((folder / "meta.json").read_text())
    groups.trainer.call("load_checkpoint", str(folder))
    sampler.load_state_dict(meta["sampler"])
    rng.bit_generator.state = meta["rng"]
    version = groups.sync_weights(meta["policy_version"])
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= meta["step"]]
        metrics.write_text("".join(r + "\n" for r in rows))
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
        batch = add_advantages(shape_rewards(batch, algo), algo.adv_estimator, algo.norm_adv_by_std)
        rolled.append(batch)
        if algo.sampler != "dapo":
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
    if algo.sampler == "dapo":
        update = concat(kept)
        rows, _, _ = algos.GROUP_SAMPLERS.get("dapo")(filter_signal(update, algo.filter_metric),
                                                      scalar_numpy(update, "group"), num_groups_target=target)
        update = update.take(pa.array(rows, pa.int64()))
        metrics["sampler/dapo_bound_hit"] = int(valid < target)
        metrics["sampler/valid_groups"] = min(valid, target)
    else:
        rows, dup_of, new_group = algos.GROUP_SAMPLERS.get(algo.sampler)(
            signal, group, num_groups_target=target, rng=rng)
        update = everything.take(pa.array(rows, pa.int64()))
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


def prefilter_tasks(groups: "RLGroups", tasks: list[dict], num_rollouts: int, correct: float,
                    run_dir: Path) -> list[dict]:
    """DUPO's pre-RL filter (SEEDS 3.5 item 1): roll every task out `num_rollouts` times with the
    current policy, drop the tasks every rollout solves, write `dupo_prefilter.json` (dropped ids
    and every task's pass count). All-wrong tasks stay: the in-training rule handles them."""
    passes: dict[str, int] = {}
    chunk = max(1, len(tasks) // max(1, groups.rollout.num * 4))
    for start in range(0, len(tasks), chunk):
        part = [dict(t, group=i) for i, t in enumerate(tasks[start:start + chunk])]
        batch = groups.score(groups.generate(part, n=num_rollouts))
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


def add_advantages(batch: pa.RecordBatch, estimator: str, norm_by_std: bool) -> pa.RecordBatch:
    """Group-relative advantage per trajectory (SEEDS 1.2), from `reward` and `group`."""
    rewards = torch.from_numpy(scalar_numpy(batch, "reward").astype(np.float32))
    group = torch.from_numpy(scalar_numpy(batch, "group").astype(np.int64))
    kwargs = {"norm_by_std": norm_by_std} if estimator == "grpo" else {}
    adv = algos.compute_advantage(estimator, rewards, group, **kwargs)
    return with_columns(batch, {"advantage": adv.numpy()})


def load_tasks(cfg: Config, tokenizer) -> tuple[list[dict], dict]:
    """The tasks of `cfg.data.task` and how they are scored: {"rewards", "composition", "judge"}
    (the task's default unless cfg.reward.fns is given)."""
    d = cfg.data
    if d.task == "target_token":
        tasks, token_id = target_token_tasks(tokenizer, d.target_token, d.num_tasks)
        default = {"rewards": {"target_token": {"token_id": token_id}}, "composition": None, "judge": None}
    else:
        default = DEFAULT_QA_SCORING
        if d.task == "world_qa":
            tasks = world_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed,
                                   nodes=d.qa_nodes, anchor_rate=d.qa_anchor_rate,
                                   one_page=d.qa_one_page)
        elif d.task == "visual_qa":
            tasks = visual_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed)
            default = DEFAULT_VRAG_SCORING
        else:
            tasks = file_tasks(d.path, d.num_tasks)
    if cfg.reward.fns is None:
        return tasks, default
    return tasks, {"rewards": cfg.reward.fns, "composition": cfg.reward.composition, "judge": cfg.reward.judge}


#: question-answering tasks: WebSailor's 0.1 format + 0.9 answer, the answer by a rule judge on the
#: task's gold answers (an LLM judge by configuration: reward.judge={backend: openai | engine, ...})
DEFAULT_QA_SCORING = {"rewards": {"format": {"style": "websailor"}, "judge": {"kind": "gaia"}},
                      "composition": "websailor", "judge": {"backend": "rule"}}
#: visual questions (VRAG-RL, SEEDS 4.3): 0.7 answer + 0.1 pattern + 0.2 NDCG of the retrieved pages,
#: gated by the pattern; the answer by a rule judge on the gold answers (an LLM judge by configuration)
DEFAULT_VRAG_SCORING = {"rewards": {"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}},
                        "composition": "vrag", "judge": {"backend": "rule"}}


class RLGroups:
    """The actor groups of one run and the moves of a batch between them."""

    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        from reward.worker import RewardWorker
        from rl.models import build_tiny_model, build_tiny_vl_model
        from rl.trainer.base import backend_class
        from rollout.worker import RolloutWorker

        self.cfg = cfg
        r, t = cfg.rollout, cfg.trainer
        self.timeout = cfg.run.stage_timeout_s
        builders = {"tiny": build_tiny_model, "tiny_vl": build_tiny_vl_model}
        world = {"world_seed": cfg.env.world_seed, "world_size": cfg.env.world_size} \
            if cfg.model.tokenizer == "world" else {}
        model_path = str(builders[cfg.model.path](tokenizer=cfg.model.tokenizer, **world, **cfg.model.tiny)) \
            if cfg.model.path in builders else cfg.model.path
        self.model_path = model_path
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tasks, scoring = load_tasks(cfg, tokenizer)
        first = self.tasks[0]
        self.probe_ids = first.get("prompt_ids") or tokenizer.apply_chat_template(
            [{"role": "user", "content": first["question"]}], add_generation_prompt=True, tokenize=True)["input_ids"]
        multi_turn = cfg.data.task != "target_token"

        cpus = r.num_engines * r.cpus_per_engine + t.num_ranks * t.cpus_per_rank \
            + cfg.reward.num_workers * cfg.reward.cpus_per_worker \
            + (cfg.env.num_servers * cfg.env.cpus_per_server if multi_turn else 0)
        self.how = connect(cfg.ray.address, cfg.ray.num_cpus, cpus_needed=cpus)
        self.env = None
        if multi_turn:
            from rl.env_group import EnvGroup

            e = cfg.env
            self.env = EnvGroup(tools=e.tools, num_servers=e.num_servers, num_cpus=e.cpus_per_server,
                                world={"seed": e.world_seed, "size": e.world_size, "latency_s": e.page_latency_s},
                                limits=e.limits, ready_timeout_s=self.timeout)
        agent = to_dict(cfg.agent) if multi_turn else None
        env_client = self.env.client() if self.env is not None else None

        engine_kwargs = {"seed": cfg.run.seed, "request_timeout_s": r.request_timeout_s}
        if r.backend == "vllm":
            engine_kwargs |= dict(max_model_len=r.max_model_len, gpu_memory_utilization=r.gpu_memory_utilization,
                                  kv_cache_gib=r.kv_cache_gib, enforce_eager=r.enforce_eager)
        self.rollout = ActorGroup(
            RolloutWorker, r.num_engines, name="rollout", num_cpus=r.cpus_per_engine, num_gpus=r.gpus_per_engine,
            kwargs_for=lambda i: dict(backend=r.backend, model_path=model_path,
                                      engine_kwargs=engine_kwargs | {"seed": cfg.run.seed + i},
                                      env=env_client, agent=agent),
            timeout_s=self.timeout)
        rewards, composition, judge = scoring["rewards"], scoring["composition"], scoring["judge"]
        self.reward_columns = RewardWorker(rewards, composition, judge).columns  # what the RewardGroup receives
        self.reward = ActorGroup(
            RewardWorker, cfg.reward.num_workers, name="reward", num_cpus=cfg.reward.cpus_per_worker,
            kwargs_for=lambda i: dict(rewards=rewards, composition=composition, judge=judge), timeout_s=self.timeout)
        algo = to_dict(cfg.algo) | {"norm_len": r.max_tokens}
        extra = dict(token_budget=t.token_budget, packing=t.packing, grad_checkpointing=t.grad_checkpointing,
                     attn_implementation=t.attn_implementation,
                     lora=({"rank": t.lora_rank, "alpha": t.lora_alpha}
                           | ({"target_modules": t.lora_target_modules} if t.lora_target_modules else {}))
                     if t.lora_rank else None)
        if t.backend == "deepspeed":
            extra["zero_stage"] = t.zero_stage
        self.trainer = ActorGroup(  # FSDP2 or DeepSpeed ZeRO behind one interface (rl/trainer/base.py)
            backend_class(t.backend), t.num_ranks, name="trainer", num_cpus=t.cpus_per_rank, num_gpus=t.gpus_per_rank,
            kwargs_for=lambda i: dict(model_path=model_path, rank=i, world_size=t.num_ranks, lr=t.lr,
                                      weight_decay=t.weight_decay, betas=t.betas, grad_clip=t.grad_clip,
                                      warmup_steps=t.warmup_steps, micro_batch_size=t.micro_batch_size,
                                      mini_batches=t.mini_batches, dtype=cfg.model.dtype, seed=t.seed,
                                      temperature=r.temperature, algo=algo, timeout_s=self.timeout,
                                      registries=algos.snapshot_registries(), **extra),
            timeout_s=self.timeout)
        addr, port = self.trainer.rendezvous()
        self.trainer.call("init_distributed", addr, port)
        self.transport = self._make_transport(cfg)
        self.sampling = dict(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p)
        self.dispatcher = Dispatcher(self.rollout.actors, r.n, self.sampling, r.max_inflight_groups)

    def generate(self, tasks: list[dict], n: int | None = None, sampling: dict | None = None,
                 progress: str | None = None) -> pa.RecordBatch:
        """All samples of a task go to one engine (shared prefix); each task goes to the least-loaded
        engine as groups finish (rl/rollout_queue.py). Rows ordered (group, sample). `progress`: the name
        of a progress bar over finished groups (evaluations; run.progress=false turns it off)."""
        if not self.cfg.run.progress:
            progress = None
        n = n or self.cfg.rollout.n
        if sampling is not None:
            tasks = [dict(t, sampling=sampling) for t in tasks]
        parts = self.dispatcher.run([dict(t, n=n) for t in tasks], self.timeout,
                                    f"rollout of {len(tasks)} tasks x {n} samples", progress)
        batch = concat(parts)
        order = np.lexsort((scalar_numpy(batch, "sample"), scalar_numpy(batch, "group")))
        return validate(batch.take(pa.array(order)))

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Only the columns the rewards read travel to the RewardGroup; reward columns come back."""
        view = project(batch, self.reward_columns)
        bounds = np.linspace(0, batch.num_rows, self.reward.num + 1).astype(int)
        shards = [view.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
        parts = self.reward.call_split("score", shards)
        return with_columns(batch, {name: pa.concat_arrays([p.column(name) for p in parts])
                                    for name in parts[0].schema.names})

    def train(self, batch: pa.RecordBatch) -> dict:
        """Whole groups per rank, balanced by tokens (SEEDS 13 item 6: never split a group).
        A DUPO copy's `dup_of` becomes an index into its rank's shard (-1 if the source is elsewhere)."""
        lengths = batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False) \
            + batch.column("prompt_ids").value_lengths().to_numpy(zero_copy_only=False)
        per_rank = algos.balance_groups(lengths, scalar_numpy(batch, "group"), self.trainer.num)
        view = project(batch, TRAIN_COLUMNS + (("images",) if "images" in batch.schema.names else ()))
        dup_of = scalar_numpy(batch, "dup_of") if "dup_of" in batch.schema.names else np.full(batch.num_rows, -1)
        shards = []
        for rows in per_rank:
            rows = np.sort(rows)
            local = {int(g): i for i, g in enumerate(rows)}
            shard_dup = np.array([local.get(int(d), -1) if d >= 0 else -1 for d in dup_of[rows]], np.int32)
            shards.append(ray.put(with_columns(view.take(pa.array(rows, pa.int64())), {"dup_of": shard_dup})))
        return self.trainer.call_split("train_step", shards)[0]

    def _make_transport(self, cfg: Config):
        from rl.weights import make_transport

        t = cfg.trainer
        opts = {"timeout_s": self.timeout}
        if t.weight_transport in ("object_store", "disk"):
            opts["window"] = t.weight_window
        if t.weight_transport == "disk":
            opts["folder"] = str(Path(cfg.run.dir or "runs").resolve() / "weights")
        if t.weight_transport == "collective":
            opts["host"], opts["port"] = self.trainer.rendezvous()
        return make_transport(t.weight_transport, num_receivers=self.rollout.num, **opts)

    def sync_weights(self, version: int, abort: bool = False) -> int:
        """Trainer full state -> every engine through the weight transport, bucket by bucket (at most
        trainer.weight_window in flight); returns the new version. Episodes in flight pause between
        turns and go on under the new weights (or, with `abort`, are cancelled and re-queued)."""
        bucket = self.cfg.trainer.weight_bucket_mb << 20
        sent = self.trainer.call_async("send_weights", self.transport, version, bucket)
        versions = wait([a.update_weights.remote(self.transport.stream(version, i), version, abort)
                         for i, a in enumerate(self.rollout.actors)],
                        self.timeout, f"weight sync to {self.rollout.num} engine(s) (version {version})")
        wait(sent, self.timeout, f"the trainer's weight send (version {version})")
        if set(versions) != {version}:
            raise RuntimeError(f"engines report policy versions {versions} after syncing version {version}")
        return version

    def probe(self) -> float:
        """Sum of logprobs of a greedy continuation of a fixed prompt: changes when weights do."""
        greedy = dict(self.sampling, temperature=0.0, max_tokens=8)
        task = [{"uid": "probe", "group": 0, "prompt_ids": self.probe_ids}]
        b = wait(self.rollout.actors[0].generate.remote(task, 1, greedy), self.timeout, "the probe generation")
        return float(np.sum(b.column("rollout_logprobs")[0].values.to_numpy()))

    def rollout_metrics(self) -> dict:
        """Groups each engine finished since the last call (routing balance) and the env servers' tool metrics."""
        now = list(self.dispatcher.groups_per_engine)
        last = getattr(self, "_groups_seen", [0] * len(now))
        self._groups_seen = now
        out = {f"rollout/groups_engine{i}": g - g0 for i, (g, g0) in enumerate(zip(now, last))}
        if self.env is not None:
            out |= self.env.metrics()
        return out

    def shutdown(self) -> None:
        transport = getattr(self, "transport", None)
        if transport is not None:
            try:
                transport.close()
            except Exception as err:  # shutting down: report, keep going
                print(f"warning: closing the weight transport: {err}")
        for g in ("rollout", "reward", "trainer", "env"):
            group = getattr(self, g, None)
            if group is not None:
                try:
                    if g == "rollout":
                        group.call("shutdown", timeout_s=60)
                    group.shutdown()
                except Exception as err:  # shutting down: report, keep going
                    print(f"warning: shutting down {g}: {err}")
