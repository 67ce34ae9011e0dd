"""launch/evaluate.py with an OpenAI-compatible endpoint as the policy, end to end (slow): the tiny model served by a
minimal /v1/completions server over the project's HF engine in this process (speaking vLLM's protocol: prompt token
ids, logprobs, return_token_ids; `vllm serve` on these 2 CPU cores takes about 110 s to start, over this test's
budget), evaluated through the real actor groups (rollout with the openai engine, env, reward); then --rescore."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler

import pyarrow.parquet as pq
import pytest

from launch.common import ROOT
from local_http import LocalServer


def completions_handler(engine, loop, served: list):
    from rollout.engines import SamplingParams

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.path == "/v1/completions" and body["model"] == "tiny" and body["logprobs"] == 0
            assert all(isinstance(i, int) for i in body["prompt"])
            sampling = SamplingParams(max_tokens=body["max_tokens"], temperature=body["temperature"],
                                      top_p=body["top_p"], seed=body.get("seed"), stop=tuple(body.get("stop", ())),
                                      include_stop_str=body["include_stop_str_in_output"])
            gen = asyncio.run_coroutine_threadsafe(engine.generate(body["prompt"], sampling), loop).result(120)
            served.append(gen.token_ids)
            reply = json.dumps({"choices": [{"index": 0, "text": "", "token_ids": gen.token_ids,
                                             "finish_reason": gen.finish_reason,
                                             "logprobs": {"token_logprobs": gen.logprobs,
                                                          "tokens": [f"token_id:{t}" for t in gen.token_ids]}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply.encode())

    return Handler


@pytest.mark.slow
def test_evaluate_with_endpoint_policy(tmp_path):
    from rl.models import build_tiny_model
    from rollout.engines.hf_engine import HFEngine

    model = str(build_tiny_model())
    engine = HFEngine(model)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    served: list[list[int]] = []
    tasks = tmp_path / "simpleqa.csv"
    tasks.write_text("problem,answer\nWho directed 2001: A Space Odyssey?,Stanley Kubrick\n"
                     "What is the capital of France?,Paris\n")
    out = tmp_path / "eval"
    try:
        with LocalServer(completions_handler(engine, loop, served)) as server:
            proc = subprocess.run(
                [sys.executable, str(ROOT / "launch/evaluate.py"), "--policy", f"{server.url}/v1", "--served-model",
                 "tiny", "--tokenizer", model, "--tasks", str(tasks), "--k", "2", "--out", str(out),
                 "run.progress=false", "agent.max_turns=2", "agent.max_tokens_per_turn=24", "reward.num_workers=1"],
                capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        loop.call_soon_threadsafe(loop.stop)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    assert results["num_tasks"] == 2 and len(results["per_run"]) == 2 and results["pass@k"] >= results["pass@1"]
    traj = pq.read_table(out / "trajectories" / "eval_eval.parquet").to_pylist()
    assert len(traj) == 4 and len(served) >= 4
    # every token the policy generated came from the endpoint (token-in/token-out, no re-tokenization)
    for row in traj:
        generated = [t for t, m in zip(row["response_ids"], row["loss_mask"]) if m]
        turns = [ids for ids in served if ids and ids == generated[:len(ids)]]
        assert turns, "a trajectory's first turn is not a reply of the endpoint"
    assert len(pq.read_table(out / "predictions.parquet")) == 4
    again = subprocess.run([sys.executable, str(ROOT / "launch/evaluate.py"), "--rescore", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "reproduced exactly" in again.stdout, again.stdout + again.stderr
