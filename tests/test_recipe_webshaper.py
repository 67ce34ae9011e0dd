"""The WebShaper recipe end to end from the command line, `--smoke`, offline, through real Ray actor groups
(HF engine, reward, FSDP2 trainer, env servers): the agentic Expander's tasks written in the released
format and re-checked from that form alone by the solver, the expert's trajectories, SFT, one DAPO step and
the held-out evaluation."""

from __future__ import annotations

import json

import pytest

from test_recipes import SMALL, common_outputs, metrics_rows, run_recipe


@pytest.mark.slow
def test_webshaper_smoke(tmp_path):
    from envs.webshaper.formal import ROW_KEYS, constant_problems, parse_items
    from envs.webshaper.solve import answers
    from envs.world import generate_world

    run_dir = tmp_path / "webshaper"
    seconds = run_recipe("webshaper.py", run_dir, SMALL + [
        "pipeline.stages=[expert,sft,rl,eval_rl]", "data.num_tasks=4", "algo.max_gen_rounds=1", "run.steps=1"],
        tmp_path)
    report, results = common_outputs(run_dir, ["rl"])
    print(f"webshaper smoke: {seconds:.0f} s")

    # the released format: exactly its keys; each row's formalization alone gives its answer back
    config = json.loads((run_dir / "config.json").read_text())
    world = generate_world(config["env"]["world_seed"], config["env"]["world_size"])
    sizes = {}
    for split in ("expert", "rl", "heldout"):
        rows = [json.loads(x) for x in (run_dir / "data" / f"webshaper_{split}.jsonl").read_text().splitlines()]
        sizes[split] = len(rows)
        for row in rows:
            assert tuple(row) == ROW_KEYS and row["urls"]
            f, skipped = parse_items(row["formalization"])
            assert skipped == [] and constant_problems(f) == []
            assert answers(world, f) == [row["answer"]]
    assert sizes == {"expert": 8, "rl": 4, "heldout": 2}
    s = results["synthesis"]
    assert s["expander"] == "agentic" and s["tasks"] == 14 and s["expander/validate_calls"] >= 14
    assert "## WebShaper synthesis" in report

    # the expert solves them through the tools; SFT and one RL step ran
    assert results["rft"]["rft/kept"] >= 1
    assert len(metrics_rows(run_dir / "sft_metrics.jsonl")) >= 1
    assert [r["step"] for r in metrics_rows(run_dir / "metrics.jsonl")] == [1]
