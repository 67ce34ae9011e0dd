"""The WebWatcher recipe end to end from the command line, `--smoke`, offline, through real Ray actor groups
(HF engine on the tiny Qwen2.5-VL, the five WebWatcher tools on an EnvServer, rewards, FSDP2 trainer): the
expert's first turn makes two tool calls that come back in one observation in their order, its image
observations are in the saved trajectories (pads and images agree), the format + judge reward is
recomputed from its parts, and the BC-VL data are written in the released form."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_recipes import as_float, metrics_rows, run_recipe, table


@pytest.mark.slow
def test_webwatcher_smoke(tmp_path):
    from envs.visual.bcvl import load_bcvl
    from rl.models import build_tiny_vl_model
    from rollout.vision import VisionSpec

    run_dir = tmp_path / "webwatcher"
    seconds = run_recipe("webwatcher.py", run_dir, ["eval.num_tasks=2", "data.batch_size=2", "rollout.n=2",
                                                    "data.num_tasks=4", "sft.expert_tasks=6", "sft.batch_size=3",
                                                    "pipeline.stages=[expert,sft,rl,eval_rl]", "run.steps=1"], tmp_path)
    print(f"webwatcher smoke: {seconds:.0f} s")
    report = (run_dir / "report.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert "## RL" in report and "## SFT" in report
    assert results["eval_rl"]["num_tasks"] == 2 and "mean_reward" in results["eval_rl"]

    # the data, also in the released BC-VL form (question, image_path, answers as a string, domain)
    released = [t for level in (1, 2) for t in load_bcvl(run_dir / "data" / "bcvl" / f"bc_vl_level{level}.jsonl")]
    assert len(released) == 6 + 4 + 2 and {t["level"] for t in released} == {1, 2}

    # the expert: image search and OCR in one turn (results in the calls' order), then the walk's pages
    expert = table(run_dir / "trajectories" / "expert.parquet")
    vision = VisionSpec.from_model(str(build_tiny_vl_model()))
    for text, ids, images, calls in zip(expert["response_text"], expert["response_ids"], expert["images"],
                                        expert["num_tool_calls"]):
        first = text.split("<tool_response>", 2)[1]
        assert first.index("[1] VLSearchImage:") < first.index("[2] ocr:")
        assert calls >= 3 and len(images) == 2  # the reverse search's two nearest pictures
        vision.check(list(ids), images)
    assert results["rft"]["rft/kept"] >= 1

    # format + judge reward (SEEDS 9.2): 0.1 format + 0.9 answer, the expert's answers right and well formed
    fmt, ans = as_float(expert["reward_format"]), as_float(expert["reward_answer"])
    np.testing.assert_allclose(as_float(expert["reward"]), 0.1 * fmt + 0.9 * np.nan_to_num(ans), atol=1e-6)
    assert (fmt == 1).mean() >= 0.8 and (ans == 1).mean() >= 0.8

    rows = metrics_rows(run_dir / "metrics.jsonl")
    assert len(rows) == 1
    assert "images" in table(run_dir / "trajectories" / "step_000001.parquet")
