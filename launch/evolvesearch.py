"""EvolveSearch, the self-evolving search agent (SEEDS 6; DESIGN section 5).

    python launch/evolvesearch.py [--config FILE] [--smoke] [key.path=value ...]

The story (SEEDS 6.3), on one set of Ray actor groups:
  pi_sft = base; H = []
  for i in 1..N:   RL on shard D_i from pi_sft (GRPO-style, token-level loss, observations masked)
                   -> harvest: the round's rollouts that are format-correct AND answer-correct, de-duplicated
                   -> SFT from the BASE weights on everything harvested so far; it initialises round i+1.
`pipeline.stages` is the loop written out: `rl`, `harvest`, `sft` and `eval_<name>` stages, e.g.
  [eval_base, rl, harvest, sft, eval_iter1, rl, harvest, sft, eval_iter2]
The number of rounds N is the number of `rl` stages: the RL questions (data.num_tasks) are split into N
disjoint shards, round i trains on shard i. Reward: R = 0.5 (R_f + R_a) if the format is right, else 0.

`warmup` (optional, before the first `rl`): the paper starts from an instruct model that already follows
the ReAct template. The tiny random model of the embedded default does not, so `warmup` makes the
stand-in "instruct" base here: scripted-expert trajectories (a separate question split) -> RFT filter ->
SFT. The base that every later SFT starts from is the model after warmup. A real model drops `warmup`.
The base is the trainer's full state saved to run_dir/base_model before the first round; each `sft`
stage loads it back (weights, optimizer, schedule) and fine-tunes on H; with nothing harvested yet the
policy is the base itself (SFT on an empty set changes nothing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/evolvesearch.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import main  # noqa: E402

STAGES = ("warmup", "rl", "harvest", "sft")  # and eval_<name>, anywhere
POOL_COLUMNS = ("uid", "group", "sample", "prompt_ids", "response_ids", "loss_mask", "rollout_logprobs",
                "policy_version", "num_turns", "finish", "answer_text", "num_tool_calls")


def check_stages(cfg) -> str | None:
    """A mistake in pipeline.stages, said before anything starts (None if fine)."""
    if cfg.data.task != "world_qa":
        return (f"data.task={cfg.data.task!r}: the EvolveSearch recipe runs on the world's questions "
                "(data.task=world_qa)")
    rounds, harvested, in_round = 0, 0, False
    for s in cfg.pipeline.stages:
        if s not in STAGES and not (s.startswith("eval_") and len(s) > 5):
            return f"pipeline.stages: unknown stage {s!r}; allowed: {', '.join(STAGES)} and eval_<name>"
        if s == "warmup" and rounds:
            return "pipeline.stages: 'warmup' makes the base model; it must come before the first 'rl'"
        if s == "rl":
            rounds, in_round = rounds + 1, True
        if s == "harvest":
            if not in_round:
                return "pipeline.stages: each 'harvest' needs its own 'rl' before it (it reads that round's rollouts)"
            in_round, harvested = False, harvested + 1
        if s == "sft" and not harvested:
            return "pipeline.stages: 'sft' needs a 'harvest' before it (its data are the harvested rollouts)"
    if not rounds:
        return "pipeline.stages: no 'rl' stage; EvolveSearch runs one round per 'rl' stage"
    if cfg.data.num_tasks // rounds < cfg.data.batch_size:
        return (f"data.num_tasks={cfg.data.num_tasks} split into {rounds} shards (one per 'rl' stage) leaves "
                f"{cfg.data.num_tasks // rounds} questions per round, fewer than data.batch_size={cfg.data.batch_size}")
    return None


def shards(items: list, n: int) -> list[list]:
    """`items` in n disjoint, contiguous parts of (nearly) equal size."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def harvest(cfg, round_dir: Path):
    """SEEDS 6.1 step 2 on one round's rollouts (round_dir/trajectories/step_*.parquet): format-correct
    AND answer-correct, de-duplicated. Returns (the rows kept, the count after each stage)."""
    from rl.sft_data import RFT_PRESETS, read_trajectories, rft_filter

    batch = read_trajectories(sorted((round_dir / "trajectories").glob("step_*.parquet")))
    rule = dict(RFT_PRESETS["evolvesearch"], correct_parts=("format", cfg.reward.correct_part))
    return rft_filter(batch, **rule)


def sft_from_base(cfg, groups, pool, base_dir: Path, run_dir: Path, version: int) -> tuple[list[dict], int]:
    """The base weights back into the trainer, then SFT on the pool (observations masked); the result
    goes to the engines. An empty pool leaves the base."""
    from launch import stages as st
    from rl.sft_data import rft_filter

    groups.trainer.call("load_checkpoint", str(base_dir))
    if pool is None or pool.num_rows == 0:
        return [], groups.sync_weights(version + 1)
    pool, _ = rft_filter(pool, correct=[True] * pool.num_rows, max_tokens=None, dedup=True)  # across rounds
    return st.sft(fitting_batches(cfg, pool.num_rows), groups, pool, run_dir, version)


def fitting_batches(cfg, rows: int):
    """`cfg` with sft.batch_size at most `rows` (a small harvest still makes one batch)."""
    import msgspec

    return msgspec.structs.replace(cfg, sft=msgspec.structs.replace(cfg.sft, batch_size=min(cfg.sft.batch_size, rows)))


def pipeline(cfg, run_dir: Path) -> dict:
    import time

    from launch import stages as st
    from rl.controller import train
    from rl.groups import RLGroups
    from rl.sft_data import write_trajectories
    from rollout.trajectory import concat, project

    t0 = time.perf_counter()
    data = st.synthesize(cfg, run_dir)
    heldout = st.as_tasks(data["heldout"])
    n_rounds = sum(s == "rl" for s in cfg.pipeline.stages)
    parts = shards(st.as_tasks(data["rl"]), n_rounds)
    groups = RLGroups(cfg)
    print(f"actor groups up after {time.perf_counter() - t0:.0f} s; {n_rounds} rounds of "
          f"{[len(p) for p in parts]} RL questions", flush=True)
    results: dict = {"rl": [], "sft": [], "rounds": []}
    version, base_dir, pool, rnd, metrics = 0, run_dir / "base_model", None, 0, []
    try:
        for stage in cfg.pipeline.stages:
            print(f"--- stage {stage} (at {time.perf_counter() - t0:.0f} s)", flush=True)
            if stage != "warmup" and not stage.startswith("eval_") and not base_dir.exists():
                base_dir.mkdir(parents=True)  # the base of every later SFT: the model as it is now
                groups.trainer.call("save_checkpoint", str(base_dir))
                results["base_probe"] = groups.probe()
            if stage == "warmup":
                expert = st.expert_trajectories(cfg, groups, data["world"], data["expert"], run_dir)
                warm, results["rft"] = st.rft(cfg, expert)
                print(f"warm-up expert trajectories: {results['rft']}", flush=True)
                if warm.num_rows == 0:
                    raise RuntimeError("warmup: no expert trajectory passed the RFT filter")
                history, version = st.sft(fitting_batches(cfg, warm.num_rows), groups, warm, run_dir, version)
                results["sft"] += history
                results["warmup_sft_steps"] = len(history)
            elif stage == "rl":
                rnd += 1
                round_dir = run_dir / f"round{rnd}"
                summary = train(cfg, round_dir, groups=groups, tasks=parts[rnd - 1], start_version=version)
                version = summary["policy_version"]
                for h in summary["history"]:
                    metrics.append(dict(h, round=rnd, round_step=h.get("step"), step=len(metrics) + 1))
                results["rl"] = metrics
                results["rounds"].append({"round": rnd, "questions": len(parts[rnd - 1]),
                                          "rl_steps": len(summary["history"]), "policy_version": version})
            elif stage == "harvest":
                kept, counts = harvest(cfg, run_dir / f"round{rnd}")
                if kept.num_rows:
                    write_trajectories(run_dir / "trajectories" / f"harvest_round{rnd}.parquet", kept)
                    kept = project(kept, POOL_COLUMNS)
                    pool = kept if pool is None else concat([pool, kept])
                counts["pool"] = 0 if pool is None else pool.num_rows
                results["rounds"][-1]["harvest"] = counts
                print(f"round {rnd} harvest: {counts}", flush=True)
            elif stage == "sft":
                history, version = sft_from_base(cfg, groups, pool, base_dir, run_dir, version)
                results["sft"] += history
                results["rounds"][-1] |= {"sft_steps": len(history), "sft_data": 0 if pool is None else pool.num_rows,
                                          "probe_after_sft": groups.probe(), "policy_version": version}
            else:
                results[stage] = st.evaluation(cfg, groups, heldout, stage[5:], run_dir)
                if results["rounds"]:
                    results["rounds"][-1].setdefault("evals", []).append(stage)
    finally:
        groups.shutdown()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    st.plots(run_dir, metrics, results["sft"])
    return results


def extend_report(run_dir: Path, results: dict) -> None:
    """The per-round section `launch.stages.report` does not write (also added to results.json)."""
    lines = ["", "## Rounds (RL on shard i -> harvest -> SFT from the base on all harvested)", "",
             "| round | RL questions | RL steps | rollouts | answered+format+answer correct | after dedup | "
             "harvested so far | SFT steps | evaluations |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rounds"]:
        h = r.get("harvest", {})
        lines.append(f"| {r['round']} | {r['questions']} | {r['rl_steps']} | {h.get('rft/input', '-')} | "
                     f"{h.get('rft/correct', '-')} | {h.get('rft/kept', '-')} | {h.get('pool', '-')} | "
                     f"{r.get('sft_steps', '-')} | {', '.join(r.get('evals', [])) or '-'} |")
    lines += ["", "SFT always starts from the base weights (`base_model/`); with nothing harvested the policy "
              "is the base again. Per-round RL metrics: `round<i>/metrics.jsonl`; all rounds: `metrics.jsonl`.", ""]
    with (run_dir / "report.md").open("a") as f:
        f.write("\n".join(lines))
    path = run_dir / "results.json"
    saved = json.loads(path.read_text())
    saved |= {k: results[k] for k in ("rounds", "base_probe") if k in results}
    path.write_text(json.dumps(saved, indent=1))


def run(argv: list[str]) -> int:
    return main(recipe="evolvesearch", default_config=ROOT / "launch/configs/evolvesearch.yaml", argv=argv,
                pipeline=pipeline, check=check_stages, extend=extend_report)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
