"""The main job from the command line: `--smoke` directly, and under `ray job submit` against a
local head that the test starts on 127.0.0.1 and ends by PID (never `ray stop`)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from launch.common import ROOT
from launch.stages import sft_lr
from tests.ray_head import BIN, LocalHead


def check_run_dir(run_dir: Path, steps: int):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    report = (run_dir / "report.md").read_text()
    return rows, report


# smaller than --smoke where the checks do not need its sizes: 2 held-out questions, 4 expert and 4 RL questions
# (the pre-filter generates for each), episodes of at most 4 turns (the expert needs 3: search, visit, answer;
# the near-random policy otherwise writes 6 turns of 256 tokens), one evaluation (after RL; the evaluation stage
# is the same function before and after each stage)
JOB_SIZES = ["eval.num_tasks=2", "sft.expert_tasks=4", "data.num_tasks=4", "agent.max_turns=4",
             "pipeline.stages=[expert,sft,rl,eval_rl]"]


def check_websailor_run(run_dir: Path):
    """Every stage of the WebSailor pipeline left its outputs in the run folder."""
    rows, report = check_run_dir(run_dir, steps=2)
    for section in ("Expert trajectories and the RFT filter", "Evaluation on 2 held-out questions", "## SFT", "## RL"):
        assert section in report, section
    assert "| rl |" in report
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rft"]["rft/kept"] >= 1 and set(results) >= {"eval_rl"}
    for name in ("expert", "eval_rl"):
        assert (run_dir / "trajectories" / f"{name}.parquet").exists(), name
    assert len(list((run_dir / "trajectories").glob("step_*.parquet"))) == 2
    for plot in ("reward", "length", "step_time", "sft_loss"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    assert (run_dir / "sft_metrics.jsonl").exists() and (run_dir / "dupo_prefilter.json").exists()
    for split in ("expert", "rl", "heldout"):
        assert (run_dir / "data" / f"{split}.jsonl").exists()
    # Pass@1 apart on held-out answer facts the SFT data held and new ones; the counts match the data files
    expert, heldout = ([json.loads(x) for x in (run_dir / "data" / f"{s}.jsonl").read_text().splitlines()]
                       for s in ("expert", "heldout"))
    seen = {(e["answer_entity"], str(e["answer"])) for e in expert}
    n_seen = sum((h["answer_entity"], str(h["answer"])) in seen for h in heldout)
    by_tag = results["eval_rl"]["by_tag"]
    assert sum(m["num_tasks"] for m in by_tag.values()) == len(heldout)
    assert by_tag.get("answer fact in the SFT data", {"num_tasks": 0})["num_tasks"] == n_seen
    assert "### Recall or reading" in report
    # the SFT learning rate each step used: the configured schedule under the trainer's warm-up
    cfg = json.loads((run_dir / "config.json").read_text())
    sft_rows = [json.loads(x) for x in (run_dir / "sft_metrics.jsonl").read_text().splitlines()]
    warm, sc = cfg["trainer"]["warmup_steps"], cfg["sft"]
    want = [sft_lr(r["step"], len(sft_rows), sc["lr"], sc["lr_schedule"], sc["min_lr_ratio"])
            * (min(1.0, r["step"] / warm) if warm else 1.0) for r in sft_rows]
    assert [r["sft/lr"] for r in sft_rows] == pytest.approx(want, rel=1e-6)


@pytest.mark.slow
def test_ray_job_submit_against_local_head(tmp_path):
    """The main job, `--smoke`, under `RAY_AUTH_MODE=token ray job submit --working-dir .`: every stage of
    the WebSailor pipeline (expert, RFT, SFT, DUPO RL, evaluations) through real Ray actor groups."""
    head = LocalHead()
    try:
        head.wait_ready()
        run_dir = tmp_path / "job"
        t0 = time.time()
        proc = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head.address, "--working-dir", str(ROOT), "--",
             "python", "launch/websailor.py", "--smoke", f"run.dir={run_dir}", "run.progress=false",
             *JOB_SIZES],
            env=head.env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        assert "succeeded" in proc.stdout.lower()
        assert time.time() - t0 < 600  # --smoke: under 10 minutes
        print("".join(line + "\n" for line in proc.stdout.splitlines() if "stage" in line or "groups up" in line))
        check_websailor_run(run_dir)
    finally:
        head.stop()
    assert head.proc.poll() is not None


def test_a_setting_only_another_recipe_reads_is_refused():
    from launch.common import recipe_only_keys
    from rl.config import load_config

    cfg = load_config(ROOT / "launch/configs/websailor.yaml", ["data.shaper_layers=3"])
    assert "data.shaper_layers" in recipe_only_keys(cfg, "websailor")
    assert recipe_only_keys(cfg, "webshaper") is None
    assert recipe_only_keys(load_config(ROOT / "launch/configs/websailor.yaml"), "websailor") is None
    thoughts = load_config(ROOT / "launch/configs/websailor.yaml", ["sft.expert_thoughts=explicit"])
    assert recipe_only_keys(thoughts, "websailor") is None and recipe_only_keys(thoughts, "webdancer") is None
    assert "sft.expert_thoughts" in recipe_only_keys(thoughts, "vrag")  # its visual expert has no such thoughts


def test_settings_only_a_stage_not_run_reads_are_refused_by_the_recipe():
    """MaskSearch's split has no expert questions, and Memp's memory.update is its rl stage's rule alone."""
    from launch.common import recipe_only_keys
    from launch.memp import check_stages
    from rl.config import load_config

    masks = load_config(ROOT / "launch/configs/masksearch.yaml", ["sft.expert_tasks=16"])  # the sft rule lets it by
    assert "sft.expert_tasks" in recipe_only_keys(masks, "masksearch")
    assert recipe_only_keys(load_config(ROOT / "launch/configs/websailor.yaml", ["sft.expert_tasks=16"]),
                            "websailor") is None
    memp = ROOT / "launch/configs/memp.yaml"
    assert check_stages(load_config(memp)) is None
    assert "rl stage's update rule" in check_stages(load_config(memp, ["memory.update=reflect"]))
    stages = "pipeline.stages=[expert,online_reflect,rl]"
    assert check_stages(load_config(memp, [stages, "memory.update=reflect", "run.steps=1"])) is None


def test_no_reference_model_without_a_stage_that_trains_with_rl():
    from rl.config import load_config, loads_reference
    from rl.memory_plan import plan_config

    memp = ROOT / "launch/configs/memp.yaml"  # no rl stage, and the default preset's kl_coef 0.04
    with_rl = load_config(memp, ["pipeline.stages=[expert,sft,rl]", "run.steps=1"])
    without = load_config(memp)
    assert without.algo.kl_coef > 0 and loads_reference(with_rl) and not loads_reference(without)
    planned = [set(plan_config(c).devices[0].phases["train"]) for c in (with_rl, without)]
    assert "trainer: reference model" in planned[0] and "trainer: reference model" not in planned[1]


def test_evaluate_names_the_training_settings_of_its_config_file(tmp_path):
    from launch.evaluate import config_file_unread

    unread = config_file_unread(str(ROOT / "launch/configs/websailor.yaml"))
    assert {"trainer.lr", "algo.preset", "sft.lr", "rollout.n", "run.steps"} <= set(unread)
    assert not any(k.startswith(("env.", "agent.", "eval.k", "model.")) for k in unread)
    assert config_file_unread(str(ROOT / "launch/configs/evaluate.yaml")) == []


def test_the_smoke_sizes_of_settings_only_other_recipes_read_are_no_setting_of_the_user(tmp_path, capsys):
    """--smoke sizes sft.expert_tasks for whatever reads it; MaskSearch reads nothing of it, and only a value the
    user gives is refused there."""
    from launch.common import main

    def stop(cfg, run_dir):
        raise SystemExit(0)  # the config passed every check: stop before any actor starts

    masks = ROOT / "launch/configs/masksearch.yaml"
    with pytest.raises(SystemExit):
        main("masksearch", masks, ["--smoke", f"run.dir={tmp_path}"], pipeline=stop)
    assert main("masksearch", masks, ["--smoke", f"run.dir={tmp_path}", "sft.expert_tasks=8"], pipeline=stop) == 2
    assert "sft.expert_tasks=8: only" in capsys.readouterr().err
