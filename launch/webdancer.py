"""WebDancer (SEEDS 5; DESIGN section 5).

    python launch/webdancer.py [--config FILE] [--smoke] [key.path=value ...]

The story (on one set of Ray actor groups, the stages of launch/stages.py where they fit):
  synthesize on the world: CRAWLQA (a browsing crawl over the world's pages; COUNT, MULTI-HOP and
     INTERSECTION questions) and E2HQA (a one-hop question whose entities are replaced, E2H_ITERATIONS
     times, by descriptions of them; the answer unchanged), mixed and split into expert / RL / held out
  -> expert trajectories: the scripted expert (envs/world/expert_webdancer.py) through the policy's agent loop
  -> the three-stage funnel filter (SEEDS 5.2), the count after each stage in report.md and results.json:
       validity     the episode ended with an answer and the ReAct grammar holds with valid tool-call JSON
                    naming a real tool (the format reward is 1);
       correctness  the answer is judged correct (reward part `reward.correct_part`);
       quality      no more than sft.max_tokens tokens, at least sft.min_tool_calls tool calls, no tool
                    call repeated with identical arguments (severe repetition), no duplicate trajectory
  -> SFT with observations masked (SEEDS 5.3) -> DAPO RL on questions not used in SFT (SEEDS 5.4) with
     0.1 format + 0.9 answer -> evaluation before and after each stage, plots and report.md.
`pipeline.stages` chooses the steps (default: expert eval_base sft eval_sft rl eval_rl).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/webdancer.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import main  # noqa: E402
from launch.websailor import check_stages as websailor_stages  # noqa: E402

E2H_ITERATIONS = 2    # entity -> description substitutions per E2HQA question (difficulty)
CRAWL_SHARE = 0.5     # fraction of CRAWLQA among the synthesized questions (E2HQA fills the rest)


# --- data -----------------------------------------------------------------------------------------


def synthesize(cfg, run_dir: Path) -> dict:
    """CRAWLQA + E2HQA on the world, shuffled together and split into disjoint expert (SFT), RL and
    held-out questions (SEEDS 5.4: RL on QA pairs not used in SFT). Written to run_dir/data/*.jsonl."""
    from envs.world import generate_world
    from envs.world.qa_webdancer import crawl_qa, e2h_qa

    world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
    wanted = cfg.sft.expert_tasks + cfg.data.num_tasks + cfg.eval.num_tasks
    n_crawl = round(wanted * CRAWL_SHARE)
    crawl = crawl_qa(world, n=n_crawl, seed=cfg.run.seed, max_attempts=20 * n_crawl)
    e2h = e2h_qa(world, n=wanted - len(crawl), seed=cfg.run.seed, iterations=E2H_ITERATIONS)
    items = crawl + e2h
    if len(items) < wanted:
        raise ValueError(f"the {cfg.env.world_size} world (seed {cfg.env.world_seed}) yielded {len(crawl)} CRAWLQA and "
                         f"{len(e2h)} E2HQA questions, fewer than sft.expert_tasks + data.num_tasks + eval.num_tasks "
                         f"= {wanted}; use a larger env.world_size or fewer tasks")
    random.Random(f"webdancer:{cfg.run.seed}").shuffle(items)
    a, b = cfg.sft.expert_tasks, cfg.sft.expert_tasks + cfg.data.num_tasks
    split = {"expert": items[:a], "rl": items[a:b], "heldout": items[b:wanted]}
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mix = {name: {t: sum(_tag(r) == t for r in rows) for t in ("count", "multi_hop", "intersection", "e2hqa")}
           for name, rows in split.items()}
    print(f"synthesized {len(crawl)} CRAWLQA + {len(e2h)} E2HQA questions: {mix}", flush=True)
    return {"world": world, "mix": mix, **split}


def _tag(item: dict) -> str:
    return item.get("type") if item.get("tag") == "crawlqa" else item.get("tag", "?")


# --- expert trajectories --------------------------------------------------------------------------


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_OBSERVATION = re.compile(r"<tool_response>.*?</tool_response>", re.DOTALL)


def repeated_call(response_text: str) -> bool:
    """True if the trajectory makes one tool call twice with identical arguments (observations skipped)."""
    seen = set()
    for raw in _CALL.findall(_OBSERVATION.sub("", response_text)):
        try:
            key = json.dumps(json.loads(raw), sort_keys=True)
        except json.JSONDecodeError:
            key = raw.strip()
        if key in seen:
            return True
        seen.add(key)
    return False


def funnel(cfg, batch) -> tuple[object, dict, dict]:
    """SEEDS 5.2's validity -> correctness -> quality filter. Returns (the rows kept, the count after
    each stage, the same counts per question type)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from rl.sft_data import rft_select
    from rollout.trajectory import scalar_numpy

    def part(name):
        return np.nan_to_num(scalar_numpy(batch, f"reward_{name}").astype(np.float64), nan=0.0) >= 1.0

    answered = pc.equal(batch.column("finish"), "answer").to_numpy(zero_copy_only=False).astype(bool)
    valid = answered & part("format")
    correct = valid & part(cfg.reward.correct_part)
    # quality: length bound, minimum tool calls, duplicates (rft_select), then severe repetition
    rows, stats = rft_select(batch, correct=correct, max_tokens=cfg.sft.max_tokens,
                             min_tool_calls=cfg.sft.min_tool_calls, dedup=True)
    texts = batch.column("response_text").to_pylist()
    keep = np.zeros(batch.num_rows, dtype=bool)
    keep[rows] = True
    no_repeat = np.array([not repeated_call(t) for t in texts], dtype=bool)
    stats["rft/no_repeat"] = int((keep & no_repeat).sum())
    keep &= no_repeat
    counts = {"filter/input": batch.num_rows, "filter/validity": int(valid.sum()),
              "filter/correctness": int(correct.sum()), "quality/length": stats["rft/length"],
              "quality/tool_calls": stats["rft/tool_calls"], "quality/dedup": stats["rft/dedup"],
              "quality/no_repeat": stats["rft/no_repeat"], "filter/quality": int(keep.sum())}
    return batch.take(pa.array(np.flatnonzero(keep), pa.int64())), counts, {
        "valid": valid, "correct": correct, "kept": keep}


def funnel_by_type(items: list[dict], masks: dict) -> dict:
    """Per question type (count, multi_hop, intersection, e2hqa): expert trajectories at each stage."""
    out: dict[str, dict] = {}
    for i, item in enumerate(items):  # expert rows are in item order (group i)
        row = out.setdefault(_tag(item), {"input": 0, "valid": 0, "correct": 0, "kept": 0})
        row["input"] += 1
        for k in ("valid", "correct", "kept"):
            row[k] += int(masks[k][i])
    return out


def check_stages(cfg) -> str | None:
    """The stages of WebSailor (expert, sft, rl, eval_<name>) on the world's questions."""
    if cfg.data.task != "world_qa":
        return (f"data.task={cfg.data.task!r}: WebDancer synthesizes CRAWLQA and E2HQA questions on the world; "
                "use data.task=world_qa")
    return websailor_stages(cfg)


# --- the story ------------------------------------------------------------------------------------


def pipeline(cfg, run_dir: Path) -> dict:
    from launch import stages as st

    data = synthesize(cfg, run_dir)

    def expert(groups):
        from envs.world.expert_webdancer import WebDancerExpert

        # the WebDancer expert counts COUNT questions' answers on the page
        batch = st.expert_trajectories(cfg, groups, data["world"], data["expert"], run_dir,
                                       expert_cls=WebDancerExpert)
        sft_data, counts, masks = funnel(cfg, batch)
        print(f"three-stage filter: {counts}", flush=True)
        if sft_data.num_rows == 0 and "sft" in cfg.pipeline.stages:
            raise RuntimeError("no expert trajectory passed the filter; nothing to fine-tune on")
        return sft_data, {"rft": counts, "filter_by_type": funnel_by_type(data["expert"], masks)}

    return st.run_pipeline(cfg, run_dir, data, expert, results={"mix": data["mix"]})


def extend_report(run_dir: Path, results: dict) -> None:
    """The sections `launch.stages.report` does not write: the question mix and the filter by stage
    and question type (also added to results.json)."""
    lines = ["", "## Questions (CRAWLQA and E2HQA on the world)", "",
             "| split | count | multi_hop | intersection | e2hqa |", "|---|---|---|---|---|"]
    for split, mix in results["mix"].items():
        lines.append(f"| {split} | {mix['count']} | {mix['multi_hop']} | {mix['intersection']} | {mix['e2hqa']} |")
    lines.append("")
    if "rft" in results:
        c = results["rft"]
        lines += ["## Three-stage trajectory filter (SEEDS 5.2)", "",
                  "| stage | trajectories left |", "|---|---|",
                  f"| expert trajectories | {c['filter/input']} |",
                  f"| 1. validity (answered; ReAct grammar and tool-call JSON) | {c['filter/validity']} |",
                  f"| 2. correctness (answer judged correct) | {c['filter/correctness']} |",
                  f"| 3. quality: length bound | {c['quality/length']} |",
                  f"| 3. quality: minimum tool calls | {c['quality/tool_calls']} |",
                  f"| 3. quality: no duplicate trajectory | {c['quality/dedup']} |",
                  f"| 3. quality: no repeated identical tool call | {c['quality/no_repeat']} |",
                  f"| kept for SFT | {c['filter/quality']} |", "",
                  "| question type | input | valid | correct | kept |", "|---|---|---|---|---|"]
        for t, row in results["filter_by_type"].items():
            lines.append(f"| {t} | {row['input']} | {row['valid']} | {row['correct']} | {row['kept']} |")
        lines.append("")
    with (run_dir / "report.md").open("a") as f:
        f.write("\n".join(lines))
    path = run_dir / "results.json"
    saved = json.loads(path.read_text())
    saved |= {k: results[k] for k in ("mix", "filter_by_type") if k in results}
    path.write_text(json.dumps(saved, indent=1))


def run(argv: list[str]) -> int:
    return main(recipe="webdancer", default_config=ROOT / "launch/configs/webdancer.yaml", argv=argv,
                pipeline=pipeline, check=check_stages, extend=extend_report)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
