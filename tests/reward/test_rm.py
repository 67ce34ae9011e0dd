"""The discriminative reward model (reward/rm.py) on a tiny random Qwen3ForSequenceClassification built here:
plumbing only (batching, order, determinism, padding side, truncation, templating, the registered reward)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from reward.rm import RewardModel
from reward.worker import RewardWorker

TEXTS = ["short", "a somewhat longer text about the founding of a company",
         "who founded the city? " * 12, "x", "the answer is 42, found in the search results",
         "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 42 100"]


@pytest.fixture(scope="module")
def rm_path(tiny_model, tmp_path_factory):
    """A random-init Qwen3 classifier with one label, on the tiny model's tokenizer (chat template included)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen3Config

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                         num_labels=1, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    assert type(model).__name__ == "Qwen3ForSequenceClassification"
    path = tmp_path_factory.mktemp("tiny-rm")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def one_by_one(rm: RewardModel, texts) -> np.ndarray:
    return np.array([rm.score_texts([t])[0] for t in texts])


def test_batched_scores_equal_one_at_a_time_in_input_order(rm_path):
    rm = RewardModel(rm_path, batch_size=3)
    batched = rm.score_texts(TEXTS)
    assert batched.shape == (len(TEXTS),) and batched.dtype == np.float64
    np.testing.assert_allclose(batched, one_by_one(rm, TEXTS), atol=1e-5)
    np.testing.assert_allclose(rm.score_texts(TEXTS[::-1]), batched[::-1], atol=1e-5)  # order follows the input
    assert len(set(np.round(batched, 6))) == len(TEXTS)  # distinct texts, distinct scores: nothing was mixed up
    assert rm.score_texts([]).shape == (0,)
    with pytest.raises(ValueError, match=r"text\(s\) \[1\] have no tokens"):
        rm.score_texts(["a", ""])


def test_scores_are_deterministic_and_independent_of_the_batch_size(rm_path):
    rm = RewardModel(rm_path, batch_size=4)
    first = rm.score_texts(TEXTS)
    assert np.array_equal(first, rm.score_texts(TEXTS))
    for size in (1, 2, 16):
        np.testing.assert_allclose(RewardModel(rm_path, batch_size=size).score_texts(TEXTS), first, atol=1e-5)


def test_left_and_right_padding_give_the_same_scores(rm_path):
    right = RewardModel(rm_path, batch_size=8, padding_side="right")
    left = RewardModel(rm_path, batch_size=8, padding_side="left")
    np.testing.assert_allclose(left.score_texts(TEXTS), right.score_texts(TEXTS), atol=1e-4)
    assert left.load().tokenizer.padding_side == "left"


def test_long_texts_keep_their_end_and_sigmoid_normalises(rm_path):
    rm = RewardModel(rm_path, max_length=8)
    text = "who founded the city? " * 12
    ids = rm.load().tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = rm.model(input_ids=torch.tensor([ids[-8:]])).logits[0, 0].item()
    assert rm.score_texts([text])[0] == pytest.approx(expected, abs=1e-5)
    raw = RewardModel(rm_path).score_texts(TEXTS)
    np.testing.assert_allclose(RewardModel(rm_path, normalize="sigmoid").score_texts(TEXTS), 1 / (1 + np.exp(-raw)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'; normalize must be None"):
        RewardModel(rm_path, padding_side="middle", normalize="tanh")
    with pytest.raises(ValueError, match="label 1 but .* has 1 label"):
        RewardModel(rm_path, label=1).load()


def test_registered_reward_model_reads_trajectory_columns(rm_path):
    b = pa.RecordBatch.from_pydict({
        "question": pa.array(["Who founded it?", "Who founded it?", "Which year?"], pa.string()),
        "answer_text": pa.array(["Ada", None, "1999"], pa.string()),
        "response_text": pa.array(["<think>t</think><answer>Ada</answer>", "junk", "<answer>1999</answer>"],
                                  pa.string()),
    })
    w = RewardWorker({"reward_model": {"model_path": rm_path, "missing_score": -5.0}})
    assert w.columns == ("question", "answer_text")
    assert w.fns["reward_model"].model.model is None  # nothing loaded before the first score
    out = w.score(b)
    rm = RewardModel(rm_path)
    expected = rm.score_texts([rm.answer_text("Who founded it?", "Ada"), rm.answer_text("Which year?", "1999")])
    np.testing.assert_allclose(out.column("reward_rm").to_numpy(), [expected[0], -5.0, expected[1]], atol=1e-5)
    assert rm.answer_text("q", "a") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"

    whole = RewardWorker({"reward_model": {"model_path": rm_path, "input": "response"}})
    assert whole.columns == ("question", "response_text")
    scores = whole.score(b).column("reward_rm").to_numpy()
    assert rm.response_text("q", "<answer>1</answer>") == \
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<answer>1</answer>"
    assert scores[2] == pytest.approx(rm.score_texts([rm.response_text("Which year?", "<answer>1999</answer>")])[0],
                                      abs=1e-5)


def test_reward_model_is_gated_like_a_judge(rm_path):
    b = pa.RecordBatch.from_pydict({
        "question": pa.array(["q1", "q2"], pa.string()), "answer_text": pa.array(["a", "b"], pa.string()),
        "response_text": pa.array(["<think>t</think><answer>a</answer>", "no tags"], pa.string()),
    })
    w = RewardWorker({"format": {"style": "masksearch"}, "reward_model": {"model_path": rm_path}},
                     composition={"terms": [{"name": "rm", "weight": 1.0}], "gate": "format"})
    out = w.score(b)
    rm_part = out.column("reward_rm").to_numpy()
    assert not np.isnan(rm_part[0]) and np.isnan(rm_part[1])  # not scored where the gate is closed
    assert out.column("reward").to_pylist()[1] == 0.0
