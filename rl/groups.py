"""The actor groups of one run (RolloutGroup, RewardGroup, TrainerGroup and the EnvGroup of
multi-turn tasks) and how a batch moves between them: the machinery under the loop of
`rl/controller.py`.

Never: decide the order of a step (the controller does), compute a loss or a reward, or wait
without a timeout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from rl import algos
from rl.cluster import ActorGroup, connect, node_free_port, wait
from rl.config import Config, loads_reference, to_dict
from rl.placement import Colocation, cpu_threads, node_cores, resolve_placement, weight_transport_for
from rl.rollout_queue import Dispatcher
from rl.tasks import load_tasks
from rl.trainer.collate import TRAIN_COLUMNS
from rollout.trajectory import concat, project, scalar_numpy, validate, with_columns


def resolve_model_path(cfg: Config) -> str:
    """The policy's model folder: the tiny models and the registry-package models (rl/pretrained.py) are built
    offline once and cached; anything else is `model.path` as given (a folder or a hub name)."""
    from rl.models import build_tiny_model, build_tiny_vl_model
    from rl.pretrained import LOCAL_MODELS

    builders = {"tiny": build_tiny_model, "tiny_vl": build_tiny_vl_model}
    world = {"world_seed": cfg.env.world_seed, "world_size": cfg.env.world_size} \
        if cfg.model.tokenizer == "world" else {}
    if cfg.model.path in builders:
        return str(builders[cfg.model.path](tokenizer=cfg.model.tokenizer, **world, **cfg.model.tiny))
    if cfg.model.path in LOCAL_MODELS:
        return str(LOCAL_MODELS[cfg.model.path]())
    return cfg.model.path


class RLGroups:
    """The actor groups of one run and the moves of a batch between them."""

    def __init__(self, cfg: Config, train: bool = True):
        """train=False: the rollout, reward and env groups only (evaluation, launch/evaluate.py)."""
        from transformers import AutoTokenizer

        from reward.worker import RewardWorker
        from rl.trainer.backends import backend_class
        from rollout.worker import RolloutWorker

        self.cfg = cfg
        r, t = cfg.rollout, cfg.trainer
        self.timeout = cfg.run.stage_timeout_s
        model_path = resolve_model_path(cfg)
        self.model_path = model_path
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tasks, scoring = load_tasks(cfg, tokenizer)
        first = self.tasks[0]
        self.probe_ids = first.get("prompt_ids") or tokenizer.apply_chat_template(
            [{"role": "user", "content": first["question"]}], add_generation_prompt=True, tokenize=True)["input_ids"]
        multi_turn = cfg.data.task != "target_token"

        em = cfg.embedding
        serve_embeddings = multi_turn and bool(em.models or em.rerankers)  # one server per node (rl/cluster.py)
        cpus = r.num_engines * r.cpus_per_engine + t.num_ranks * t.cpus_per_rank \
            + cfg.reward.num_workers * cfg.reward.cpus_per_worker \
            + (cfg.env.num_servers * cfg.env.cpus_per_server if multi_turn else 0) \
            + (cfg.embedding.num_cpus if serve_embeddings else 0)
        self.how = connect(cfg.ray.address, cfg.ray.num_cpus, cpus_needed=cpus)
        gpu = r.gpus_per_engine > 0 or t.gpus_per_rank > 0
        self.placement = resolve_placement(cfg.ray.placement, r.mode, sum(n["Alive"] for n in ray.nodes()))
        engine_threads, rank_threads = (0, 0) if gpu else cpu_threads(self.placement, node_cores(), r.num_engines,
                                                                      t.num_ranks)
        shared_pg = None
        engine_gpus, rank_gpus = r.gpus_per_engine, t.gpus_per_rank
        if self.placement == "colocated" and gpu:  # one GPU per bundle, half for an engine, half for a rank
            from ray.util.placement_group import placement_group

            bundles = max(r.num_engines, t.num_ranks)
            shared_pg = placement_group([{"GPU": 1, "CPU": max(r.cpus_per_engine, t.cpus_per_rank) * 2}] * bundles,
                                        strategy="PACK", name="windward-colocated")
            wait(shared_pg.ready(), self.timeout, f"the colocated placement group ({bundles} x 1 GPU)")
            engine_gpus, rank_gpus = 0.5, 0.5
        self.embedding = None  # the embedding servers, one per node, before everything that reaches them
        if serve_embeddings:
            from rl.cluster import embedding_servers

            self.embedding = embedding_servers(em.models, em.rerankers, num_cpus=em.num_cpus,
                                               timeout_s=em.start_timeout_s, max_batch=em.max_batch,
                                               max_wait_ms=em.max_wait_ms)
        self.env = None
        if multi_turn:
            from rl.env_group import EnvGroup

            e = cfg.env
            self.env = EnvGroup(tools=e.tools, num_servers=e.num_servers, num_cpus=e.cpus_per_server,
                                world={"seed": e.world_seed, "size": e.world_size, "latency_s": e.page_latency_s},
                                limits=e.limits, ready_timeout_s=self.timeout)
        agent = to_dict(cfg.agent) if multi_turn else None
        self.memory = None  # Memp's store, shared by every rollout worker through agent.hooks (rl/memory_group.py)
        if multi_turn and cfg.memory.enabled:
            from rl.memory_group import HOOKS, MemoryGroup

            self.memory = MemoryGroup(cfg.memory, cfg.run.seed, self.timeout)
            agent["hooks"] = HOOKS
        env_client = self.env.client() if self.env is not None else None

        engine_kwargs = {"seed": cfg.run.seed, "request_timeout_s": r.request_timeout_s,
                         "cpu_threads": engine_threads, "sleep_mode": shared_pg is not None}
        if r.backend == "vllm":
            engine_kwargs |= dict(max_model_len=r.max_model_len, gpu_memory_utilization=r.gpu_memory_utilization,
                                  kv_cache_gib=r.kv_cache_gib, enforce_eager=r.enforce_eager,
                                  tensor_parallel_size=r.tensor_parallel_size, dtype=r.dtype)
        per_actor, time_scale = 1, 1.0
        if r.backend == "sim":  # the latency model; many simulated engines share one actor process
            sim = dict(r.sim)
            per_actor, time_scale = sim.pop("engines_per_actor", 1), sim.get("time_scale", 1.0)
            engine_kwargs |= sim
        if r.backend == "openai":  # an OpenAI-compatible endpoint as the policy (evaluation)
            engine_kwargs |= dict(r.openai)
        self.rollout = ActorGroup(
            RolloutWorker, r.num_engines, name="rollout", num_cpus=r.cpus_per_engine, num_gpus=engine_gpus, pg=shared_pg,
            kwargs_for=lambda i: dict(backend=r.backend, model_path=model_path,
                                      engine_kwargs=engine_kwargs | {"seed": cfg.run.seed + i},
                                      env=env_client, agent=agent),
            timeout_s=self.timeout, per_actor=per_actor)
        rewards, composition, judge = scoring["rewards"], scoring["composition"], scoring["judge"]
        self.reward_columns = RewardWorker(rewards, composition, judge).columns  # what the RewardGroup receives
        self.reward = ActorGroup(
            RewardWorker, cfg.reward.num_workers, name="reward", num_cpus=cfg.reward.cpus_per_worker,
            kwargs_for=lambda i: dict(rewards=rewards, composition=composition, judge=judge), timeout_s=self.timeout)
        if not train:  # evaluation only: no trainer, no weight transport
            self.trainer = self.colocation = self.transport = None
            self.sampling = dict(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p)
            self.dispatcher = Dispatcher(self.rollout.actors, r.n, self.sampling, r.max_inflight_groups)
            return
        algo = to_dict(cfg.algo) | {"norm_len": r.max_tokens}
        if not loads_reference(cfg):
            algo["kl_coef"] = 0.0  # no stage trains with RL: no KL term, so no reference model to load
        extra = dict(token_budget=t.token_budget, packing=t.packing, grad_checkpointing=t.grad_checkpointing,
                     attn_implementation=t.attn_implementation,
                     lora=({"rank": t.lora_rank, "alpha": t.lora_alpha}
                           | ({"target_modules": t.lora_target_modules} if t.lora_target_modules else {}))
                     if t.lora_rank else None)
        if t.backend == "deepspeed":
            extra["zero_stage"] = t.zero_stage
        if t.backend == "sim":
            extra |= {"sim": t.sim, "time_scale": time_scale}
        self.trainer = ActorGroup(  # FSDP2 or DeepSpeed ZeRO behind one interface (rl/trainer/base.py)
            backend_class(t.backend), t.num_ranks, name="trainer", num_cpus=t.cpus_per_rank, num_gpus=rank_gpus,
            pg=shared_pg,
            kwargs_for=lambda i: dict(model_path=model_path, rank=i, world_size=t.num_ranks, lr=t.lr,
                                      weight_decay=t.weight_decay, betas=t.betas, grad_clip=t.grad_clip,
                                      warmup_steps=t.warmup_steps, micro_batch_size=t.micro_batch_size,
                                      mini_batches=t.mini_batches, dtype=cfg.model.dtype, seed=t.seed,
                                      temperature=r.temperature, algo=algo, timeout_s=self.timeout,
                                      registries=algos.snapshot_registries(), threads=rank_threads,
                                      logprob_chunk_mb=t.logprob_chunk_mb, entropy_every=t.entropy_every, **extra),
            timeout_s=self.timeout)
        addr, port = self.trainer.rendezvous()
        self.trainer.call("init_distributed", addr, port)
        self.colocation = Colocation(self.rollout, self.trainer, active=shared_pg is not None, offload=t.offload,
                                     timeout_s=self.timeout)
        self.transport = self._make_transport(cfg)
        self.sampling = dict(max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p)
        self.dispatcher = Dispatcher(self.rollout.actors, r.n, self.sampling, r.max_inflight_groups)

    def generate(self, tasks: list[dict], n: int | None = None, sampling: dict | None = None,
                 progress: str | None = None, seed: int | None = None) -> pa.RecordBatch:
        """All samples of a task go to one engine (shared prefix); each task goes to the least-loaded
        engine as groups finish (rl/rollout_queue.py). Rows ordered (group, sample). `sampling`: instead of
        the run's; `seed`: the sampling seed of this rollout. `progress`: the name of a progress bar over
        finished groups (evaluations; run.progress=false turns it off)."""
        if not self.cfg.run.progress:
            progress = None
        n = n or self.cfg.rollout.n
        if sampling is not None or seed is not None:
            sampling = dict(sampling if sampling is not None else self.sampling)
            if seed is not None:
                sampling["seed"] = seed
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

    def train(self, batch: pa.RecordBatch, version: int) -> dict:
        """Whole groups per rank, balanced by tokens (SEEDS 13 item 6: never split a group).
        A DUPO copy's `dup_of` becomes an index into its rank's shard (-1 if the source is elsewhere).
        `version`: the policy version the trainer holds; rows all generated by it make an on-policy update
        (the trainer then skips the old-logprob pass). Colocated on GPU, the engines sleep meanwhile."""
        on_policy = bool((scalar_numpy(batch, "policy_version") == version).all())
        lengths = batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False) \
            + batch.column("prompt_ids").value_lengths().to_numpy(zero_copy_only=False)
        per_rank = algos.balance_groups(lengths, scalar_numpy(batch, "group"), self.trainer.num)
        view = project(batch, TRAIN_COLUMNS + (("images",) if "images" in batch.schema.names else ()))
        dup_of = scalar_numpy(batch, "dup_of") if "dup_of" in batch.schema.names else np.full(batch.num_rows, -1)
        shards = []
        for rows in per_rank:
            rows = np.sort(rows)
            shard_dup = local_index(rows, dup_of[rows])
            # one rank takes every row in order: the batch itself, no copy before the object store's
            part = view if len(rows) == view.num_rows else view.take(pa.array(rows, pa.int64()))
            shards.append(ray.put(with_columns(part, {"dup_of": shard_dup})))
        with self.colocation.trainer_phase():
            return self.trainer.call_split("train_step", shards, on_policy=on_policy)[0]

    def reset_reference(self) -> None:
        """The trainer's reference model (`algo.kl_coef` > 0) takes the policy's current weights: an RL stage
        calls it as it starts, so that its KL term is to the policy it starts from (`TrainerBackend.reset_reference`)."""
        if loads_reference(self.cfg):
            with self.colocation.trainer_phase():
                self.trainer.call("reset_reference")

    def _make_transport(self, cfg: Config):
        from rl.weights import make_transport

        t, r = cfg.trainer, cfg.rollout
        gpu = r.gpus_per_engine > 0 or t.gpus_per_rank > 0
        kind = weight_transport_for(t.weight_transport, gpu=gpu, placement=self.placement,
                                    num_nodes=sum(n["Alive"] for n in ray.nodes()),
                                    simulated="sim" in (r.backend, t.backend), num_engines=r.num_engines,
                                    num_ranks=t.num_ranks)
        opts = {"timeout_s": self.timeout}
        if r.backend == "vllm" and (r.gpus_per_engine > 0 or r.dtype != "auto"):  # buckets packed in the engines'
            from rollout.engines.vllm_engine import serving_dtype  # serving dtype

            opts["dtype"] = serving_dtype(gpu=r.gpus_per_engine > 0, dtype=r.dtype)
        if kind in ("object_store", "disk"):
            opts["window"] = t.weight_window
        if kind == "disk":
            opts["folder"] = str(Path(cfg.run.dir or "runs").resolve() / "weights")
        if kind == "ipc" and gpu:  # CUDA IPC opens only on the GPU holding the memory: each rank serves its own
            return self._per_rank_ipc(opts)
        if kind in ("collective", "ipc"):
            opts["host"], opts["port"] = self.trainer.rendezvous()
        return make_transport(kind, num_receivers=self.rollout.num, **opts)

    def _per_rank_ipc(self, opts: dict):
        """ipc with one part per engine, sent by the trainer rank on the engine's GPU (colocated: bundle i holds
        engine i and rank i), each part's rendezvous on that rank's node (rl/weights/per_rank.py)."""
        from rl.weights import PerRankTransport, make_transport

        engines, ranks = self.rollout.num, self.trainer.num
        if self.placement != "colocated" or engines > ranks:
            raise ValueError(f"trainer.weight_transport=ipc on GPUs needs every engine on a trainer rank's GPU "
                             f"(ray.placement=colocated, rollout.num_engines <= trainer.num_ranks); placement "
                             f"{self.placement}, {engines} engine(s), {ranks} rank(s): use collective or auto")
        addresses = wait([a.__ray_call__.remote(_node_and_free_port) for a in self.trainer.actors[:engines]],
                         self.timeout, f"a free port on the node of each of trainer ranks 0-{engines - 1}",
                         [f"trainer rank {i}" for i in range(engines)])
        if len(set(addresses)) < len(addresses):  # two ranks of one node drew the same free port: draw again
            addresses = [(host, port) if i == 0 or (host, port) not in addresses[:i] else
                         wait(self.trainer.actors[i].__ray_call__.remote(_node_and_free_port), self.timeout,
                              f"another free port on the node of trainer rank {i}")
                         for i, (host, port) in enumerate(addresses)]
        return PerRankTransport([make_transport("ipc", num_receivers=1, host=host, port=port, **opts)
                                 for host, port in addresses])

    def sync_weights(self, version: int, abort: bool = False) -> int:
        """Trainer full state -> every engine through the weight transport, bucket by bucket (at most
        trainer.weight_window in flight); returns the new version. Episodes in flight pause between
        turns and go on under the new weights (or, with `abort`, are cancelled and re-queued)."""
        bucket = self.cfg.trainer.weight_bucket_mb << 20
        sent = self.trainer.call_async("send_weights", self.transport, version, bucket)
        versions = wait([a.update_weights.remote(self.transport.stream(version, i), version, abort)
                         for i, a in enumerate(self.rollout.actors)],
                        self.timeout, f"weight sync to {self.rollout.num} engine(s) (version {version})",
                        self.rollout.rank_names())
        wait(sent, self.timeout, f"the trainer's weight send (version {version})", self.trainer.rank_names())
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
        """Since the last call: groups each engine finished (routing balance); episodes that ended in an error
        (`rollout/episode_errors`, and per exception class), model turns that were no valid action
        (`rollout/invalid_actions`), tool calls that met a dead or restarting env server or timed out
        (`env_client/server_died`, `env_client/timeouts`), the judge's counters (`judge/failures`: judgements given
        the fallback score, `judge/retries`, ...). Then the env servers' tool metrics and counters (EnvGroup)."""
        now = list(self.dispatcher.groups_per_engine)
        last = getattr(self, "_groups_seen", [0] * len(now))
        self._groups_seen = now
        out = {f"rollout/groups_engine{i}": g - g0 for i, (g, g0) in enumerate(zip(now, last))}
        counts = {k: v for k, v in summed(self.rollout.call("counters")).items()
                  if k.startswith(("episode_errors", "invalid_actions", "env_client/"))}
        seen = getattr(self, "_counts_seen", {})
        self._counts_seen = counts
        out["rollout/episode_errors"] = 0
        out |= {(k if k.startswith("env_client/") else f"rollout/{k}"): v - seen.get(k, 0) for k, v in counts.items()}
        judge = summed(self.reward.call("metrics", reset=True))
        if judge.get("judge/items"):  # rates of the sums, not sums of rates
            judge["judge/failure_rate"] = judge["judge/failures"] / judge["judge/items"]
            judge["judge/cache_hit_rate"] = judge["judge/cache_hits"] / judge["judge/items"]
        out |= judge
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
        for g in ("rollout", "reward", "trainer", "env", "memory"):
            group = getattr(self, g, None)
            if group is not None:
                try:
                    if g == "rollout":
                        group.call("shutdown", timeout_s=60)
                    group.shutdown()
                except Exception as err:  # shutting down: report, keep going
                    print(f"warning: shutting down {g}: {err}")
        for handle in getattr(self, "embedding", None) or ():
            try:
                ray.kill(handle)
            except Exception as err:  # shutting down: report, keep going
                print(f"warning: ending an embedding server: {err}")


def _node_and_free_port(_worker) -> tuple[str, int]:
    """`node_free_port` in a trainer rank's process (`__ray_call__`)."""
    return node_free_port()


def local_index(rows: np.ndarray, source: np.ndarray) -> np.ndarray:
    """For each `source` row index (-1: none), its position in the sorted `rows`, or -1 when it is not there."""
    if not len(rows):
        return np.zeros(0, np.int32)
    pos = np.minimum(np.searchsorted(rows, source), len(rows) - 1)
    return np.where((source >= 0) & (rows[pos] == source), pos, -1).astype(np.int32)


def summed(rows: list[dict]) -> dict:
    """The workers' numeric metrics summed key by key; a key ending in `max_latency_s` takes the maximum and one
    ending in `mean_latency_s` the mean over workers."""
    out: dict = {}
    for row in rows:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = max(out.get(key, value), value) if key.endswith("max_latency_s") else out.get(key, 0) + value
    for key in [k for k in out if k.endswith("mean_latency_s")]:
        out[key] /= max(1, len(rows))
    return out
