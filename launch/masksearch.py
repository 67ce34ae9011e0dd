"""MaskSearch: RL on RAMP, retrieval-augmented mask prediction (SEEDS 7; DESIGN section 5).

    python launch/masksearch.py [--config FILE] [--smoke] [key.path=value ...]

The story (on one set of Ray actor groups):
  RAMP tasks (envs/world/ramp.py, SEEDS 7.1): paragraphs of the world's pages (data.task=world_qa) or of any
     jsonl / parquet corpus of {title, text} rows (data.task=file, data.path=<corpus>) -> salient spans ->
     k masks -> "<masked paragraph>\\n\\nFill in all the [mask] ..." with the original paragraph as the answer.
     Kept only where the reward's own parser (reward.rules.mask_spans) recovers exactly the masked spans from
     the answer; split into held-out and RL tasks, both balanced over the number of masks
  -> evaluation before, DAPO RL (SEEDS 2, 7.3) with a curriculum by number of masks, evaluation after,
     plots and report.md.
`pipeline.stages` is the curriculum written out (run.steps RL steps per RL stage):
  staged       RL on the 1-mask tasks, then 2, 3, 4 (the mask numbers the RL split has), each stage a
               `rl.controller.train` call that continues the policy_version of the one before (SEEDS 7.3)
  mixed        one RL on all RL tasks, for run.steps x (number of mask numbers) steps: the budget of `staged`
  rl_k<N>      RL on the N-mask tasks only (a hand-written curriculum: [rl_k1, rl_k3, ...])
  eval_<name>  evaluation on the held-out RAMP tasks; default [eval_base, staged, eval_rl]
Reward (SEEDS 7.3): format + answer (composition masksearch, 1 + 1). The answer is the token-level recall over
the masked spans (`token_recall: {masked_spans: true}`, `length_penalty: true` against listing candidates), or
the judge's fraction of masks right by configuration: reward.fns={format: {...}, span_judge: {}} with
reward.judge={backend: rule | openai | engine, ...}. The format is the ReAct grammar of the agent loop
(`<tool_call>` / `<tool_response>`): MaskSearch's own `<search>` / `<information>` grammar
(style masksearch) is not what this agent loop writes. Pass@1 in the report = every mask fully recalled
(answer part >= 1); the mean answer score (the paper's metric, recall) per evaluation and per number of
masks is in its own table.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/masksearch.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import main  # noqa: E402

SENTENCES_PER_PARAGRAPH = 3   # world pages: a lead paragraph cut into paragraphs of this many sentences
MIN_WORDS = 5                 # shorter paragraphs are skipped
_RL_K = re.compile(r"rl_k([1-9]\d*)")


# --- data -----------------------------------------------------------------------------------------


def ramp_items(cfg) -> tuple[list[dict], dict]:
    """Every RAMP task of the source whose gold masks the reward recovers, and counts."""
    from envs.world.ramp import corpus_pages, ramp_tasks, world_pages
    from reward.fns import MASKSEARCH_INSTRUCTION
    from reward.rules import mask_spans

    if cfg.data.task == "file":
        pages, source = corpus_pages(cfg.data.path), Path(cfg.data.path).name
    else:
        from envs.world import generate_world

        world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
        pages, source = world_pages(world, SENTENCES_PER_PARAGRAPH), "world"
    items = ramp_tasks(pages, seed=cfg.run.seed, source=source, min_words=MIN_WORDS)
    kept = [it for it in items
            if mask_spans(it["question"].split(MASKSEARCH_INSTRUCTION)[0], it["answer"]) == it["masks"]]
    return kept, {"pages": len(pages), "generated": len(items), "unparseable": len(items) - len(kept),
                  "by_k": dict(sorted(Counter(it["mask_num"] for it in kept).items()))}


def balanced(items: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(n items taken round-robin over the mask numbers, the rest), both in a stable order."""
    buckets: dict[int, list[dict]] = {}
    for it in items:
        buckets.setdefault(it["mask_num"], []).append(it)
    taken: list[dict] = []
    while len(taken) < n and any(buckets.values()):
        for k in sorted(buckets):
            if buckets[k] and len(taken) < n:
                taken.append(buckets[k].pop(0))
    rest = [it for k in sorted(buckets) for it in buckets[k]]
    return taken, rest


def synthesize(cfg, run_dir: Path) -> dict:
    """RAMP tasks: held-out (eval.num_tasks) and RL (data.num_tasks), disjoint, both balanced over the number of
    masks, written to run_dir/data/{rl,heldout}.jsonl."""
    items, counts = ramp_items(cfg)
    random.Random(f"masksearch:{cfg.run.seed}").shuffle(items)
    wanted = cfg.data.num_tasks + cfg.eval.num_tasks
    if len(items) < wanted:
        raise ValueError(f"RAMP on {'the world' if cfg.data.task != 'file' else cfg.data.path} yielded "
                         f"{len(items)} tasks, fewer than data.num_tasks + eval.num_tasks = {wanted}; use a larger "
                         "env.world_size (or corpus) or fewer tasks")
    heldout, rest = balanced(items, cfg.eval.num_tasks)
    rl, _ = balanced(rest, cfg.data.num_tasks)
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    split = {"rl": rl, "heldout": heldout}
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts["splits"] = {name: dict(sorted(Counter(r["mask_num"] for r in rows).items()))
                        for name, rows in split.items()}
    print(f"RAMP: {counts}", flush=True)
    return split | {"counts": counts}


def as_tasks(items: list[dict]) -> list[dict]:
    return [{k: it[k] for k in ("uid", "question", "answer", "gold_ids") if it.get(k)} for it in items]


# --- stages ---------------------------------------------------------------------------------------


def check_stages(cfg) -> str | None:
    """A mistake in the configuration, said before anything starts (None if fine)."""
    if cfg.data.task not in ("world_qa", "file"):
        return (f"data.task={cfg.data.task!r}: MaskSearch makes RAMP tasks from the world's pages (world_qa) or "
                "from a corpus of {title, text} rows (file, with data.path)")
    for s in cfg.pipeline.stages:
        if s not in ("staged", "mixed") and not _RL_K.fullmatch(s) and not (s.startswith("eval_") and len(s) > 5):
            return f"pipeline.stages: unknown stage {s!r}; allowed: staged, mixed, rl_k<N> and eval_<name>"
        if _RL_K.fullmatch(s) and not 1 <= int(s[4:]) <= 4:
            return f"pipeline.stages: {s!r}: RAMP tasks have 1 to 4 masks"
    fns = cfg.reward.fns or {}
    if not any(k.split(":")[0] in ("token_recall", "span_judge") for k in fns):
        return ("reward.fns: MaskSearch scores the masked spans: give token_recall {masked_spans: true} or "
                "span_judge {} (with reward.judge) as the answer reward")
    for key, kwargs in fns.items():
        if key.split(":")[0] == "token_recall" and not (kwargs or {}).get("masked_spans"):
            return f"reward.fns.{key}: set masked_spans: true (the recall is over the masked spans, SEEDS 7.3)"
    return None


def plan(cfg, rl_items: list[dict]) -> list[tuple[str, list[int] | None, int]]:
    """The stages as (name, mask numbers trained on or None for an evaluation, RL steps); an RL stage with
    fewer tasks than data.batch_size is an error."""
    present = sorted({it["mask_num"] for it in rl_items})
    out = []
    for s in cfg.pipeline.stages:
        if s == "staged":
            out += [(f"rl_k{k}", [k], cfg.run.steps) for k in present]
        elif s == "mixed":
            out.append(("mixed", present, cfg.run.steps * max(1, len(present))))
        elif _RL_K.fullmatch(s):
            out.append((s, [int(s[4:])], cfg.run.steps))
        else:
            out.append((s, None, 0))
    for name, ks, _ in out:
        if ks is not None:
            n = sum(it["mask_num"] in ks for it in rl_items)
            if n < cfg.data.batch_size:  # found before any actor starts (launch/common.py: exit 2)
                from rl.config import ConfigError

                raise ConfigError(f"stage {name}: {n} RL tasks with {ks} masks, fewer than data.batch_size = "
                                 f"{cfg.data.batch_size}; raise data.num_tasks or lower data.batch_size")
    return out


def recall_table(run_dir: Path, name: str, mask_num: dict[str, int]) -> dict:
    """The mean answer score (recall, or the judge's fraction) and format score of an evaluation, overall and by
    number of masks, from its trajectories."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(run_dir / "trajectories" / f"eval_{name}.parquet")
    ans = np.nan_to_num(np.array(t.column("reward_answer").to_pylist(), dtype=float))
    fmt = np.nan_to_num(np.array(t.column("reward_format").to_pylist(), dtype=float))
    ks = np.array([mask_num[u] for u in t.column("uid").to_pylist()])
    return {"answer": float(ans.mean()), "format": float(fmt.mean()),
            "answer_by_k": {int(k): float(ans[ks == k].mean()) for k in np.unique(ks)}}


def pipeline(cfg, run_dir: Path) -> dict:
    import time

    import msgspec

    from launch import stages as st
    from rl.controller import train
    from rl.groups import RLGroups

    t0 = time.perf_counter()
    data = synthesize(cfg, run_dir)
    stages = plan(cfg, data["rl"])
    mask_num = {it["uid"]: it["mask_num"] for it in data["rl"] + data["heldout"]}
    heldout = as_tasks(data["heldout"])
    # the groups read their default tasks from a file of {uid, question, answer}: the RAMP RL tasks
    group_cfg = msgspec.structs.replace(cfg, data=msgspec.structs.replace(
        cfg.data, task="file", path=str(run_dir / "data" / "rl.jsonl")))
    groups = RLGroups(group_cfg)
    print(f"actor groups up after {time.perf_counter() - t0:.0f} s; stages {[s[0] for s in stages]}", flush=True)
    results: dict = {"ramp": data["counts"], "stages": [], "rl": []}
    version, metrics = 0, []
    try:
        for i, (name, ks, steps) in enumerate(stages, 1):
            print(f"--- stage {name} (at {time.perf_counter() - t0:.0f} s)", flush=True)
            if ks is None:
                results[name] = st.evaluation(cfg, groups, heldout, name[5:], run_dir)
                results[f"recall_{name[5:]}"] = recall_table(run_dir, name[5:], mask_num)
                results["stages"].append({"stage": name, "policy_version": version,
                                          "seconds": results[name]["seconds"]})
                continue
            tasks = as_tasks([it for it in data["rl"] if it["mask_num"] in ks])
            stage_cfg = msgspec.structs.replace(cfg, run=msgspec.structs.replace(cfg.run, steps=steps))
            s0 = time.perf_counter()
            summary = train(stage_cfg, run_dir / f"stage{i}_{name}", groups=groups, tasks=tasks,
                            start_version=version)
            start_version, version = version, summary["policy_version"]
            for h in summary["history"]:
                metrics.append(dict(h, stage=name, stage_step=h.get("step"), step=len(metrics) + 1))
            results["rl"] = metrics
            hist = summary["history"]
            results["stages"].append({
                "stage": name, "masks": ks, "tasks": len(tasks), "steps": len(hist),
                "skipped": sum(h.get("skipped", 0) for h in hist), "start_version": start_version,
                "policy_version": version, "seconds": time.perf_counter() - s0,
                "reward_first": hist[0]["reward/mean"] if hist else None,
                "reward_last": hist[-1]["reward/mean"] if hist else None})
    finally:
        groups.shutdown()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    st.plots(run_dir, metrics, [])
    eval_plot(run_dir, results)
    return results


def eval_plot(run_dir: Path, results: dict) -> None:
    """plots/eval_by_masks.png: mean answer score per number of masks, one bar group per evaluation."""
    evals = {k[7:]: v for k, v in results.items() if k.startswith("recall_")}
    if not evals:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({k for v in evals.values() for k in v["answer_by_k"]})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    width = 0.8 / len(evals)
    for j, (name, v) in enumerate(evals.items()):
        ax.bar([k + (j - (len(evals) - 1) / 2) * width for k in ks], [v["answer_by_k"].get(k, 0.0) for k in ks],
               width, label=name)
    ax.set_xlabel("masks per task")
    ax.set_ylabel("mean answer score")
    ax.set_xticks(ks)
    ax.legend(fontsize=7)
    fig.tight_layout()
    (run_dir / "plots").mkdir(exist_ok=True)
    fig.savefig(run_dir / "plots" / "eval_by_masks.png", dpi=110)
    plt.close(fig)


def extend_report(run_dir: Path, results: dict) -> None:
    """The sections `launch.stages.report` does not write (also added to results.json)."""
    c = results["ramp"]
    ks = sorted({int(k) for split in c["splits"].values() for k in split} | {int(k) for k in c["by_k"]})
    lines = ["", "## RAMP tasks (SEEDS 7.1)", "",
             f"- pages: {c['pages']}; samples generated: {c['generated']}; dropped because the reward's parser "
             f"does not recover their masks from the answer: {c['unparseable']}", "",
             "| split | " + " | ".join(f"{k} mask{'s' * (k > 1)}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for split, row in [("all", c["by_k"])] + list(c["splits"].items()):
        lines.append(f"| {split} | " + " | ".join(str(row.get(k, row.get(str(k), 0))) for k in ks) + " |")
    lines += ["", "## Curriculum (RL stages in order)", "",
              "| # | stage | masks | tasks | steps | skipped | policy_version | reward first | reward last | seconds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for i, s in enumerate(results["stages"], 1):
        if "masks" in s:
            lines.append(f"| {i} | {s['stage']} | {','.join(map(str, s['masks']))} | {s['tasks']} | {s['steps']} | "
                         f"{s['skipped']} | {s['start_version']} -> {s['policy_version']} | {fmt(s['reward_first'])} | "
                         f"{fmt(s['reward_last'])} | {s['seconds']:.0f} |")
        else:
            lines.append(f"| {i} | {s['stage']} | - | - | - | - | {s['policy_version']} | - | - | {s['seconds']:.0f} |")
    evals = {k[7:]: v for k, v in results.items() if k.startswith("recall_")}
    if evals:
        eks = sorted({k for v in evals.values() for k in v["answer_by_k"]})
        lines += ["", "## Mean answer score on the held-out RAMP tasks (SEEDS 7.4: recall over the masked spans; with "
                  "span_judge the fraction of masks judged right)", "",
                  "| after | answer | format | " + " | ".join(f"{k} mask{'s' * (k > 1)}" for k in eks) + " |",
                  "|---|---|---|" + "---|" * len(eks)]
        for name, v in evals.items():
            lines.append(f"| {name} | {v['answer']:.4f} | {v['format']:.4f} | "
                         + " | ".join(f"{v['answer_by_k'].get(k, float('nan')):.4f}" for k in eks) + " |")
    lines += ["", "Steps skipped: DAPO's dynamic sampling found no group with non-zero reward variance. Per-stage "
              "RL metrics: `stage<i>_<name>/metrics.jsonl`; all stages: `metrics.jsonl`. "
              "Plot by number of masks: `plots/eval_by_masks.png`.", ""]
    with (run_dir / "report.md").open("a") as f:
        f.write("\n".join(lines))
    path = run_dir / "results.json"
    saved = json.loads(path.read_text())
    saved |= {k: v for k, v in results.items() if k in ("ramp", "stages") or k.startswith("recall_")}
    path.write_text(json.dumps(saved, indent=1))


def run(argv: list[str]) -> int:
    return main(recipe="masksearch", default_config=ROOT / "launch/configs/masksearch.yaml", argv=argv,
                pipeline=pipeline, check=check_stages, extend=extend_report)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
