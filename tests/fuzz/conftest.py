"""The fuzz suite's tokenizer: the real Qwen3 one (its special tokens, e.g. <tool_call>, are what a model
writes), built offline once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def qwen3_tok():
    from transformers import AutoTokenizer

    from rl.models import build_tiny_model

    return AutoTokenizer.from_pretrained(str(build_tiny_model(tokenizer="qwen3")))
