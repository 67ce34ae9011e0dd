"""The VRAG-RL recipe end to end from the command line, `--smoke`, offline, through real Ray actor groups
(HF engine on the tiny Qwen2.5-VL, image_search / crop tools on an EnvServer, rewards, FSDP2 trainer):
the expert's image observations are in the saved trajectories (pads and images agree), the VRAG reward is
recomputed from its parts, and GRPO ran with the KL term."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_recipes import as_float, metrics_rows, run_recipe, table


@pytest.mark.slow
def test_vrag_smoke(tmp_path):
    from rl.models import build_tiny_vl_model
    from rollout.vision import VisionSpec

    run_dir = tmp_path / "vrag"
    seconds = run_recipe("vrag.py", run_dir, ["eval.num_tasks=2", "data.batch_size=2", "rollout.n=2",
                                              "data.num_tasks=4", "sft.expert_tasks=6", "sft.batch_size=3",
                                              "pipeline.stages=[expert,sft,rl,eval_rl]", "run.steps=1"], tmp_path)
    print(f"vrag smoke: {seconds:.0f} s")
    report = (run_dir / "report.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert "## RL" in report and "## SFT" in report
    assert results["eval_rl"]["num_tasks"] == 2 and "mean_reward" in results["eval_rl"]

    # the expert: every trajectory searched, was shown the gold page, cropped and answered
    expert = table(run_dir / "trajectories" / "expert.parquet")
    vision = VisionSpec.from_model(str(build_tiny_vl_model()))
    for ids, images, retrieved, gold in zip(expert["response_ids"], expert["images"], expert["retrieved"],
                                            expert["gold_ids"]):
        assert len(images) >= 2  # the page and the crop
        vision.check(list(ids), images)
        assert gold[0] in retrieved
    assert results["rft"]["rft/kept"] >= 1

    # the VRAG reward (SEEDS 4.3): 0.7 answer + 0.1 pattern + 0.2 NDCG, gated by the pattern
    fmt, ans, ndcg = (as_float(expert[f"reward_{p}"]) for p in ("format", "answer", "ndcg"))
    want = np.where(fmt > 0, 0.7 * np.nan_to_num(ans) + 0.1 * fmt + 0.2 * ndcg, 0.0)
    np.testing.assert_allclose(as_float(expert["reward"]), want, atol=1e-6)
    assert (fmt == 1).all() and (ans == 1).all()

    # RL: GRPO with the KL term; the trajectories keep an images column for the trainer
    rows = metrics_rows(run_dir / "metrics.jsonl")
    assert len(rows) == 1 and all("train/kl_ref" in r for r in rows)
    # its reference is the policy RL starts from (the SFT policy), not the weights loaded before SFT
    assert rows[0]["train/kl_ref"] == pytest.approx(0.0, abs=1e-6), rows[0]["train/kl_ref"]
    step = table(run_dir / "trajectories" / "step_000001.parquet")
    assert "images" in step
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["algo"]["kl_coef"] == 0.01 and cfg["model"]["path"] == "tiny_vl"
