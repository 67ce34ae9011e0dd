"""VRAG-RL on the visual world (SEEDS 4; DESIGN section 5).

    python launch/vrag.py [--config FILE] [--smoke] [key.path=value ...]

The story (launch/stages.py functions on one set of Ray actor groups):
  synthesize visual questions on the world's rendered pages (documents, tables, charts; each answer is
     read off one page, whose id is the gold id)
  -> expert trajectories: envs/visual/expert.py searches for the page, crops the answer's region and
     answers, through the real image_search / crop tools and the policy's own agent loop (VRAG-RL grammar:
     <search>, <bbox>, <answer>; image observations as user turns)
  -> the RFT filter -> SFT cold start (observations, images included, masked)
  -> GRPO with KL (beta 0.01, low_var_kl, SEEDS 4.4) with the VRAG reward
     0.7 answer + 0.1 pattern + 0.2 NDCG of the retrieved pages, gated by the pattern (SEEDS 4.3)
  -> evaluation before and after (Pass@1 over k runs, Pass@k), plots, report.md.

The embedded default is a tiny random-init Qwen2.5-VL (rl/models.py build_tiny_vl_model) served by the HF
engine: vLLM's CPU build cannot load Qwen2.5-VL on this machine (no torchvision for its image processor).
A real run names a VLM folder (e.g. Qwen2.5-VL-7B-Instruct) and rollout.backend=vllm on GPUs, where images
reach vLLM as multi_modal_data (rollout/engines/vllm_engine.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/vrag.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import check_stage_order, main  # noqa: E402

STAGES = ("expert", "sft", "rl")  # and eval_<name>, anywhere


def synthesize(cfg, run_dir: Path) -> dict:
    """Visual questions on the world's pages, split into expert (SFT), RL and held-out questions (disjoint).
    Each item carries its gold page's title and raw size for the expert. Written to run_dir/data/*.jsonl."""
    from envs.visual import render_pages, visual_qa
    from envs.world import generate_world

    world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
    pages = {p.id: p for p in render_pages(world)}
    wanted = cfg.sft.expert_tasks + cfg.data.num_tasks + cfg.eval.num_tasks
    items = visual_qa(world, list(pages.values()), n=wanted, seed=cfg.run.seed)
    if len(items) < wanted:
        raise ValueError(f"the {cfg.env.world_size} world (seed {cfg.env.world_seed}) yielded {len(items)} visual "
                         f"questions, fewer than sft.expert_tasks + data.num_tasks + eval.num_tasks = {wanted}; "
                         "use a larger env.world_size or fewer tasks")
    for it in items:
        page = pages[it["gold_region"]["page_id"]]
        it["page_size"], it["page_title"] = list(page.size), page.title
    a, b = cfg.sft.expert_tasks, cfg.sft.expert_tasks + cfg.data.num_tasks
    split = {"expert": items[:a], "rl": items[a:b], "heldout": items[b:wanted]}
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kinds = {name: {k: sum(r["page_kind"] == k for r in rows) for k in ("document", "table", "chart")}
             for name, rows in split.items()}
    print(f"synthesized {wanted} visual questions: {kinds}", flush=True)
    return {"world": world, "kinds": kinds, **split}


def pipeline(cfg, run_dir: Path) -> dict:
    from envs.visual.expert import VisualExpert
    from launch import stages as st

    data = synthesize(cfg, run_dir)
    return st.run_pipeline(cfg, run_dir, data, st.rft_expert(cfg, data, run_dir, expert_cls=VisualExpert),
                           results={"page_kinds": data["kinds"]})


def check_stages(cfg) -> str | None:
    """A mistake in the config, said before anything starts (None if fine)."""
    if cfg.data.task != "visual_qa":
        return f"data.task: VRAG-RL runs on visual_qa (the world's page images), got {cfg.data.task!r}"
    if cfg.agent.format != "vrag":
        return f"agent.format: VRAG-RL's grammar is 'vrag', got {cfg.agent.format!r}"
    tools = set(cfg.env.tools)
    if not {"image_search", "crop"} <= tools:
        return f"env.tools: VRAG-RL needs image_search and crop, got {sorted(tools)}"
    return check_stage_order(cfg.pipeline.stages, STAGES)


if __name__ == "__main__":
    sys.exit(main(recipe="vrag", default_config=ROOT / "launch/configs/vrag.yaml", argv=sys.argv[1:],
                  pipeline=pipeline, check=check_stages))
