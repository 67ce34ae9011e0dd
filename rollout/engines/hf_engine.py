"""Hugging Face transformers backend of the engine protocol: the reference for correctness.

Owns: sampling with `model.generate` one request at a time (a lock serialises requests; it is
the slow, obviously-correct twin of the vLLM backend, not a throughput path), logprobs computed
from the raw logits divided by the temperature, and in-place weight loading.

Never: used for throughput claims; tokenize.
"""

from __future__ import annotations

import asyncio
from typing import Iterable

import torch

from .base import Generation, SamplingParams, aiter_buckets, decode_bucket, derive_seed


class HFEngine:
    def __init__(self, model_path: str, *, dtype: str = "float32", device: str = "cpu",
                 seed: int = 0, request_timeout_s: float = 600.0, cpu_threads: int = 0, sleep_mode: bool = False):
        """cpu_threads: torch threads of this process (colocated on CPU: all its cores); sleep_mode: `sleep`
        moves the model to host memory and `wake` back to `device` (a colocated trainer gets the GPU)."""
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        from rollout.vision import VisionSpec

        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        self.sleep_mode = bool(sleep_mode and device != "cpu")
        self.vision = VisionSpec.from_model(model_path)
        auto = AutoModelForImageTextToText if self.vision is not None else AutoModelForCausalLM
        self.model = auto.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device
        self.eos_ids = _as_list(self.model.generation_config.eos_token_id)
        self.pad_id = self.model.generation_config.pad_token_id
        self.policy_version = 0
        self.seed = seed
        self._requests = 0
        self.request_timeout_s = request_timeout_s
        self._lock = asyncio.Lock()
        self._tokenizer = None
        self._model_path = model_path

    def _no_vision_tokens(self) -> dict:
        """A vision-language policy never writes image placeholders itself: an <|image_pad|> it sampled would have
        no image behind it, and the trainer's forward would fail on the mismatch (seen with a random-init policy)."""
        if self.vision is None:
            return {}
        v = self.vision
        return {"bad_words_ids": [[v.image_pad_id], [v.vision_start_id], [v.vision_end_id]]}

    def _stop_strings(self, sampling: SamplingParams):
        if not sampling.stop:
            return {}
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._model_path)
        return {"stop_strings": list(sampling.stop), "tokenizer": self._tokenizer}

    @torch.no_grad()
    def _generate_sync(self, prompt_ids: list[int], sampling: SamplingParams, images=None) -> Generation:
        # `generate` samples from torch's global generator: seeded per request (requests run one at a time),
        # from the request's seed or, without one, from the next seed of this engine's own stream, so that
        # two requests never replay the same random numbers (n samples of one prompt must differ)
        if sampling.seed is None:
            self._requests += 1
        torch.manual_seed(derive_seed(self.seed, "request", self._requests) if sampling.seed is None else sampling.seed)
        greedy = sampling.temperature == 0
        input_ids = torch.tensor([prompt_ids], device=self.device)
        extra = {}
        if images:
            if self.vision is None:
                raise ValueError("HFEngine.generate: images given but the model has no vision tower")
            self.vision.check(prompt_ids, images)
            extra = {k: v.to(self.device) for k, v in self.vision.image_inputs(images).items()}
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=sampling.max_tokens,
            min_new_tokens=sampling.max_tokens if sampling.ignore_eos else None,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if sampling.top_k <= 0 or greedy else sampling.top_k,
            eos_token_id=self.eos_ids + list(sampling.stop_token_ids),
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            **self._stop_strings(sampling),
            **self._no_vision_tokens(),
            **extra,
        )
        new = out.sequences[0, len(prompt_ids):].tolist()
        logits = torch.stack(out.logits, dim=1)[0].float()  # [T, V], raw (before processors)
        if not greedy:
            logits = logits / sampling.temperature
        lps = torch.log_softmax(logits, dim=-1)
        # generate pads finished rows; keep only up to and including the first stop id
        stops = set(self.eos_ids) | set(sampling.stop_token_ids)
        cut = next((i + 1 for i, t in enumerate(new) if t in stops), None)
        ids = new[:cut] if cut else new[: len(out.logits)]
        logprobs = lps[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)].tolist()
        reason = "stop" if cut or len(ids) < sampling.max_tokens else "length"
        return Generation(ids, logprobs, reason, policy_version=self.policy_version)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                       request_id: str | None = None, images: list | None = None) -> Generation:
        async def run() -> Generation:
            async with self._lock:  # one generation at a time: the wait for the lock counts against the bound
                return await asyncio.to_thread(self._generate_sync, list(prompt_ids), sampling, images)

        try:
            return await asyncio.wait_for(run(), timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"HF engine {self._model_path}: request {request_id or '(unnamed)'} not done within "
                               f"{self.request_timeout_s}s (the wait for the engine included)") from None

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        async with self._lock:
            state = {}
            async for data in aiter_buckets(buckets):
                state.update(decode_bucket(bytes(data)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise KeyError(f"HFEngine.update_weights: unknown parameter names {unexpected[:5]}")
            self.policy_version = version

    async def sleep(self) -> None:
        if self.sleep_mode:
            async with self._lock:
                self.model.to("cpu")
                torch.cuda.empty_cache()

    async def wake(self) -> None:
        if self.sleep_mode:
            async with self._lock:
                self.model.to(self.device)

    async def shutdown(self) -> None:
        pass


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]
