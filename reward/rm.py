"""A discriminative reward model served by the RewardGroup: a transformers sequence-classification model that
scores (question, answer) or (question, whole response) texts, batched, for users who bring a trained one.

Owns: `RewardModel` (loading, templating, length-sorted batching, padding, one scalar per text) and the
registered reward "reward_model" that reads trajectory columns.

Must never: train, sample, or import Ray or anything of the project but `reward.base` / `reward.fns`; load the
model before the first score (a RewardWorker built to read its columns stays cheap).

What is scored. input="answer": the chat template over [user: question, assistant: answer_text] (the usual
input of outcome reward models). input="response": the chat template's prompt for [user: question] with the
generation prompt, followed by `response_text` as decoded (turn markers and observations included), i.e. the
whole trajectory as the policy saw it. Texts longer than `max_length` tokens keep their END (the pooled token
of a causal classifier is the last one). The score is logit[label] of the model's head, or its sigmoid with
normalize="sigmoid"; a row without an answer (input="answer") scores `missing_score` without a forward pass.

Batching. Texts are tokenized once, sorted by length (longest first) and cut into batches of `batch_size`,
padded on `padding_side`; scores return in the input order. Which token the head pools is the model class's
business (Qwen3ForSequenceClassification: the last non-pad token, so either padding side gives the same score
up to float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from reward.base import register_reward
from reward.fns import active_mask, string_column

__all__ = ["RewardModel", "RewardModelReward"]


class RewardModel:
    def __init__(self, model_path: str, *, batch_size: int = 16, max_length: int = 4096, dtype: str = "float32",
                 device: str = "auto", padding_side: str = "right", label: int = 0, normalize: str | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None):
        checks = {"batch_size": (batch_size >= 1, ">= 1"), "max_length": (max_length >= 1, ">= 1"),
                  "padding_side": (padding_side in ("left", "right"), "'left' or 'right'"),
                  "label": (label >= 0, ">= 0"), "normalize": (normalize in (None, "sigmoid"), "None or 'sigmoid'"),
                  "dtype": (dtype in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16")}
        bad = [f"{name} must be {need}" for name, (ok, need) in checks.items() if not ok]
        if bad:
            raise ValueError("RewardModel: " + "; ".join(bad))
        self.model_path, self.batch_size, self.max_length = str(model_path), batch_size, max_length
        self.dtype, self.device, self.padding_side = dtype, device, padding_side
        self.label, self.normalize = label, normalize
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.model: Any = None
        self.tokenizer: Any = None

    def load(self) -> RewardModel:
        if self.model is not None:
            return self
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        tokenizer.padding_side = self.padding_side
        tokenizer.truncation_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype))
        if model.config.pad_token_id is None:  # the head finds the last real token by the pad id
            model.config.pad_token_id = tokenizer.pad_token_id
        if self.label >= model.config.num_labels:
            raise ValueError(f"RewardModel: label {self.label} but {self.model_path} has "
                             f"{model.config.num_labels} label(s)")
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        return self

    # -- texts ------------------------------------------------------------------------------------------

    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if self.tokenizer.chat_template is None:
            raise ValueError(f"RewardModel: the tokenizer of {self.model_path} has no chat template")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                                  **self.chat_template_kwargs)

    def answer_text(self, question: str, answer: str) -> str:
        self.load()
        return self._template([{"role": "user", "content": question},
                               {"role": "assistant", "content": answer}], False)

    def response_text(self, question: str, response: str) -> str:
        self.load()
        return self._template([{"role": "user", "content": question}], True) + response

    # -- scoring ----------------------------------------------------------------------------------------

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One score per text (float64), in order."""
        self.load()
        import torch

        out = np.zeros(len(texts), dtype=np.float64)
        if not texts:
            return out
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.max_length)["input_ids"]
        empty = [i for i, row in enumerate(ids) if not row]
        if empty:
            raise ValueError(f"RewardModel: text(s) {empty[:10]} have no tokens; there is nothing to score")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                padded = self.tokenizer.pad({"input_ids": [ids[i] for i in chunk]}, padding=True,
                                            return_tensors="pt")
                logits = self.model(input_ids=padded["input_ids"].to(self.device),
                                    attention_mask=padded["attention_mask"].to(self.device)).logits
                scores = logits[:, self.label].float()
                if self.normalize == "sigmoid":
                    scores = torch.sigmoid(scores)
                out[chunk] = scores.cpu().numpy()
        return out


@register_reward("reward_model")
class RewardModelReward:
    """Trained reward model scores (see the module docstring) as the part `part` (default "rm").

    input="answer" reads question and answer_text; input="response" reads question and response_text. Rows
    outside `active` are not scored (NaN); other keyword arguments go to `RewardModel`."""

    gateable = True

    def __init__(self, model_path: str, input: str = "answer", part: str = "rm", missing_score: float = 0.0,
                 **options: Any):
        if input not in ("answer", "response"):
            raise ValueError(f"reward_model: input must be 'answer' or 'response', got {input!r}")
        self.input, self.part, self.parts, self.missing_score = input, part, (part,), float(missing_score)
        self.text_column = "answer_text" if input == "answer" else "response_text"
        self.columns = ("question", self.text_column)
        self.model = RewardModel(model_path, **options)

    def score(self, batch: pa.RecordBatch, active: np.ndarray | None = None) -> dict[str, np.ndarray]:
        values = np.full(batch.num_rows, np.nan)
        questions, texts = string_column(batch, "question"), string_column(batch, self.text_column)
        rows = [int(i) for i in np.flatnonzero(active_mask(active, batch.num_rows))]
        scored = []
        for i in rows:
            if self.input == "answer" and (texts[i] is None or not texts[i].strip()):
                values[i] = self.missing_score
            else:
                scored.append(i)
        if scored:
            render = self.model.answer_text if self.input == "answer" else self.model.response_text
            values[scored] = self.model.score_texts([render(questions[i] or "", texts[i] or "") for i in scored])
        return {self.part: values}
