"""The WebDancer and EvolveSearch recipes end to end from the command line, `--smoke`, offline, through real
Ray actor groups (rollout, reward, trainer, env). Smaller than the default smoke (fewer questions, turns
and evaluations) so that each run stays within a few minutes here; the run folder is then checked
against what the recipe claims: filter counts recomputed from the saved trajectories, the paper's reward
composition recomputed from the reward parts, the rounds and their harvests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from launch.common import ROOT


def run_recipe(script: str, run_dir: Path, overrides: list[str], cwd: Path) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / script), "--smoke", f"run.dir={run_dir}",
                           "run.progress=false", *overrides], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.stdout.count(f"run folder: {run_dir}") == 2
    return time.time() - t0


def table(path: Path) -> dict[str, np.ndarray]:
    t = pq.read_table(path)
    return {c: np.array(t.column(c).to_pylist(), dtype=object) for c in t.schema.names}


def as_float(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def metrics_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def common_outputs(run_dir: Path, eval_names: list[str]) -> tuple[str, dict]:
    report = (run_dir / "report.md").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    for name in eval_names:
        assert f"| {name} |" in report and f"eval_{name}" in results, name
        assert (run_dir / "trajectories" / f"eval_{name}.parquet").exists()
        assert results[f"eval_{name}"]["num_tasks"] == 2
    for split in ("expert", "rl", "heldout"):
        assert (run_dir / "data" / f"{split}.jsonl").exists()
    assert "## RL" in report and "## SFT" in report
    for plot in ("reward", "length", "step_time", "sft_loss"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000, plot
    return report, results


# the expert writes turns of up to ~200 tokens (smoke.yaml allows 160)
SMALL = ["eval.num_tasks=2", "agent.max_tokens_per_turn=256", "data.batch_size=2", "rollout.n=2", "rollout.backend=hf"]
# The recipe smokes roll out on the HF engine: it starts in seconds, where a vLLM engine's start (three processes,
# each importing vLLM) took 25 of a smoke's 70-85 s on 2 cores. vLLM runs the main job's (tests/test_launch.py),
# the soak's, the learning test's and the engine tests' rollouts.


@pytest.mark.slow
def test_webdancer_smoke(tmp_path):
    """CRAWLQA + E2HQA -> expert -> three-stage filter -> SFT -> DAPO RL -> evaluation, from the command line."""
    run_dir = tmp_path / "webdancer"
    seconds = run_recipe("webdancer.py", run_dir, SMALL + [
        "pipeline.stages=[expert,sft,rl,eval_rl]", "data.num_tasks=4", "algo.max_gen_rounds=1", "run.steps=1",
        "agent.max_turns=5"], tmp_path)  # the expert's longest episode (RL episodes of 10 turns double the time)
    # (one RL step: a second step's sync and generation are the main job's, the soak's and the presets' to show)
    report, results = common_outputs(run_dir, ["rl"])
    print(f"webdancer smoke: {seconds:.0f} s")

    # the questions: both synthesizers, in disjoint splits of the sizes asked for
    splits = {s: [json.loads(x) for x in (run_dir / "data" / f"{s}.jsonl").read_text().splitlines()]
              for s in ("expert", "rl", "heldout")}
    assert [len(v) for v in splits.values()] == [8, 4, 2]
    uids = [it["uid"] for v in splits.values() for it in v]
    assert len(set(uids)) == len(uids)
    tags = {it["tag"] for v in splits.values() for it in v}
    assert tags == {"crawlqa", "e2hqa"}
    assert sum(sum(m.values()) for m in results["mix"].values()) == 14

    # the funnel: counts recomputed from the expert trajectories, monotone, something left for SFT
    c = results["rft"]
    order = ["filter/input", "filter/validity", "filter/correctness", "quality/length", "quality/tool_calls",
             "quality/dedup", "quality/no_repeat", "filter/quality"]
    counts = [c[k] for k in order]
    assert counts == sorted(counts, reverse=True) and counts[0] == 8 and counts[-1] >= 1, c
    expert = table(run_dir / "trajectories" / "expert.parquet")
    valid = (expert["finish"] == "answer") & (as_float(expert["reward_format"]) == 1)
    correct = valid & (as_float(expert["reward_answer"]) == 1)
    assert (int(valid.sum()), int(correct.sum())) == (c["filter/validity"], c["filter/correctness"])
    by_type = results["filter_by_type"]
    assert sum(r["input"] for r in by_type.values()) == 8
    assert sum(r["kept"] for r in by_type.values()) == c["filter/quality"]
    for section in ("Three-stage trajectory filter", "1. validity", "2. correctness", "3. quality",
                    "Questions (CRAWLQA and E2HQA"):
        assert section in report, section

    # SFT then DAPO: steps logged, the webdancer composition 0.1 format + 0.9 answer (+ overlong punishment)
    sft = metrics_rows(run_dir / "sft_metrics.jsonl")
    assert len(sft) >= 1 and all(np.isfinite(r["sft/loss"]) for r in sft)
    rows = metrics_rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algo"]["sampler"] == "dapo" and config["algo"]["clip_high"] == 0.28
    assert config["reward"]["composition"] == "webdancer"
    for step in (1,):
        t = table(run_dir / "trajectories" / f"step_{step:06d}.parquet")
        fmt, ans = as_float(t["reward_format"]), np.nan_to_num(as_float(t["reward_answer"]))
        expected = 0.1 * fmt + 0.9 * ans + as_float(t.get("reward_overlong", np.zeros(len(fmt))))
        np.testing.assert_allclose(as_float(t["reward"]), expected, atol=1e-5)


@pytest.mark.slow
def test_evolvesearch_smoke(tmp_path):
    """Two rounds of RL on disjoint shards -> harvest -> SFT from the base, with the warm-up base, from the
    command line."""
    run_dir = tmp_path / "evolve"
    seconds = run_recipe("evolvesearch.py", run_dir, SMALL + [
        "pipeline.stages=[warmup,rl,harvest,sft,rl,harvest,sft,eval_final]", "run.steps=1", "data.num_tasks=4",
        "sft.expert_tasks=4", "sft.batch_size=2", "agent.max_turns=4"], tmp_path)  # the expert needs 3 turns
    report, results = common_outputs(run_dir, ["final"])
    print(f"evolvesearch smoke: {seconds:.0f} s; rounds {results['rounds']}")

    assert (run_dir / "base_model" / "trainer" / ".metadata").exists()  # the base, sharded
    assert results["rft"]["rft/kept"] >= 1  # the warm-up's expert data
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["questions"] for r in rounds] == [2, 2]
    rl_uids, pool = [], 0
    for r in rounds:
        folder = run_dir / f"round{r['round']}"
        assert [m["step"] for m in metrics_rows(folder / "metrics.jsonl")] == [1]
        t = table(folder / "trajectories" / "step_000001.parquet")
        rl_uids.append(set(t["uid"]))
        # the EvolveSearch reward: 0.5 (format + answer) where the format is right, else 0
        fmt, ans = as_float(t["reward_format"]), as_float(t["reward_answer"])
        np.testing.assert_allclose(as_float(t["reward"]), np.where(fmt == 1, 0.5 * (fmt + np.nan_to_num(ans)), 0.0),
                                   atol=1e-5)
        # the harvest: answered, format-correct and answer-correct rollouts of this round
        h = r["harvest"]
        good = (t["finish"] == "answer") & (fmt == 1) & (np.nan_to_num(ans) == 1)
        assert h["rft/input"] == len(fmt) and h["rft/correct"] == int(good.sum()) >= h["rft/kept"]
        pool += h["rft/kept"]
        assert h["pool"] >= h["rft/kept"] and h["pool"] <= pool
        assert r["sft_data"] == h["pool"]
        harvest_file = run_dir / "trajectories" / f"harvest_round{r['round']}.parquet"
        assert harvest_file.exists() == (h["rft/kept"] > 0)
        if h["pool"] == 0:  # SFT from the base on nothing: the engines serve the base weights again
            assert r["sft_steps"] == 0
            assert r["probe_after_sft"] == pytest.approx(results["base_probe"], abs=1e-3)
        else:
            assert r["sft_steps"] >= 1
    assert not rl_uids[0] & rl_uids[1]  # disjoint shards
    all_rows = metrics_rows(run_dir / "metrics.jsonl")
    assert [(m["round"], m["step"]) for m in all_rows] == [(1, 1), (2, 2)]
    for section in ("## Rounds", "Expert trajectories and the RFT filter", "| 1 | 2 | 1 |", "| 2 | 2 | 1 |"):
        assert section in report, section


def test_resumable_prefix_skips_only_what_can_be_restored():
    from launch.stages import resumable_prefix

    stages = ["expert", "eval_base", "sft", "eval_sft", "rl", "eval_rl"]
    done = ["expert", "eval_base", "sft", "eval_sft"]
    assert resumable_prefix(stages, done, {"sft": True, "rl": False}) == done
    # no sft checkpoint (run.save_every was 0): sft runs again, and so does the expert that feeds it
    assert resumable_prefix(stages, done, {"sft": False, "rl": False}) == ["eval_base"]
    # an unfinished rl stage continues from its own checkpoints (rl/controller.py); what follows it runs again
    assert resumable_prefix(stages, done + ["rl"], {"sft": True, "rl": False}) == done
    assert resumable_prefix(stages, stages, {"sft": True, "rl": True}) == stages
    assert resumable_prefix(stages, [], {"sft": True, "rl": True}) == []


def test_a_resumed_pipeline_refuses_a_setting_its_finished_stages_depend_on():
    """The settings recorded with the stages done are compared with the resumed run's: a change the skipped
    stages' results depend on (here the questions' seed, SFT's learning rate) is refused by name, an rl
    setting is printed when the rl stage runs now and refused as ignored when it is done."""
    from launch.stages import resume_changes
    from rl.config import Config, ConfigError, to_dict

    before = json.loads(json.dumps(to_dict(Config())))  # as the record holds it: tuples read back as lists
    after_sft = ["expert", "sft", "eval_sft"]

    def now(**changes):
        d = to_dict(Config())
        for key, value in changes.items():
            section, name = key.split("__")
            d[section][name] = value
        return d

    assert resume_changes(before, now(run__dir="/elsewhere", run__resume=True), after_sft) == []
    assert resume_changes(before, now(trainer__lr=1e-4), after_sft) == [
        f"trainer.lr: {before['trainer']['lr']!r} -> 0.0001 (read by the stages that run now)"]
    for key, value in (("run__seed", 7), ("sft__lr", 1.0), ("eval__num_tasks", 5), ("trainer__lora_rank", 4)):
        with pytest.raises(ConfigError, match=key.replace("__", ".") + ".*the stages done"):
            resume_changes(before, now(**{key: value}), after_sft)
    with pytest.raises(ConfigError, match="algo.kl_coef.*rl stage is done"):
        resume_changes(before, now(algo__kl_coef=0.5), after_sft + ["rl"])
    # another RL seed on the same SFT (rollout.seed; run.seed also drew the questions): before rl, not after
    assert resume_changes(before, now(rollout__seed=1), after_sft) == [
        "rollout.seed: None -> 1 (read by the stages that run now)"]
    with pytest.raises(ConfigError, match="rollout.seed.*rl stage is done"):
        resume_changes(before, now(rollout__seed=1), after_sft + ["rl"])
    assert resume_changes(before, now(run__seed=7), []) == []  # nothing skipped: nothing to compare


def test_a_refused_resume_fails_before_any_actor_starts(tmp_path):
    """`resume_plan` reads the run folder only: run_pipeline calls it before RLGroups, so a refused change costs
    no actor start-up (it once failed 21 s in, after the actor groups were up)."""
    from launch.stages import PIPELINE_STATE, SFT_CHECKPOINT, resume_plan
    from rl.config import ConfigError, load_config, to_dict

    config = ROOT / "launch/configs/websailor.yaml"
    stages = "pipeline.stages=[expert,sft,eval_sft]"
    before = load_config(config, [f"run.dir={tmp_path}", stages])
    (tmp_path / SFT_CHECKPOINT).mkdir(parents=True)
    (tmp_path / SFT_CHECKPOINT / "trainer-state.pt").write_bytes(b"")
    (tmp_path / PIPELINE_STATE).write_text(json.dumps({
        "done": ["expert", "sft"], "policy_version": 1, "results": {"sft": [{"loss": 1.0}]},
        "config": to_dict(before)}))
    now = ["run.resume=true", f"run.dir={tmp_path}", stages]
    plan = resume_plan(load_config(config, now), tmp_path)
    assert (plan.skip, plan.trained, plan.checkpoint) == (["expert", "sft"], "sft", tmp_path / SFT_CHECKPOINT)
    assert plan.state["results"] == {"sft": [{"loss": 1.0}]}
    with pytest.raises(ConfigError, match="sft.epochs: 5 -> 1"):
        resume_plan(load_config(config, now + ["sft.epochs=1"]), tmp_path)
    assert resume_plan(load_config(config, [f"run.dir={tmp_path}"]), tmp_path) is None  # run.resume not set


def test_a_batch_larger_than_the_rl_questions_is_refused_before_any_actor_starts(tmp_path, capsys, monkeypatch):
    """It was found by the rl stage's task sampler, after the expert, SFT and evaluation stages had run."""
    import launch.websailor as websailor

    def no_actors(*args, **kwargs):
        raise AssertionError("RLGroups started")

    monkeypatch.setattr("rl.groups.RLGroups", no_actors)
    code = websailor.main(recipe="websailor", default_config=ROOT / "launch/configs/websailor.yaml",
                          argv=[f"run.dir={tmp_path}", "data.num_tasks=8", "data.batch_size=9", "eval.num_tasks=4",
                                "sft.expert_tasks=4"], pipeline=websailor.pipeline, check=websailor.check_stages)
    assert code == 2
    assert "data.batch_size=9 is more than the 8 RL questions (data.num_tasks=8)" in capsys.readouterr().err


@pytest.mark.parametrize("recipe, argv, said", [
    ("memp", ["pipeline.stages=[expert,sft,rl]", "run.steps=1", "data.num_tasks=8", "data.batch_size=9"],
     "data.batch_size=9 is more than the 8 RL questions (data.num_tasks=8)"),
    ("evolvesearch", ["data.num_tasks=8", "data.batch_size=3"],  # 3 rounds of 3, 3 and 2 questions
     "data.num_tasks=8 split into 3 shards (one per 'rl' stage) leaves 2 questions per round, fewer than "
     "data.batch_size=3"),  # its check_stages, before any data are made
    ("masksearch", ["data.num_tasks=8", "data.batch_size=9"], "fewer than data.batch_size = 9"),
])
def test_the_recipes_with_their_own_loop_refuse_a_batch_larger_than_their_rl_questions_early(
        tmp_path, capsys, monkeypatch, recipe, argv, said):
    """As run_pipeline does for the others: before any actor starts, exit 2 with one message."""
    import importlib

    from launch.common import main

    def no_actors(*args, **kwargs):
        raise AssertionError("RLGroups started")

    monkeypatch.setattr("rl.groups.RLGroups", no_actors)
    module = importlib.import_module(f"launch.{recipe}")
    sizes = ["eval.num_tasks=4"] + (["sft.expert_tasks=4"] if recipe != "masksearch" else [])
    code = main(recipe=recipe, default_config=ROOT / f"launch/configs/{recipe}.yaml",
                argv=[f"run.dir={tmp_path}", *sizes, *argv], pipeline=module.pipeline, check=module.check_stages)
    assert code == 2
    assert said in capsys.readouterr().err


def test_rollout_seed_seeds_the_rl_stage_alone():
    from rl.config import load_config
    from rl.controller import rl_stage_seed, step_seed

    spine = ROOT / "launch/configs/spine.yaml"
    assert rl_stage_seed(load_config(spine, ["run.seed=3"])) == 3
    assert rl_stage_seed(load_config(spine, ["run.seed=3", "rollout.seed=1"])) == 1
    assert step_seed(1, 2) != step_seed(3, 2)


@pytest.mark.slow
def test_a_resumed_pipeline_skips_its_finished_stages_and_serves_the_sft_weights(tmp_path):
    """run.save_every > 0: the sft stage's trainer state is checkpointed and each finished stage recorded;
    run.resume skips them and restores the state. The evaluation after SFT, run again in the resumed run (its
    record removed), samples exactly the trajectories it sampled before (the HF engine is deterministic on
    CPU): the engines serve the SFT weights, not the base model's. An rl stage added to the resumed run (GRPO,
    with its KL term) has the SFT policy as its reference: its first step's KL is 0."""
    run_dir = tmp_path / "run"
    # 3 turns: the expert's search, visit and answer; the random policy's episodes (evaluation, RL) stay short
    rl_only = ("data.batch_size", "rollout.n")  # read by no stage of the first run: given with its rl stage
    args = ["run.save_every=1", "pipeline.stages=[expert,sft,eval_sft]", "agent.max_turns=3",
            *[o for o in SMALL if not o.startswith(rl_only)]]
    run_recipe("websailor.py", run_dir, args, tmp_path)
    state_path = run_dir / "pipeline_state.json"
    state = json.loads(state_path.read_text())
    assert state["done"] == ["expert", "sft", "eval_sft"] and (run_dir / "stage_checkpoints/sft/trainer").is_dir()
    first = table(run_dir / "trajectories" / "eval_sft.parquet")["response_ids"]
    first_sft = state["results"]["sft"]

    state["done"] = ["expert", "sft"]
    state_path.write_text(json.dumps(state))
    rl = ["pipeline.stages=[expert,sft,eval_sft,rl]", "run.steps=1", "algo.preset=grpo", "algo.prefilter=false",
          *[o for o in SMALL if o.startswith(rl_only)]]
    proc = subprocess.run([sys.executable, str(ROOT / "launch/websailor.py"), "--smoke", f"run.dir={run_dir}",
                           "run.progress=false", "run.resume=true", *args, *rl], capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "--- stage sft: done in an earlier run" in proc.stdout and "--- stage eval_sft (at" in proc.stdout
    assert "resumed the pipeline after sft from" in proc.stdout
    again = table(run_dir / "trajectories" / "eval_sft.parquet")["response_ids"]
    assert [list(r) for r in again] == [list(r) for r in first]
    assert json.loads(state_path.read_text())["results"]["sft"] == first_sft  # kept, not re-trained
    assert "## SFT" in (run_dir / "report.md").read_text()
    step = metrics_rows(run_dir / "metrics.jsonl")[0]
    assert step["train/kl_ref"] == pytest.approx(0.0, abs=1e-6), step["train/kl_ref"]  # the reference: SFT's
