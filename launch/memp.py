"""Memp, procedural memory in the agent loop (SEEDS 12), on the synthetic world.

    python launch/memp.py [--config FILE] [--smoke] [key.path=value ...]

The story (launch/stages.py functions and the run's memory actor, on one set of Ray actor groups):
  synthesize SailorFog-QA questions (expert / stream / held-out splits)
  -> expert trajectories (the scripted WorldExpert through the policy's agent loop) -> RFT filter -> short SFT
  -> eval_nomem:     the SFT policy on the held-out questions, memory empty
  -> eval_expertmem: the same with memory built offline from the expert's successful trajectories (the paper's
                     transfer: a stronger policy's memory given to a weaker one)
  -> online_<rule>:  memory starts empty and learns while solving a stream of tasks (the RL split, in batches of
                     data.batch_size, eval.k samples each), update rule vanilla | validation | reflect
  -> rl:             RL with memory on (memory.mode=online: updated after every step; checkpoints hold it)
  -> report.md: success and tool calls per episode with 95% bootstrap intervals over tasks, per condition.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/memp.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import main  # noqa: E402

RULES = ("vanilla", "validation", "reflect")
STAGES = ("expert", "sft", "rl") + tuple(f"online_{r}" for r in RULES)  # and eval_<name>


def pipeline(cfg, run_dir: Path) -> dict:
    from launch import stages as st
    from rl.controller import train
    from rl.groups import RLGroups

    data = st.synthesize(cfg, run_dir)
    heldout, stream = st.as_tasks(data["heldout"]), st.as_tasks(data["rl"])
    st.check_rl_batch(cfg, len(stream))
    groups = RLGroups(cfg)
    results, version, expert_batch, sft_data = {"conditions": {}}, 0, None, None
    try:
        for stage in cfg.pipeline.stages:
            print(f"--- stage {stage}", flush=True)
            if stage == "expert":
                expert_batch = st.expert_trajectories(cfg, groups, data["world"], data["expert"], run_dir)
                sft_data, results["rft"] = st.rft(cfg, expert_batch)
            elif stage == "sft":
                results["sft"], version = st.sft(cfg, groups, sft_data, run_dir, version)
            elif stage == "rl":
                summary = train(cfg, run_dir, groups=groups, tasks=stream, start_version=version)
                results["rl"], version = summary["history"], summary["policy_version"]
            elif stage.startswith("online_"):
                results["conditions"][stage] = online(cfg, groups, stream, stage[7:], run_dir)
            else:
                if stage == "eval_nomem":
                    groups.memory.clear()
                elif stage == "eval_expertmem":
                    groups.memory.clear()
                    size = groups.memory.add_successes(expert_batch, cfg.reward.correct_part, "expert")
                    groups.memory.save(run_dir / "memory_expert.json")
                    print(f"memory built from the expert: {size} records", flush=True)
                results["conditions"][stage] = heldout_eval(cfg, groups, heldout, stage[5:], run_dir)
            groups.memory.save(run_dir / "memory.json")
    finally:
        groups.shutdown()
    st.plots(run_dir, results.get("rl", []), results.get("sft", []))
    return results


def measure(batch, correct_part: str) -> dict:
    """Success (Pass@1 over a task's samples) and tool calls per episode, each with a 95% bootstrap interval over
    tasks (rl/evaluate.py bootstrap_ci)."""
    from rl.evaluate import bootstrap_ci
    from rollout.trajectory import reward_part_column, scalar_numpy

    ok = scalar_numpy(batch, reward_part_column(batch, correct_part, "memp")).astype(np.float64) >= 1.0
    calls = scalar_numpy(batch, "num_tool_calls").astype(np.float64)
    uid = np.asarray(batch.column("uid").to_pylist(), dtype=object)
    tasks = list(dict.fromkeys(uid))
    success = np.array([ok[uid == t].mean() for t in tasks])
    tool_calls = np.array([calls[uid == t].mean() for t in tasks])
    return {"num_tasks": len(tasks), "episodes": int(batch.num_rows), "success": float(success.mean()),
            "success_ci": bootstrap_ci(success), "tool_calls": float(tool_calls.mean()),
            "tool_calls_ci": bootstrap_ci(tool_calls), "per_task_success": success.tolist()}


def _sampling(cfg, groups, name: str) -> dict:
    from rollout.engines.base import derive_seed

    return dict(groups.sampling, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                seed=derive_seed(cfg.run.seed, "memp", name))


def heldout_eval(cfg, groups, tasks: list[dict], name: str, run_dir: Path) -> dict:
    """The held-out questions, eval.k samples each, with whatever memory the store holds (never updated here)."""
    from rl.sft_data import write_trajectories

    batch = groups.score(groups.generate([dict(t, group=i) for i, t in enumerate(tasks)], n=cfg.eval.k,
                                         sampling=_sampling(cfg, groups, name)))
    write_trajectories(run_dir / "trajectories" / f"eval_{name}.parquet", batch)
    out = measure(batch, cfg.reward.correct_part) | {"memory_size": len(groups.memory.state()["records"])}
    print(f"{name}: success {out['success']:.3f} {out['success_ci']}, tool calls {out['tool_calls']:.2f}", flush=True)
    return out


def online(cfg, groups, stream: list[dict], rule: str, run_dir: Path) -> dict:
    """Memory starts empty and learns while solving: each batch of the stream retrieves from the memory the
    earlier batches built, then updates it (Memp's online mode, rule `rule`)."""
    from rl.sft_data import write_trajectories
    from rollout.trajectory import concat

    groups.memory.clear()
    groups.memory.configure(update=rule)
    parts, counts, t0 = [], [], time.perf_counter()
    b = cfg.data.batch_size
    for start in range(0, len(stream), b):
        chunk = [dict(t, group=i) for i, t in enumerate(stream[start:start + b])]
        batch = groups.score(groups.generate(chunk, n=cfg.eval.k, sampling=_sampling(cfg, groups, f"{rule}{start}")))
        counts.append(groups.memory.update(batch, cfg.reward.correct_part))
        parts.append(batch)
    batch = concat(parts)
    write_trajectories(run_dir / "trajectories" / f"online_{rule}.parquet", batch)
    groups.memory.save(run_dir / f"memory_online_{rule}.json")
    out = measure(batch, cfg.reward.correct_part)
    half = len(out["per_task_success"]) // 2
    out |= {"memory_size": counts[-1]["memory/size"] if counts else 0, "seconds": time.perf_counter() - t0,
            "first_half_success": float(np.mean(out["per_task_success"][:half] or [np.nan])),
            "second_half_success": float(np.mean(out["per_task_success"][half:] or [np.nan])),
            "updates": {k: int(sum(c[k] for c in counts)) for k in counts[0] if k != "memory/size"} if counts else {}}
    print(f"online {rule}: success {out['success']:.3f}, tool calls {out['tool_calls']:.2f}, memory "
          f"{out['memory_size']} records, updates {out['updates']}", flush=True)
    return out


def extend_report(run_dir: Path, results: dict) -> None:
    """The Memp table after report.md's own sections; results.json gets the conditions."""
    rows = results.get("conditions") or {}
    lines = ["", "## Memp: success and tool calls per episode", "",
             "| condition | tasks | episodes | success | 95% CI | tool calls | 95% CI | memory records | "
             "success 1st / 2nd half of the stream |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        halves = (f"{r['first_half_success']:.3f} / {r['second_half_success']:.3f}" if "first_half_success" in r
                  else "-")
        lines.append(f"| {name} | {r['num_tasks']} | {r['episodes']} | {r['success']:.3f} | {r['success_ci'][0]:.3f}-"
                     f"{r['success_ci'][1]:.3f} | {r['tool_calls']:.2f} | {r['tool_calls_ci'][0]:.2f}-"
                     f"{r['tool_calls_ci'][1]:.2f} | {r['memory_size']} | {halves} |")
    lines += ["", "eval_*: the held-out questions (eval.k samples each; eval_nomem with memory empty, eval_expertmem with "
              "memory built from the expert's successful trajectories). online_<rule>: the stream of RL-split tasks, "
              "memory starting empty and updated after every batch. Intervals: 95% percentile bootstrap over tasks.", ""]
    with (run_dir / "report.md").open("a") as fh:
        fh.write("\n".join(lines))
    path = run_dir / "results.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "per_task_success"} for k, v in rows.items()}
    path.write_text(json.dumps(saved | {"memp": slim}, indent=1))


def check_stages(cfg) -> str | None:
    """A mistake in the config, said before anything starts (None if fine)."""
    if not cfg.memory.enabled:
        return "memory.enabled: the Memp recipe runs with memory on"
    if cfg.data.task != "world_qa":
        return f"data.task: Memp runs on the world's questions (world_qa), got {cfg.data.task!r}"
    seen = []
    for s in cfg.pipeline.stages:
        if s not in STAGES and not (s.startswith("eval_") and len(s) > 5):
            return f"pipeline.stages: unknown stage {s!r}; allowed: {', '.join(STAGES)} and eval_<name>"
        if s in ("sft", "eval_expertmem") and "expert" not in seen:
            return f"pipeline.stages: {s!r} needs 'expert' before it (it uses the expert's trajectories)"
        seen.append(s)
    if "rl" not in seen and cfg.memory.update != type(cfg.memory)().update:
        return (f"memory.update={cfg.memory.update!r} is the rl stage's update rule and no rl stage runs "
                f"(pipeline.stages {cfg.pipeline.stages}): online_<rule> stages set their own; it would be ignored")
    return None


if __name__ == "__main__":
    sys.exit(main(recipe="memp", default_config=ROOT / "launch/configs/memp.yaml", argv=sys.argv[1:],
                  pipeline=pipeline, check=check_stages, extend=extend_report))
