"""The embedder recipe end to end from the command line, `--smoke`, offline: the tiny world's questions and
pages, BM25 hard negatives, two steps of the improved InfoNCE on the tiny Qwen3 through the Qwen3-Embedding
path on the embedder's trainer group (2 FSDP2 ranks as Ray actors), slerp merge, evaluation against BM25, the
hashing stand-in and the untrained model."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from rl.embed_train import slerp
from test_recipes import metrics_rows, run_recipe


@pytest.mark.slow
def test_embedder_smoke(tmp_path):
    run_dir = tmp_path / "embedder"
    seconds = run_recipe("embedder.py", run_dir, [], tmp_path)
    print(f"embedder smoke: {seconds:.0f} s")
    results = json.loads((run_dir / "results.json").read_text())
    report = (run_dir / "report.md").read_text()
    for name in ("bm25", "hashing", "untrained", "fine-tuned", "merged"):
        assert f"| {name} |" in report
        m = results[name]
        assert 0 <= m["recall@1"] <= m["recall@5"] <= m["recall@10"] <= 1 and 0 <= m["ndcg@10"] <= 1
    assert results["heldout_questions"] == 4 and results["pages"] == 60
    assert "on 2 rank(s) (FSDP2, Ray actors)" in report  # the default's trainer group
    rows = metrics_rows(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["train/loss"] > 0 for r in rows)
    # the merged checkpoint is the slerp of the two kept ones
    first, last = (load_file(f"{c}/model.safetensors") for c in results["checkpoints"])
    merged = load_file(f"{results['merged_checkpoint']}/model.safetensors")
    name = next(k for k in merged if k.endswith("q_proj.weight"))
    assert not first[name].equal(last[name])
    assert (merged[name] - slerp(first[name], last[name], 0.5)).abs().max() < 1e-6
