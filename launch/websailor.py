"""WebSailor, the main job (SEEDS 3; DESIGN section 5).

    python launch/websailor.py [--config FILE] [--smoke] [key.path=value ...]
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python launch/websailor.py

The story (each step a function of launch/stages.py, all on one set of Ray actor groups):
  synthesize SailorFog-QA questions on the world (expert / RL / held-out splits)
  -> expert trajectories: a scripted expert that plans over the knowledge graph and acts only
     through the tools, run through the policy's own agent loop
  -> the RFT filter (correct, length bound, minimum tool calls) -> RFT cold start (SFT, observations masked)
  -> DUPO RL (pre-filter, duplicating sampler) with 0.1 format + 0.9 answer
  -> evaluation before and after each stage (Pass@1 over k runs, Pass@k), plots and report.md.
`pipeline.stages` chooses the steps (default: expert eval_base sft eval_sft rl eval_rl). With
`--config launch/configs/spine.yaml` the same script runs the spine's single-turn learnable task.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/websailor.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import check_stage_order, main  # noqa: E402

STAGES = ("expert", "sft", "rl")  # and eval_<name>, anywhere


def pipeline(cfg, run_dir: Path) -> dict:
    from launch import stages as st

    data = st.synthesize(cfg, run_dir) if cfg.data.task == "world_qa" else st.file_splits(cfg, run_dir)
    return st.run_pipeline(cfg, run_dir, data, st.rft_expert(cfg, data, run_dir))


def check_stages(cfg) -> str | None:
    """A mistake in pipeline.stages, said before anything starts (None if fine)."""
    problem = check_stage_order(cfg.pipeline.stages, STAGES)
    if problem:
        return problem
    if cfg.data.task == "file" and "expert" in cfg.pipeline.stages:
        return ("pipeline.stages: the scripted expert plans over the synthetic world (data.task=world_qa); "
                "with data.task=file run rl and eval_<name> stages (SFT data from your own trajectories)")
    return None


if __name__ == "__main__":
    sys.exit(main(recipe="websailor", default_config=ROOT / "launch/configs/websailor.yaml", argv=sys.argv[1:],
                  pipeline=pipeline, check=check_stages))
