"""The engine protocol: token ids in, token ids and per-token logprobs out (DESIGN section 3).

Owns: `SamplingParams`, `Generation`, the `Engine` protocol every backend implements, and the
wire format of a weight bucket (safetensors bytes) that the trainer side encodes and every
engine decodes.

Never: tokenize or detokenize (the agent loop works in token space), know about training,
Ray, or the trainer's sharding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Protocol, runtime_checkable

import torch

FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    include_stop_str: bool = False  # keep a matched stop string in the output (VRAG-RL's </search>, </bbox>)

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")

    def derive(self, *keys: int | str) -> "SamplingParams":
        """These params with the seed of one sample (and turn) under this seed: `derive(group, sample)`,
        then `derive(turn)` inside an episode. Distinct keys give distinct, reproducible seeds; no seed
        stays no seed (the engine's own random stream)."""
        if self.seed is None:
            return self
        return replace(self, seed=derive_seed(self.seed, *keys))


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from `seed` and `keys` (a hash: nearby seeds and keys do not collide the way seed + g * n + s
    does across steps and groups)."""
    digest = hashlib.blake2b(repr((int(seed),) + keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Generation:
    """One completion: the sampled ids, the engine's logprob of each, and why it ended.

    `logprobs[i]` is log pi(token_ids[i] | prompt, token_ids[:i]) under the engine's weights,
    computed from logits divided by the temperature (the trainer does the same).
    `finish_reason` is "stop" (EOS or a stop string/id), "length" (max_tokens) or "abort".
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    policy_version: int = 0
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Generation: {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs"
            )
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Generation.finish_reason {self.finish_reason!r} not in {FINISH_REASONS}")


@runtime_checkable
class Engine(Protocol):
    """What the rollout side needs of an inference engine."""

    policy_version: int

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                       request_id: str | None = None, images: list | None = None) -> Generation:
        """`images` (a vision-language model): every image the prompt shows, in order, as encoded bytes
        or PIL images; `prompt_ids` holds each one's <|image_pad|> ids expanded (rollout/vision.py)."""

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        """Load a full state (HF parameter names) delivered as safetensors buckets."""

    async def sleep(self) -> None: ...

    async def wake(self) -> None: ...

    async def shutdown(self) -> None: ...


# --- weight buckets -----------------------------------------------------------------------


def encode_bucket(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """Serialize (name, tensor) pairs as one safetensors blob (contiguous CPU tensors)."""
    from safetensors.torch import save

    return save({name: t.detach().to("cpu").contiguous() for name, t in named_tensors})


def decode_bucket(data: bytes) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load

    return list(load(bytes(data)).items())


async def aiter_buckets(buckets):
    """Iterate weight buckets given as a list or any iterable, or an async iterable (a transport's
    stream: its waits then run off the event loop, so generation goes on meanwhile)."""
    if hasattr(buckets, "__aiter__"):
        async for data in buckets:
            yield data
    else:
        for data in buckets:
            yield data
