"""The MaskSearch recipe: the configuration checks and the curriculum plan (fast), and one `--smoke` run from the
command line, offline, through real Ray actor groups (rollout, reward, trainer, env), checked against what the
recipe claims: balanced RAMP splits, the curriculum's stages in order with the policy_version carried across
them, each stage trained only on its number of masks, the MaskSearch reward recomputed from the trajectories,
the report and plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch.common import ROOT
from rl.config import load_config

CONFIG = ROOT / "launch/configs/masksearch.yaml"


def run_cli(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch/masksearch.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("override, message", [
    ("pipeline.stages=[eval_base,rl_k5]", "RAMP tasks have 1 to 4 masks"),
    ("pipeline.stages=[rl]", "unknown stage 'rl'"),
    ("reward.fns={format: {style: websailor}, judge: {}}", "token_recall {masked_spans: true} or span_judge"),
    ("reward.fns.token_recall.masked_spans=false", "set masked_spans: true"),
    ("data.task=file", "needs data.path"),
])
def test_configuration_mistakes_exit_2(tmp_path, override, message):
    proc = run_cli([f"run.dir={tmp_path / 'never'}", override], tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert not (tmp_path / "never").exists()


def test_plan_staged_mixed_and_too_few_tasks():
    from launch.masksearch import plan

    items = [{"uid": f"u{k}{i}", "mask_num": k} for k in (1, 2, 4) for i in range(3)]
    cfg = load_config(CONFIG, ["data.batch_size=3", "run.steps=2", "pipeline.stages=[eval_a,staged,eval_b]"])
    assert plan(cfg, items) == [("eval_a", None, 0), ("rl_k1", [1], 2), ("rl_k2", [2], 2), ("rl_k4", [4], 2),
                                ("eval_b", None, 0)]
    cfg = load_config(CONFIG, ["data.batch_size=3", "run.steps=2", "pipeline.stages=[mixed]"])
    assert plan(cfg, items) == [("mixed", [1, 2, 4], 6)]  # the staged budget: 2 steps x 3 stages
    cfg = load_config(CONFIG, ["data.batch_size=3", "pipeline.stages=[rl_k3]"])
    with pytest.raises(ValueError, match=r"stage rl_k3: 0 RL tasks"):
        plan(cfg, items)


def test_balanced_split():
    from launch.masksearch import balanced

    items = [{"uid": f"{k}-{i}", "mask_num": k} for k in (1, 2, 3) for i in range(5 if k < 3 else 1)]
    taken, rest = balanced(items, 6)
    assert [t["mask_num"] for t in taken] == [1, 2, 3, 1, 2, 1]
    assert len(rest) == 5 and not {t["uid"] for t in taken} & {t["uid"] for t in rest}


def table(path: Path) -> dict[str, list]:
    t = pq.read_table(path)
    return {c: t.column(c).to_pylist() for c in t.schema.names}


@pytest.mark.slow
def test_masksearch_smoke(tmp_path):
    """RAMP on the world -> eval -> staged curriculum (k = 1, 2, 3, 4; one step each) -> eval, from the command
    line. The group sampler is `keep` here: the random tiny model earns no reward, so DAPO's dynamic sampling
    would skip every step and no stage would train."""
    from reward.fns import MASKSEARCH_INSTRUCTION, TokenRecall
    from reward.rules import mask_spans

    run_dir = tmp_path / "masksearch"
    proc = run_cli(["--smoke", f"run.dir={run_dir}", "run.progress=false", "run.steps=1", "eval.num_tasks=4",
                    "agent.max_turns=2", "agent.max_tokens_per_turn=64", "algo.sampler=keep",
                    "rollout.backend=hf"], tmp_path)  # HF starts in seconds; vLLM's start was 27 of 73 s here
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert proc.stdout.count(f"run folder: {run_dir}") == 2

    # RAMP splits: disjoint, balanced over the number of masks, gold masks recoverable by the reward's parser
    splits = {s: [json.loads(x) for x in (run_dir / "data" / f"{s}.jsonl").read_text().splitlines()]
              for s in ("rl", "heldout")}
    assert sorted(t["mask_num"] for t in splits["rl"]) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(t["mask_num"] for t in splits["heldout"]) == [1, 2, 3, 4]
    assert not {t["uid"] for t in splits["rl"]} & {t["uid"] for t in splits["heldout"]}
    for t in splits["rl"] + splits["heldout"]:
        assert mask_spans(t["question"].split(MASKSEARCH_INSTRUCTION)[0], t["answer"]) == t["masks"]
    k_of = {t["uid"]: t["mask_num"] for t in splits["rl"] + splits["heldout"]}

    # the curriculum: stages in order, the policy_version carried from one stage to the next
    results = json.loads((run_dir / "results.json").read_text())
    stages = results["stages"]
    assert [s["stage"] for s in stages] == ["eval_base", "rl_k1", "rl_k2", "rl_k3", "rl_k4", "eval_rl"]
    rl = stages[1:5]
    assert [s["masks"] for s in rl] == [[1], [2], [3], [4]] and all(s["tasks"] == 2 for s in rl)
    assert [(s["start_version"], s["policy_version"]) for s in rl] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert stages[0]["policy_version"] == 0 and stages[-1]["policy_version"] == 4
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], r["policy_version"]) for r in rows] == [
        ("rl_k1", 1, 1), ("rl_k2", 2, 2), ("rl_k3", 3, 3), ("rl_k4", 4, 4)]

    # each stage rolled out only its own tasks; the reward is format + answer (+ overlong), the answer the
    # recall over the masked spans, recomputed here from the saved trajectories
    recall = TokenRecall(masked_spans=True, length_penalty=True)
    for i, k in enumerate((1, 2, 3, 4), 2):
        t = table(run_dir / f"stage{i}_rl_k{k}" / "trajectories" / "step_000001.parquet")
        assert {k_of[u] for u in t["uid"]} == {k} and len(t["uid"]) == 4  # 2 tasks x n = 2
        batch = pa.RecordBatch.from_pydict({c: t[c] for c in ("answer_text", "gold_answer", "question")})
        np.testing.assert_allclose(np.nan_to_num(np.array(t["reward_answer"], float)),
                                   recall.score(batch)["answer"], atol=1e-6)
        expected = np.array(t["reward_format"], float) + np.nan_to_num(np.array(t["reward_answer"], float)) \
            + np.array(t["reward_overlong"], float)
        np.testing.assert_allclose(np.array(t["reward"], float), expected, atol=1e-5)
    config = json.loads((run_dir / "stage2_rl_k1" / "config.json").read_text())
    assert config["algo"]["preset"] == "dapo" and config["algo"]["clip_high"] == 0.28
    assert config["algo"]["loss_agg_mode"] == "token-mean" and config["algo"]["kl_coef"] == 0.0
    assert config["reward"]["composition"] == "masksearch" and config["run"]["steps"] == 1

    # evaluation before and after, by number of masks; the report and the plots
    for name in ("base", "rl"):
        assert results[f"eval_{name}"]["num_tasks"] == 4
        assert sorted(results[f"recall_{name}"]["answer_by_k"]) == ["1", "2", "3", "4"]
        assert {k_of[u] for u in table(run_dir / "trajectories" / f"eval_{name}.parquet")["uid"]} == {1, 2, 3, 4}
    report = (run_dir / "report.md").read_text()
    for section in ("# masksearch run report", "| base |", "| rl |", "## RAMP tasks", "## Curriculum",
                    "| 2 | rl_k1 | 1 | 2 | 1 | 0 | 0 -> 1 |", "| 5 | rl_k4 | 4 | 2 | 1 | 0 | 3 -> 4 |",
                    "## Mean answer score"):
        assert section in report, section
    for plot in ("reward", "length", "step_time", "eval_by_masks"):
        assert (run_dir / "plots" / f"{plot}.png").stat().st_size > 1000, plot
