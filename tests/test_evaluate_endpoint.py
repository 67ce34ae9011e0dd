"""launch/evaluate.py with an OpenAI-compatible endpoint as the policy, end to end (slow): the tiny model served by
vLLM's own OpenAI-compatible server (`tests/vllm_server.py`), evaluated through the real actor groups (rollout with
the openai engine, env, reward); then --rescore."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from launch.common import ROOT


@pytest.mark.slow
def test_evaluate_with_a_vllm_server_as_the_policy(tmp_path, tiny_model, vllm_server):
    from transformers import AutoModelForCausalLM

    tasks = tmp_path / "simpleqa.csv"
    tasks.write_text("problem,answer\nWho directed 2001: A Space Odyssey?,Stanley Kubrick\n"
                     "What is the capital of France?,Paris\n")
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch/evaluate.py"), "--policy", vllm_server, "--served-model", "tiny",
         "--tokenizer", tiny_model, "--tasks", str(tasks), "--k", "2", "--out", str(out),
         "run.progress=false", "agent.max_turns=2", "agent.max_tokens_per_turn=24", "reward.num_workers=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    assert results["num_tasks"] == 2 and len(results["per_run"]) == 2 and results["pass@k"] >= results["pass@1"]
    traj = pq.read_table(out / "trajectories" / "eval_eval.parquet").to_pylist()
    assert len(traj) == 4 and len(pq.read_table(out / "predictions.parquet")) == 4
    # token-in/token-out through the endpoint: every generated token and its logprob is the served model's. The
    # policy's own forward over the stored ids gives the logprobs vLLM returned (fp32 on CPU: equal to ~1e-6), which
    # a re-tokenized reply, a shifted id or a lost logprob would not.
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    for row in traj:
        ids, p = list(row["prompt_ids"]) + list(row["response_ids"]), len(row["prompt_ids"])
        generated = [i for i, m in enumerate(row["loss_mask"]) if m]
        assert generated and len(row["rollout_logprobs"]) == len(row["response_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        ours = torch.tensor([logp[p + i - 1, ids[p + i]].item() for i in generated])
        theirs = torch.tensor([row["rollout_logprobs"][i] for i in generated])
        assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()
    again = subprocess.run([sys.executable, str(ROOT / "launch/evaluate.py"), "--rescore", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "reproduced exactly" in again.stdout, again.stdout + again.stderr
