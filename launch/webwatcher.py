"""WebWatcher on the visual world: BrowseComp-VL-style questions and the multimodal tools (SEEDS 9).

    python launch/webwatcher.py [--config FILE] [--smoke] [key.path=value ...]

The story (launch/stages.py functions on one set of Ray actor groups):
  synthesize BrowseComp-VL-style questions (envs/visual/bcvl.py): a multi-hop walk from a key entity over
     the world, turned into a visual question by attaching an image of that entity; Level 1 names it,
     Level 2 obscures every entity (the image must be recognised); also written in the released form
     (data/bcvl/bc_vl_level{1,2}.jsonl, images as PNG)
  -> expert trajectories: envs/visual/expert_webwatcher.py runs a reverse image search and OCR of the
     question's image in one turn (two tool calls, run concurrently), then visits the pages of the walk,
     through the real tools (web_search, VLSearchImage, visit, code_interpreter, ocr) and the policy's own
     agent loop (the WebWatcher grammar: rollout/formats/react.py ParallelReActFormat)
  -> the RFT filter -> SFT cold start (observations, images included, masked)
  -> GRPO with the format + judge reward (0.1 format + 0.9 answer; the answer by a rule judge on the gold
     answers, an LLM judge by configuration: reward.judge)
  -> evaluation before and after (Pass@1 over k runs, Pass@k, per level), plots, report.md.

The question's image reaches the policy by its URL in the question ("Image: image://q-..."), which the
image tools take; the agent loop has no image in the first prompt yet, so the policy sees pixels only in
the tools' observations (the reverse search's nearest pictures).

The embedded default is the tiny random-init Qwen2.5-VL (rl/models.py build_tiny_vl_model) on the HF engine,
as launch/vrag.py. A real run names a VLM folder and rollout.backend=vllm on GPUs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/webwatcher.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import check_stage_order, main  # noqa: E402

STAGES = ("expert", "sft", "rl")  # and eval_<name>, anywhere
TOOLS = {"web_search", "VLSearchImage", "visit", "code_interpreter", "ocr"}  # SEEDS 9.1
LEVEL = {1: "level 1 (entities named)", 2: "level 2 (entities obscured)"}


def visual_question(item: dict) -> str:
    """The task's question: the BC-VL question and the URL of its image, which the image tools take."""
    return f"{item['question']}\nImage: {item['image_url']}"


def synthesize(cfg, run_dir: Path) -> dict:
    """BC-VL-style questions split into expert (SFT), RL and held-out questions (disjoint, levels mixed);
    written to run_dir/data/*.jsonl and, in the released form, to run_dir/data/bcvl/."""
    from envs.visual.bcvl import browsecomp_vl, write_bcvl
    from envs.visual.pictures import WorldImages
    from envs.world import generate_world

    world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
    images = WorldImages(world)
    wanted = cfg.sft.expert_tasks + cfg.data.num_tasks + cfg.eval.num_tasks
    items = browsecomp_vl(world, wanted, seed=cfg.run.seed, images=images)
    if len(items) < wanted:
        raise ValueError(f"the {cfg.env.world_size} world (seed {cfg.env.world_seed}) yielded {len(items)} BC-VL "
                         f"questions, fewer than sft.expert_tasks + data.num_tasks + eval.num_tasks = {wanted}; "
                         "use a larger env.world_size or fewer tasks")
    folder = run_dir / "data"
    write_bcvl(items, folder / "bcvl", images)
    for it in items:
        it["question_text"], it["question"] = it["question"], visual_question(it)
    a, b = cfg.sft.expert_tasks, cfg.sft.expert_tasks + cfg.data.num_tasks
    split = {"expert": items[:a], "rl": items[a:b], "heldout": items[b:wanted]}
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    levels = {name: {f"level{k}": sum(r["level"] == k for r in rows) for k in LEVEL} for name, rows in split.items()}
    print(f"synthesized {wanted} BrowseComp-VL-style questions: {levels}", flush=True)
    return {"world": world, "levels": levels, **split,
            "heldout_tags": [LEVEL[r["level"]] for r in split["heldout"]]}


def pipeline(cfg, run_dir: Path) -> dict:
    from envs.visual.expert_webwatcher import WebWatcherExpert
    from launch import stages as st

    data = synthesize(cfg, run_dir)
    return st.run_pipeline(cfg, run_dir, data, st.rft_expert(cfg, data, run_dir, expert_cls=WebWatcherExpert),
                           results={"levels": data["levels"]})


def check_stages(cfg) -> str | None:
    """A mistake in the config, said before anything starts (None if fine)."""
    if cfg.data.task != "world_qa":
        return (f"data.task: WebWatcher synthesizes its questions over the world (world_qa, scored as questions), "
                f"got {cfg.data.task!r}")
    if cfg.agent.format != "react_parallel":
        return (f"agent.format: WebWatcher's grammar is 'react_parallel' (several tool calls a turn), "
                f"got {cfg.agent.format!r}")
    missing = TOOLS - set(cfg.env.tools)
    if missing:
        return f"env.tools: WebWatcher's tool set lacks {sorted(missing)} (SEEDS 9.1: {sorted(TOOLS)})"
    return check_stage_order(cfg.pipeline.stages, STAGES)


if __name__ == "__main__":
    sys.exit(main(recipe="webwatcher", default_config=ROOT / "launch/configs/webwatcher.yaml", argv=sys.argv[1:],
                  pipeline=pipeline, check=check_stages))
