"""The judge served on the project's own engine (reward/engine_judge.py): plumbing only.

A random-init tiny model's replies are garbage, so every verdict falls back to 0 with the failure metric: that
is what the HF (fast) and vLLM (slow) tests check, with the requests really going through the engine. A
scripted tiny model (`scripted_judge.py`: greedy decoding always says "Correct") shows verdicts, the cache and
de-duplication through the real HF engine. A fake engine (the Engine protocol with scripted delays) pins
concurrency, timeouts and error handling, which a 2-core CPU cannot time reliably with a real model.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pyarrow as pa
import pytest
from scripted_judge import build_scripted_judge
from transformers import AutoTokenizer

from reward.engine_judge import EngineJudge
from reward.judge import JudgeItem
from reward.prompts import build_messages
from reward.worker import RewardWorker
from rollout.engines import Generation

FAST = dict(backoff_s=0.001, backoff_max_s=0.005)


def rows(questions, answers, gold="Paris") -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"question": pa.array(questions, pa.string()),
                                       "answer_text": pa.array(answers, pa.string()),
                                       "gold_answer": pa.array([gold] * len(questions), pa.string())})


# ------------------------------------------------------------------------------------ the real HF engine

def test_hf_engine_judge_garbage_replies_fall_back_to_0_with_the_failure_metric(tiny_model, caplog):
    w = RewardWorker({"judge": {"kind": "gaia"}},
                     judge={"backend": "engine", "engine": "hf", "model_path": tiny_model, "max_tokens": 8,
                            "max_retries": 1, **FAST})
    b = rows(["capital of France?", "capital of France?", "capital of Italy?", "capital of Spain?", "q"],
             ["Paris", "Paris", "Rome", "Madrid", None])
    with caplog.at_level(logging.WARNING, logger="reward.judge"):
        out = w.score(b)
    assert out.column("reward_answer").to_pylist() == [0.0] * 5
    m = w.metrics()
    # 3 distinct answered items x 2 attempts; the duplicate shares its request; the row without an answer asks nothing
    assert (m["judge/items"], m["judge/requests"], m["judge/retries"], m["judge/failures"]) == (5, 6, 3, 4)
    assert m["judge/failure_rate"] == pytest.approx(0.8) and m["judge/cache_size"] == 0
    assert "judge fallback (score 0) for 4 of 5 items" in caplog.text and "unparseable gaia judge reply" in caplog.text
    engine = w.judge._judge.engine
    assert type(engine).__name__ == "HFEngine"
    w.close()
    assert not w.judge.started


def test_scripted_judge_on_the_hf_engine_gives_verdicts_and_cache_hits():
    model = build_scripted_judge("Correct")
    w = RewardWorker({"judge": {"kind": "gaia"}},
                     judge={"backend": "engine", "engine": "hf", "model_path": str(model), "max_tokens": 8})
    b = rows(["q1", "q2", "q1"], ["Paris", "Lyon", "Paris"])
    assert w.score(b).column("reward_answer").to_pylist() == [1.0, 1.0, 1.0]
    assert w.metrics()["judge/requests"] == 2
    assert w.score(b).column("reward_answer").to_pylist() == [1.0, 1.0, 1.0]
    m = w.metrics()
    assert (m["judge/items"], m["judge/requests"], m["judge/cache_hits"], m["judge/failures"]) == (6, 2, 4, 0)
    assert m["judge/cache_hit_rate"] == pytest.approx(4 / 6)
    w.close()


def test_prompt_is_the_judge_tokenizers_chat_template(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    judge = EngineJudge(None, tok)
    messages = build_messages("masksearch", "Who?", "Curie", "Marie Curie")
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert judge.prompt_ids(messages) == tok.encode(text, add_special_tokens=False)
    assert judge.sampling.temperature == 0.0 and judge.sampling.max_tokens == 64


# --------------------------------------------------------------------------------------- a fake engine

class FakeEngine:
    """The Engine protocol: the reply to a prompt is "Correct" after `delay_s`, "SLOW" prompts take 30 s,
    "REFUSE" prompts raise ValueError (as vLLM for a prompt over max_model_len), "ABORT" ones abort once."""

    def __init__(self, tokenizer, delay_s: float = 0.2):
        self.tok, self.delay_s = tokenizer, delay_s
        self.in_flight = self.max_in_flight = self.calls = self.cancelled = 0
        self.aborted: set[str] = set()
        self.closed = False

    async def generate(self, prompt_ids, sampling, request_id=None) -> Generation:
        prompt = self.tok.decode(prompt_ids)
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "REFUSE" in prompt:
                raise ValueError("prompt is longer than the maximum model length")
            if "ABORT" in prompt and prompt not in self.aborted:
                self.aborted.add(prompt)
                return Generation([], [], "abort")
            await asyncio.sleep(30.0 if "SLOW" in prompt else self.delay_s)
            ids = self.tok.encode("Correct", add_special_tokens=False)
            return Generation(ids, [0.0] * len(ids), "stop")
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def shutdown(self) -> None:
        self.closed = True


def judge_on(engine, tok, **settings) -> EngineJudge:
    return EngineJudge(engine, tok, **{**FAST, **settings})


def items(n, prefix="q"):
    return [JudgeItem(f"{prefix}{i}", "Paris", "Paris", "gaia") for i in range(n)]


def test_every_distinct_item_is_in_flight_at_once(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeEngine(tok, delay_s=0.3)
    judge = judge_on(engine, tok)
    start = time.monotonic()
    results = judge.judge_batch_sync(items(24) + items(4))  # 4 repeats
    elapsed = time.monotonic() - start
    assert [r.score for r in results] == [1.0] * 28 and sum(r.cached for r in results) == 4
    assert engine.calls == 24 and engine.max_in_flight == 24
    assert elapsed < 24 * 0.3 / 4, elapsed  # one at a time would take 7.2 s
    bounded = FakeEngine(tok, delay_s=0.05)
    judge_on(bounded, tok, max_concurrency=3).judge_batch_sync(items(9))
    assert bounded.max_in_flight == 3


def test_a_request_past_its_timeout_does_not_stall_the_batch(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeEngine(tok, delay_s=0.05)
    judge = judge_on(engine, tok, timeout_s=0.5, max_retries=1)
    start = time.monotonic()
    results = judge.judge_batch_sync([JudgeItem("SLOW question", "Paris", "Paris", "gaia")] + items(6))
    elapsed = time.monotonic() - start
    assert elapsed < 2 * 0.5 + 0.8, elapsed  # two cut attempts, not 30 s
    assert (results[0].score, results[0].ok, results[0].attempts) == (0.0, False, 2)
    assert results[0].error == ("gave up after 2 attempts; last error: judge engine FakeEngine model="
                                f"{tiny_model}: timeout after 0.5 s waiting for the reply")
    assert all(r.ok and r.score == 1.0 for r in results[1:])
    assert engine.cancelled == 2  # the engine request was cancelled (vLLM aborts it), not left running
    assert judge.metrics()["failures"] == 1


def test_refused_prompts_are_not_retried_and_aborts_are(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeEngine(tok, delay_s=0.0)
    judge = judge_on(engine, tok, max_retries=3)
    refused, aborted = judge.judge_batch_sync([JudgeItem("REFUSE", "Paris", "Paris", "gaia"),
                                               JudgeItem("ABORT", "Paris", "Paris", "gaia")])
    assert (refused.ok, refused.attempts) == (False, 1) and "refused the request" in refused.error
    assert (aborted.ok, aborted.score, aborted.attempts) == (True, 1.0, 2)
    asyncio.run(judge.aclose())
    assert not engine.closed  # the judge did not start this engine: it does not stop it
    owned = EngineJudge(FakeEngine(tok), tok, owns_engine=True)
    closing = owned.engine
    asyncio.run(owned.aclose())
    assert closing.closed


def test_engine_judge_settings_are_checked(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    with pytest.raises(ValueError, match="EngineJudge: max_tokens must be >= 1; max_concurrency must be >= 1"):
        EngineJudge(None, tok, max_tokens=0, max_concurrency=0)
    with pytest.raises(TypeError, match="judge backend 'engine'.*unexpected keyword argument 'base_url'"):
        RewardWorker({"judge": {}}, judge={"backend": "engine", "model_path": tiny_model,
                                           "base_url": "http://x"}).score(rows(["q"], ["a"]))


# ------------------------------------------------------------------------------------ the real vLLM engine

@pytest.mark.slow
def test_vllm_engine_judge_serves_a_batch_concurrently_and_falls_back(vllm_engine, tiny_model, loop_thread):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    judge = EngineJudge(vllm_engine, tok, max_tokens=16, max_retries=0)
    batch = [JudgeItem(f"question {i}?", f"answer {i}", "gold", "vrag") for i in range(24)]
    start = time.monotonic()
    results = loop_thread.run(judge.judge_batch(batch), timeout=300)
    wall = time.monotonic() - start
    assert [r.score for r in results] == [0.0] * 24 and not any(r.ok for r in results)
    assert all(r.error.startswith("gave up after 1 attempts; last error: unparseable vrag") for r in results)
    m = judge.metrics()
    assert (m["items"], m["requests"], m["failures"]) == (24, 24, 24)
    # overlap: requests served one at a time would make the summed latencies about the wall time
    assert m["mean_latency_s"] * m["requests"] / wall > 4, (m, wall)
    loop_thread.run(judge.aclose())  # not its engine: the session's engine keeps running
    assert vllm_engine.llm is not None
    np.testing.assert_array_equal([r.attempts for r in results], np.ones(24))
