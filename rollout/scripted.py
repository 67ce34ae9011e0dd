"""A text policy as an engine: scripted experts run through the real agent loop.

`TextPolicyEngine(policy, tokenizer)` implements the Engine protocol for one episode: each
`generate` decodes what the loop appended since the last turn (the observation, with its template
framing), asks `policy(observation_text | None) -> str` for the next assistant turn, and returns its
token ids the way a model emits them (a turn that ends in a tool call stops at the stop token; any
other turn ends with the end-of-turn token). Logprobs are 0: these trajectories are SFT data, not
RL samples. The loop, templates, tools and loss mask are exactly the policy's, so expert data and
policy rollouts have one format (SEEDS 3.3: expert trajectories for RFT). A policy's text is made
tokenizable first (`rollout.chat.tokenizable`: a lone surrogate a policy copied from JSON becomes U+FFFD);
a policy that raises ends its episode with finish "error" (`run_episode`), never the expert stage.

Never: be used where logprobs matter (RL), or re-tokenize the conversation.
"""

from __future__ import annotations

from typing import Callable

from rollout.chat import tokenizable
from rollout.engines.base import Generation, SamplingParams


class TextPolicyEngine:
    def __init__(self, policy: Callable[[str | None], str], tokenizer):
        self.policy, self.tok = policy, tokenizer
        self.policy_version = 0
        self.seen = None  # prompt length at the last call

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, request_id: str | None = None,
                       images=None) -> Generation:
        observation = None if self.seen is None else self.tok.decode(prompt_ids[self.seen:], skip_special_tokens=False)
        text = self.policy(observation)
        ids = self.tok.encode(tokenizable(text), add_special_tokens=False)
        stop = next((i for i, t in enumerate(ids) if t in sampling.stop_token_ids), None)
        if stop is not None:
            ids = ids[:stop + 1]
        elif self.tok.eos_token_id is not None:
            ids = ids + [self.tok.eos_token_id]
        reason = "stop"
        if len(ids) > sampling.max_tokens:
            ids, reason = ids[:sampling.max_tokens], "length"
        self.seen = len(prompt_ids) + len(ids)
        return Generation(ids, [0.0] * len(ids), reason, policy_version=0)
