"""The stages recipes are made of, on one set of actor groups (rl/groups.py RLGroups):

    synthesize -> expert trajectories -> RFT filter -> SFT -> evaluate -> RL (rl/controller.train) -> report

Each stage is a function of the config, the groups and what earlier stages returned; a recipe script
(launch/websailor.py, ...) is the short story that calls them in order. Everything a stage produces
lands in the run folder: tasks (jsonl), trajectories (parquet), metrics (jsonl), plots (PNG), report.md.

Never: hold state between stages other than what is passed along; wait without a timeout (the groups'
calls all have one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from rl import algos
from rl.config import TINY_MODELS, Config, ConfigError, to_dict
from rl.evaluate import evaluate, paired_difference, trend_line
from rl.sft_data import SFTBatches, rft_filter, write_trajectories
from rollout.engines.base import derive_seed
from rollout.trajectory import build_batch, concat, project, scalar_numpy, with_columns


# --- data -----------------------------------------------------------------------------------------


def synthesize(cfg: Config, run_dir: Path) -> dict:
    """SailorFog-QA on the world (SEEDS 3.2): disjoint questions for the expert (SFT), for RL and held out
    for evaluation. Written to run_dir/data/*.jsonl."""
    from envs.world import generate_world, sailorfog_qa

    world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
    wanted = cfg.sft.expert_tasks + cfg.data.num_tasks + cfg.eval.num_tasks
    items = sailorfog_qa(world, n=wanted, seed=cfg.run.seed, nodes=tuple(cfg.data.qa_nodes),
                         anchor_rate=cfg.data.qa_anchor_rate, one_page=cfg.data.qa_one_page)
    if len(items) < wanted:
        raise ValueError(f"the {cfg.env.world_size} world (seed {cfg.env.world_seed}) yielded {len(items)} distinct "
                         f"questions, fewer than sft.expert_tasks + data.num_tasks + eval.num_tasks = {wanted}; "
                         "use a larger env.world_size or fewer tasks")
    a, b = cfg.sft.expert_tasks, cfg.sft.expert_tasks + cfg.data.num_tasks
    split = {"expert": items[:a], "rl": items[a:b], "heldout": items[b:wanted]}
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"world": world, **split, "heldout_tags": fact_tags(split["expert"], split["heldout"])}


SEEN, NEW = "answer fact in the SFT data", "new answer fact"


def fact_tags(expert: list[dict], heldout: list[dict]) -> list[str]:
    """Per held-out question: whether an expert (SFT) question had the same answer (entity and value).
    Questions are distinct, but a small world repeats facts; the split tells recall from reading."""
    seen = {(it["answer_entity"], str(it["answer"])) for it in expert}
    return [SEEN if (it["answer_entity"], str(it["answer"])) in seen else NEW for it in heldout]


def file_splits(cfg: Config, run_dir: Path) -> dict:
    """Tasks from data.path: the last eval.num_tasks are held out, the rest are for RL."""
    from rl.data import file_tasks

    tasks = file_tasks(cfg.data.path)
    if len(tasks) <= cfg.eval.num_tasks:
        raise ValueError(f"{cfg.data.path}: {len(tasks)} tasks, not more than eval.num_tasks = {cfg.eval.num_tasks}")
    return {"world": None, "expert": [], "rl": tasks[:-cfg.eval.num_tasks][:cfg.data.num_tasks],
            "heldout": tasks[-cfg.eval.num_tasks:]}


def as_tasks(items: list[dict]) -> list[dict]:
    """What a rollout needs of a synthesized item (the sub-graph stays with the expert)."""
    keys = ("uid", "question", "answer", "gold_ids")
    return [{k: it[k] for k in keys if k in it} for it in items]


# --- expert trajectories and the RFT filter ---------------------------------------------------------


def expert_trajectories(cfg: Config, groups, world, items: list[dict], run_dir: Path,
                        expert_cls=None) -> pa.RecordBatch:
    """A scripted expert (default: envs/world/expert.py WorldExpert) answers each item through the real
    agent loop, the policy's chat template and the EnvGroup's tools; the RewardGroup scores them."""
    from transformers import AutoTokenizer

    from envs.world.expert import WorldExpert
    from rollout.agent import AgentConfig, run_episode
    from rollout.engines import SamplingParams
    from rollout.scripted import TextPolicyEngine
    from rollout.worker import _task_columns, agent_template

    expert_cls = expert_cls or WorldExpert
    from rollout.vision import VisionSpec

    tok = AutoTokenizer.from_pretrained(groups.model_path)
    client = groups.env.client()
    vision = VisionSpec.from_model(groups.model_path, tok)  # a VL policy: image observations in the ids
    template, fmt = agent_template(tok, client.tool_schemas(), cfg.agent.format, cfg.agent.system_prompt, vision)
    agent = AgentConfig(**{k: v for k, v in to_dict(cfg.agent).items() if k not in ("format", "system_prompt", "hooks")})
    sampling = SamplingParams(max_tokens=cfg.agent.max_tokens_per_turn)

    from tqdm import tqdm

    bar = tqdm(total=len(items), desc="expert", unit="episode", disable=not cfg.run.progress)

    async def one(i, item):
        task = dict(as_tasks([item])[0], group=i)
        kwargs = {"thoughts": cfg.sft.expert_thoughts} if issubclass(expert_cls, WorldExpert) else {}
        engine = TextPolicyEngine(expert_cls(world, item, groups.env.base_url, **kwargs).next_turn, tok)
        ep = await run_episode(engine, client, template, task, sampling, agent, fmt)
        bar.update(1)
        return _task_columns(build_batch([ep.record], with_images=vision is not None), task)

    async def run_all():
        try:
            return await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))
        finally:
            bar.close()

    parts = asyncio.run(run_all())
    batch = concat(parts)
    texts = [tok.decode(ids, skip_special_tokens=False) for ids in batch.column("response_ids").to_pylist()]
    batch = groups.score(with_columns(batch, {"response_text": texts}))
    write_trajectories(run_dir / "trajectories" / "expert.parquet", batch)
    return batch


def rft(cfg: Config, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
    """Rejection sampling: correct answers, a length bound, a minimum number of tool calls (SEEDS 3.3)."""
    return rft_filter(batch, correct_parts=(cfg.reward.correct_part,), max_tokens=cfg.sft.max_tokens,
                      min_tool_calls=cfg.sft.min_tool_calls, dedup=True)


# --- SFT ------------------------------------------------------------------------------------------


def sft_lr(step: int, total: int, lr: float, schedule: str = "constant", min_lr_ratio: float = 0.1) -> float:
    """The peak learning rate of SFT step `step` (1-based) of `total`: constant, or a cosine from `lr` at
    step 1 down to `min_lr_ratio * lr` at step `total`. The trainer's warm-up scales it on top."""
    if schedule == "constant" or total <= 1:
        return lr
    if schedule != "cosine":
        raise ValueError(f"sft.lr_schedule: unknown schedule {schedule!r} (constant or cosine)")
    progress = (min(max(step, 1), total) - 1) / (total - 1)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sft(cfg: Config, groups, data: pa.RecordBatch, run_dir: Path, version: int) -> tuple[list[dict], int]:
    """Next-token loss on the model's own tokens (observations masked, SEEDS 3.4) on the TrainerGroup,
    then the new weights go to the engines. Returns (metrics per step, the policy_version served)."""
    from tqdm import tqdm

    columns = ["prompt_ids", "response_ids", "loss_mask"] + (["images"] if "images" in data.schema.names else [])
    batches = SFTBatches(project(data, columns), cfg.sft.batch_size, seed=cfg.run.seed, epochs=cfg.sft.epochs,
                         columns=columns)
    groups.trainer.call("set_lr", cfg.sft.lr)
    total = len(batches)  # len() counts the batches still to come: taken before the first
    history = []
    log = (run_dir / "sft_metrics.jsonl").open("a")
    try:
        for step, batch in enumerate(tqdm(batches, desc="sft", total=total, disable=not cfg.run.progress), 1):
            if cfg.sft.lr_schedule != "constant":
                groups.trainer.call("set_lr", sft_lr(step, total, cfg.sft.lr, cfg.sft.lr_schedule,
                                                     cfg.sft.min_lr_ratio))
            lengths = sum(batch.column(c).value_lengths().to_numpy(zero_copy_only=False) for c in columns[:2])
            per_rank = algos.balance_groups(lengths, np.arange(batch.num_rows), groups.trainer.num)
            shards = [batch.take(pa.array(np.sort(r), pa.int64())) for r in per_rank]
            metrics = groups.trainer.call_split("sft_step", shards)[0] | {"step": step}
            history.append(metrics)
            log.write(json.dumps(metrics) + "\n")
            log.flush()
    finally:
        log.close()
    groups.trainer.call("set_lr", cfg.trainer.lr)
    return history, groups.sync_weights(version + 1)


# --- the stage loop -------------------------------------------------------------------------------


def rft_expert(cfg: Config, data: dict, run_dir: Path, expert_cls=None):
    """The expert stage of WebSailor and VRAG-RL: expert trajectories (`expert_cls`, default WorldExpert),
    then the RFT filter. Returns `expert(groups) -> (sft data, results to add)` for `run_pipeline`."""
    def expert(groups):
        batch = expert_trajectories(cfg, groups, data["world"], data["expert"], run_dir, expert_cls=expert_cls)
        sft_data, counts = rft(cfg, batch)
        print(f"expert trajectories: {counts}", flush=True)
        return sft_data, {"rft": counts}

    return expert


PIPELINE_STATE = "pipeline_state.json"  # in the run folder: the stages done, their results, the policy_version
SFT_CHECKPOINT = "stage_checkpoints/sft"  # in the run folder: the trainer as the sft stage left it


def check_rl_batch(cfg: Config, questions: int) -> None:
    """ConfigError when an rl stage would draw batches of data.batch_size from fewer RL questions: found before
    any actor starts (launch/common.py: exit 2), not by the task sampler hours later."""
    if "rl" in cfg.pipeline.stages and questions < cfg.data.batch_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} is more than the {questions} RL questions "
                          f"(data.num_tasks={cfg.data.num_tasks}): lower data.batch_size or give more questions")


def run_pipeline(cfg: Config, run_dir: Path, data: dict, expert, results: dict | None = None) -> dict:
    """`cfg.pipeline.stages` in order on one set of actor groups: expert (`expert(groups) -> (sft data,
    results to add)`), sft, rl (on data["rl"]), eval_<name> (on data["heldout"]); then the plots.
    Returns the results (`results` plus what each stage added).

    With `run.save_every` > 0 the trainer is checkpointed at the end of the sft stage (the rl stage
    checkpoints itself) and every finished stage is recorded with its results; `run.resume` then skips the
    stages done (see `resumable_prefix`) and restores the trainer as the last of them left it."""
    from rl.controller import train
    from rl.groups import RLGroups

    t0 = time.perf_counter()
    heldout = as_tasks(data["heldout"])
    check_rl_batch(cfg, len(data["rl"]))
    plan = resume_plan(cfg, run_dir)  # a refused change stops the run here, before any actor starts
    groups = RLGroups(cfg)
    print(f"actor groups up after {time.perf_counter() - t0:.0f} s", flush=True)
    results, version, sft_data = dict(results or {}), 0, None
    try:
        done, version = resume_pipeline(plan, groups, results)
        for stage in cfg.pipeline.stages:
            if stage in done:
                print(f"--- stage {stage}: done in an earlier run of {run_dir} (run.resume)", flush=True)
                continue
            print(f"--- stage {stage} (at {time.perf_counter() - t0:.0f} s)", flush=True)
            if stage == "expert":
                sft_data, found = expert(groups)
                results |= found
            elif stage == "sft":
                results["sft"], version = sft(cfg, groups, sft_data, run_dir, version)
                if cfg.run.save_every:
                    save_stage_checkpoint(groups, run_dir / SFT_CHECKPOINT)
            elif stage == "rl":
                summary = train(cfg, run_dir, groups=groups, tasks=as_tasks(data["rl"]), start_version=version)
                results["rl"], version = summary["history"], summary["policy_version"]
            else:
                results[stage] = evaluation(cfg, groups, heldout, stage[5:], run_dir, data.get("heldout_tags"))
            done.append(stage)
            if cfg.run.save_every:
                write_json_atomic(run_dir / PIPELINE_STATE, {"done": done, "policy_version": version,
                                                              "results": results, "config": to_dict(cfg)})
    finally:
        groups.shutdown()
    plots(run_dir, results.get("rl", []), results.get("sft", []))
    return results


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else float(o)))
    tmp.replace(path)


def save_stage_checkpoint(groups, folder: Path) -> None:
    """The trainer's sharded state (model, optimizer, schedule, RNG) into `folder`, written beside it and
    renamed into place, so a crash leaves the previous one or none, never half of one."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    groups.trainer.call("save_checkpoint", str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


# settings that may differ in a resumed run: read by no stage, or only by the rl stage when it runs now
RESUME_FREE = ("run.resume", "run.dir", "run.name", "run.progress", "run.stage_timeout_s", "run.loggers",
               "run.save_trajectories", "run.save_every", "run.keep_last", "ray.", "pipeline.")
RESUME_RL = ("algo.", "trainer.", "rollout.", "run.steps", "data.batch_size")
RESUME_FROZEN_RL = ("trainer.lora", "trainer.backend")  # the trained state's own shape: never after sft
RESUME_RL_ONLY = ("rollout.seed",)  # the rollout settings no evaluation reads


def flat_settings(d: dict, prefix: str = "") -> dict:
    """{"section.key[.sub]": value} of a config dict (`to_dict`)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= flat_settings(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(before: dict, now: dict, skipped: list[str]) -> list[str]:
    """The settings that differ between the run that finished the `skipped` stages (its config, `before`)
    and this one, as lines to print; raises ConfigError, naming the key and both values, for a change the
    skipped stages' results depend on (the world, the questions, the model, SFT, evaluation), or one that
    would be silently ignored (an rl setting when the rl stage is done)."""
    if not skipped or not before:
        return []
    # as JSON holds them (the record is read back from JSON: a tuple there is a list)
    old, new = (flat_settings(json.loads(json.dumps(d, default=str))) for d in (before, now))
    lines, refused = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key) or key.startswith(RESUME_FREE):
            continue
        change = f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        if not key.startswith(RESUME_RL) or key.startswith(RESUME_FROZEN_RL):
            refused.append(f"{change}: the stages done ({', '.join(skipped)}) ran with the first")
        elif "rl" not in skipped:
            lines.append(f"{change} (read by the stages that run now)")
        elif key.startswith("rollout.") and not key.startswith(RESUME_RL_ONLY):
            lines.append(f"{change} (read by the evaluations that run now)")
        else:
            refused.append(f"{change}: the rl stage is done, so it would be ignored")
    if refused:
        raise ConfigError("run.resume: settings changed since the earlier run of this folder:\n  "
                          + "\n  ".join(refused) + "\nresume with the earlier values, or start a new run.dir")
    return lines


def resumable_prefix(stages: list[str], done: list[str], has: dict[str, bool]) -> list[str]:
    """The stages a resumed run skips: the longest prefix of `stages` that an earlier run finished (`done`)
    and whose trainer state can be restored (`has[stage]`: a checkpoint of the state it left, for sft and rl).
    expert is skipped only with the sft after it (its trajectories are sft's input, not kept)."""
    prefix = []
    for stage in stages:
        if stage not in done or (stage in has and not has[stage]):
            break
        prefix.append(stage)
    if "expert" in prefix and "sft" in stages[len(prefix):]:
        prefix.remove("expert")
    return prefix


@dataclasses.dataclass
class ResumePlan:
    """What run.resume skips (`resume_plan`); `resume_pipeline` restores it once the actor groups are up."""
    state: dict  # the earlier run's PIPELINE_STATE
    skip: list[str]  # the stages done, skipped now
    trained: str | None  # the last of them that trained (sft or rl); None: none did
    checkpoint: Path | None  # the trainer state it left


def resume_plan(cfg: Config, run_dir: Path) -> ResumePlan | None:
    """run.resume: the stages to skip, with the settings given now compared with the ones they ran with (a
    change they depend on raises ConfigError, naming the key; the others are printed). Reads files only, so
    a refused resume fails before any actor starts. None: nothing to resume."""
    from rl.checkpoint import CheckpointManager

    path = run_dir / PIPELINE_STATE
    if not (cfg.run.resume and path.is_file()):
        return None
    state = json.loads(path.read_text())
    rl_ckpt = CheckpointManager(run_dir, cfg.run.keep_last).latest()
    rl_final = rl_ckpt is not None and rl_ckpt[0] >= cfg.run.steps
    has = {"sft": (run_dir / SFT_CHECKPOINT / "trainer-state.pt").is_file(), "rl": rl_final}
    skip = resumable_prefix(cfg.pipeline.stages, state["done"], has)
    if skip and "config" not in state:
        print(f"warning: {path} does not record its run's settings (written before 2026-12-06): whether the "
              "stages skipped ran with the settings given now is not checked", flush=True)
    for line in resume_changes(state.get("config", {}), to_dict(cfg), skip):
        print(f"run.resume: {line}", flush=True)
    trained = ([s for s in skip if s in has] or [None])[-1]
    checkpoint = {"rl": rl_ckpt and Path(rl_ckpt[1]), "sft": run_dir / SFT_CHECKPOINT}.get(trained)
    results = {k: v for k, v in state["results"].items() if k in skip or k not in cfg.pipeline.stages}
    return ResumePlan(dict(state, results=results), skip, trained, checkpoint)


def resume_pipeline(plan: ResumePlan | None, groups, results: dict) -> tuple[list[str], int]:
    """run.resume, once the actor groups are up: (the stages to skip, the policy_version served). Their results
    go into `results`, the trainer gets the state the last training stage of them left (the rl stage's final
    checkpoint, or the sft stage's) and the engines its weights. Nothing to skip: ([], 0)."""
    if plan is None:
        return [], 0
    if plan.trained is not None:
        groups.trainer.call("load_checkpoint", str(plan.checkpoint))
        groups.sync_weights(plan.state["policy_version"])
        print(f"resumed the pipeline after {plan.trained} from {plan.checkpoint} (policy_version "
              f"{plan.state['policy_version']})", flush=True)
    results |= plan.state["results"]
    return plan.skip, plan.state["policy_version"] if plan.trained is not None else 0


# --- evaluation -----------------------------------------------------------------------------------


def evaluation(cfg: Config, groups, tasks: list[dict], name: str, run_dir: Path,
               tags: list[str] | None = None) -> dict:
    """Pass@1 over eval.k runs and Pass@k on the held-out tasks (and per tag, with `tags`); trajectories
    kept as parquet."""
    t0 = time.perf_counter()
    # one seed per evaluation (reproducible where the engine honours seeds); each of the k runs of a question
    # samples under its own seed derived from it (rollout/worker.py), so Pass@k counts k different runs
    sampling = dict(groups.sampling, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                    seed=derive_seed(cfg.run.seed, "eval", name))
    out = evaluate(groups, tasks, cfg.eval.k, sampling, cfg.reward.correct_part, tags=tags)
    write_trajectories(run_dir / "trajectories" / f"eval_{name}.parquet", out.pop("batch"))
    out["seconds"] = time.perf_counter() - t0
    print(f"eval {name}: Pass@1 {out['pass@1']:.3f} (95% CI {out['pass@1_ci'][0]:.3f}-{out['pass@1_ci'][1]:.3f}), "
          f"Pass@{cfg.eval.k} {out['pass@k']:.3f} on {out['num_tasks']} held-out questions", flush=True)
    return out


# --- plots and report -----------------------------------------------------------------------------


def plots(run_dir: Path, rl_history: list[dict], sft_history: list[dict]) -> list[Path]:
    """PNG plots of the run: reward, success, length, tool calls, step-time breakdown, SFT loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)

    def line(name, series: dict[str, list], ylabel, x=None):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, ys in series.items():
            ax.plot(x or range(1, len(ys) + 1), ys, marker="o", ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if len(series) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append(path)

    if rl_history:
        get = lambda k: [h.get(k, np.nan) for h in rl_history]  # noqa: E731
        line("reward", {"reward": get("reward/mean")}, "mean reward")
        parts = sorted(k for k in rl_history[-1] if k.startswith("reward/") and k not in ("reward/mean", "reward/std"))
        if parts:
            line("success", {k[7:]: get(k) for k in parts}, "reward part (mean)")
        line("length", {"response tokens": get("response_length/mean")}, "tokens")
        if "num_tool_calls/mean" in rl_history[-1]:
            line("tool_calls", {"tool calls": get("num_tool_calls/mean")}, "tool calls per episode")
        # where a step goes: the trainer's own phases (logprobs, update) make up most of time/train; what
        # time/step holds beyond the phases (train overhead, probe, logging) is "other"
        stages = ("generate", "reward", "logprobs", "update", "sync")
        fig, ax = plt.subplots(figsize=(5, 3.2))
        bottom = np.zeros(len(rl_history))
        for s in stages:
            ys = np.nan_to_num(np.array(get(f"time/{s}"), dtype=float))
            ax.bar(range(1, len(ys) + 1), ys, bottom=bottom, label=s)
            bottom += ys
        if "time/step" in rl_history[-1]:
            other = np.clip(np.nan_to_num(np.array(get("time/step"), dtype=float)) - bottom, 0, None)
            ax.bar(range(1, len(other) + 1), other, bottom=bottom, label="other")
        ax.set_xlabel("step")
        ax.set_ylabel("seconds")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "step_time.png", dpi=110)
        plt.close(fig)
        out.append(folder / "step_time.png")
    if sft_history:
        line("sft_loss", {"SFT loss": [h["sft/loss"] for h in sft_history]}, "NLL per token")
    return out


def _parts(e: dict) -> str:
    means = dict(e.get("mean_reward") or {})
    total = means.pop("reward", None)
    parts = ", ".join(f"{k[7:]} {v:.3f}" for k, v in means.items())
    return "-" if total is None else f"{total:.3f} ({parts})" if parts else f"{total:.3f}"


def paired_lines(evals: dict) -> list[str]:
    """Each evaluation against the one before it (and the last against the first), on the same questions: the
    Pass@1 difference with its paired 95% bootstrap interval (rl/evaluate.py paired_difference)."""
    names = [n for n, e in evals.items() if e.get("per_task")]
    pairs = list(zip(names, names[1:])) + ([(names[0], names[-1])] if len(names) > 2 else [])
    if not pairs:
        return []
    lines = ["### Paired differences", "", "| after | minus | questions | n | Pass@1 difference | 95% CI |",
             "|---|---|---|---|---|---|"]
    for before, after in pairs:
        sides = [("all", evals[before], evals[after])]  # then each kind of question (by_tag: reading, recall)
        for tag, b in (evals[before].get("by_tag") or {}).items():
            a = (evals[after].get("by_tag") or {}).get(tag)
            if a and a.get("per_task") and b.get("per_task"):
                sides.append((tag, b, a))
        for tag, b, a in sides:
            d = paired_difference(b, a)
            lines.append(f"| {after} | {before} | {tag} | {d['num_tasks']} | {d['difference']:+.3f} | "
                         f"{d['ci'][0]:+.3f} to {d['ci'][1]:+.3f} |")
    return lines + ["", "Paired: the same questions on both sides, questions resampled together (2,000 resamples).", ""]


def report(run_dir: Path, recipe: str, cfg: Config, results: dict, seconds: float) -> Path:
    """report.md: what ran, the evaluation table with confidence intervals, and the numbers per stage."""
    lines = [f"# {recipe} run report", "", f"- run folder: `{run_dir}`", f"- wall time: {seconds / 60:.1f} min",
             f"- model: `{cfg.model.path}`" + (f" (tokenizer {cfg.model.tokenizer})" if cfg.model.path in TINY_MODELS
                                              else "") + f"; world: {cfg.env.world_size}, "
             f"seed {cfg.env.world_seed}; stages: {', '.join(cfg.pipeline.stages)}", ""]
    if "rft" in results:
        lines += ["## Expert trajectories and the RFT filter", "",
                  "| " + " | ".join(results["rft"]) + " |", "|" + "---|" * len(results["rft"]),
                  "| " + " | ".join(str(v) for v in results["rft"].values()) + " |", ""]
    evals = {k[5:]: v for k, v in results.items() if k.startswith("eval_")}
    if evals:
        k = cfg.eval.k
        lines += [f"## Evaluation on {next(iter(evals.values()))['num_tasks']} held-out questions "
                  f"(k = {k}, temperature {cfg.eval.temperature})", "",
                  f"| after | Pass@1 | 95% CI | Pass@{k} | 95% CI | tool calls | turns | finish | mean reward (parts) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, e in evals.items():
            lines.append(f"| {name} | {e['pass@1']:.3f} | {e['pass@1_ci'][0]:.3f}-{e['pass@1_ci'][1]:.3f} | "
                         f"{e['pass@k']:.3f} | {e['pass@k_ci'][0]:.3f}-{e['pass@k_ci'][1]:.3f} | "
                         f"{e['mean_tool_calls']:.2f} | {e['mean_turns']:.2f} | {e['finish']} | {_parts(e)} |")
        lines.append("")
        lines.append("Intervals: 95% percentile bootstrap over questions (2,000 resamples).")
        lines.append("")
        lines += paired_lines(evals)
        tagged = {name: e["by_tag"] for name, e in evals.items() if e.get("by_tag")}
        if tagged:
            recall = any(tag in (SEEN, NEW) for by_tag in tagged.values() for tag in by_tag)
            lines += (["### Recall or reading", "",
                       "Held-out questions are distinct from the expert's, but a small world repeats facts: "
                       "Pass@1 apart on questions whose answer (entity and value) an SFT question also had.", ""]
                      if recall else ["### By kind of question", ""]) + \
                ["| after | questions | n | Pass@1 | 95% CI |", "|---|---|---|---|---|"]
            for name, by_tag in tagged.items():
                for tag, m in by_tag.items():
                    lines.append(f"| {name} | {tag} | {m['num_tasks']} | {m['pass@1']:.3f} | "
                                 f"{m['pass@1_ci'][0]:.3f}-{m['pass@1_ci'][1]:.3f} |")
            lines.append("")
    if results.get("sft"):
        s = results["sft"]
        lines += ["## SFT", "", f"- steps: {len(s)}; loss first {s[0]['sft/loss']:.4f}, last {s[-1]['sft/loss']:.4f}", ""]
    if results.get("rl"):
        h = results["rl"]
        trend = trend_line(h)
        lines += ["## RL", "", f"- steps: {len(h)}; reward mean first {h[0]['reward/mean']:.4f}, last "
                  f"{h[-1]['reward/mean']:.4f}; per-step metrics in `metrics.jsonl`"] + ([trend] if trend else []) + [""]
    lines += ["Plots: `plots/*.png`. Trajectories: `trajectories/*.parquet`. Tasks: `data/*.jsonl`.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    (run_dir / "results.json").write_text(json.dumps(
        {k: v for k, v in results.items() if k.startswith("eval_") or k == "rft"}, indent=1))
    return path
