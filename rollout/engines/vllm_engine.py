"""vLLM backend of the engine protocol: vLLM's AsyncLLM, the same code on GPU and on the CPU build.

Owns: starting an AsyncLLM with our worker extension, one async `generate` per request (vLLM's
continuous batching batches concurrent requests), per-token logprobs of the sampled ids, and the
in-place weight update (bucket by bucket inside the worker, `vllm_ext.py`; a portable transport's
stream is received by the worker process itself).

Never: tokenize, re-order requests, or keep trajectories; that is the agent loop's job.

Vision-language models: images go in as `multi_modal_data` (see `request`). On this CPU machine vLLM
cannot load Qwen2.5-VL (its qwen2_vl module imports transformers' torchvision image processor, and no
torchvision builds against the CPU torch here), so the HF engine is the CPU twin for VL policies; the
request this engine sends is unit-tested, the GPU run is not exercised here.

CPU facts this code relies on (shared/ASSETS.md): `VLLM_CPU_KVCACHE_SPACE` must be set and
`gpu_memory_utilization` about 0.3; weights cross the RPC boundary as bytes (tensors arrive as lists).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import warnings
from typing import Iterable

from .base import Generation, SamplingParams, aiter_buckets, cpu_bf16_warning, host_bytes

EXTENSION = "rollout.engines.vllm_ext.WindwardWorkerExtension"


#: the share of the device an engine takes when none is given (rollout.gpu_memory_utilization unset): most of a
#: GPU of its own; half of a GPU it shares with a trainer rank (colocated: the rank's shard and optimizer state
#: stay there while the engine runs, and the rank loads its model while the engine is awake; verl's hybrid-engine
#: default); about 0.3 on the CPU build (shared/ASSETS.md)
GPU_MEMORY_UTILIZATION = {"gpu": 0.85, "colocated": 0.5, "cpu": 0.3}

# tokens per engine step on CPU, where chunked prefill is off (a step must hold a whole prompt): twice vLLM's CPU
# default of 4096, which with whole-prompt steps ran about 8% slower than chunked prefill (benchmarks/RESULTS.md)
CPU_MIN_BATCHED_TOKENS = 8192


def default_gpu_memory_utilization(gpu: bool, colocated: bool) -> float:
    """`gpu_memory_utilization` when the configuration leaves it unset."""
    return GPU_MEMORY_UTILIZATION["cpu" if not gpu else "colocated" if colocated else "gpu"]


def vision_token_ban(model_path: str) -> dict[int, float] | None:
    """A vision-language policy never samples its image placeholders (the HF engine's `bad_words_ids`): an
    <|image_pad|> it wrote would have no image behind it and break the trainer's forward. As vLLM's logit bias
    (-100, vLLM's floor: the token's probability is e^-100 of the rest); None for a text model."""
    from rollout.vision import VisionSpec

    v = VisionSpec.from_model(model_path)
    if v is None:
        return None
    return {v.image_pad_id: -100.0, v.vision_start_id: -100.0, v.vision_end_id: -100.0}


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def serving_dtype(gpu: bool, dtype: str = "auto") -> str:
    """The dtype an engine serves in: "auto" is bfloat16 on a GPU, float32 on CPU (exact logprobs for the
    mismatch test). The weight transport packs buckets in it (rl/groups.py), so nothing is cast twice."""
    return ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype


class VLLMEngine:
    """An AsyncLLM owned by one rollout worker.

    dtype: "float32" on CPU by default (exact logprobs for the mismatch test), "bfloat16" on GPU.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float = 2.0,
        enforce_eager: bool = True,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        tensor_parallel_size: int = 1,
        request_timeout_s: float = 600.0,
        sleep_mode: bool = False,
        cpu_threads: int = 0,
    ):
        """sleep_mode (GPU): the engine can release its GPU memory between rollouts (`sleep`/`wake`), for a
        trainer colocated on the same devices. cpu_threads (CPU): bind the engine's OpenMP threads to that
        many of this process's cores (colocated: all of them, since the trainer is idle while it generates);
        0 keeps vLLM's own choice (one core per worker, one reserved for its scheduler)."""
        self.gpu = gpu = _on_gpu()
        if not gpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, kv_cache_gib))))
            if cpu_threads:
                cores = sorted(os.sched_getaffinity(0))[:cpu_threads]
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        dtype = serving_dtype(gpu, dtype)
        if dtype == "bfloat16" and not gpu and (slow := cpu_bf16_warning("rollout.dtype")):
            warnings.warn(slow)
        args = AsyncEngineArgs(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization if gpu_memory_utilization is not None
            else default_gpu_memory_utilization(gpu, colocated=sleep_mode),  # sleep mode: colocated (rl/groups.py)
            enforce_eager=enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            # TP workers as processes of this actor, on the GPUs Ray gave it (rollout.gpus_per_engine = TP)
            distributed_executor_backend="mp" if tensor_parallel_size > 1 else None,
            worker_extension_cls=EXTENSION,
            enable_sleep_mode=bool(sleep_mode and gpu),
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            # CPU: every prompt prefilled in one step, so no sample is ever discarded and each request's own
            # seeded generator only moves forward (see vllm_params); a step holds up to max_model_len tokens
            **({} if gpu else {"enable_chunked_prefill": False,
                               "max_num_batched_tokens": max(max_model_len, CPU_MIN_BATCHED_TOKENS)}),
        )
        self.model_path = str(model_path)
        self._image_pad_id = None
        self._vision_ban: dict[int, float] | None | bool = False  # worked out at the first request
        self.llm = AsyncLLM.from_engine_args(args)
        self.policy_version = 0
        self.request_timeout_s = request_timeout_s
        self._ids = itertools.count()
        self._paused = asyncio.Event()
        self._paused.set()  # set = running
        self.sleep_mode = bool(sleep_mode and gpu)
        self.num_workers = tensor_parallel_size

    def no_vision_tokens(self) -> dict[int, float] | None:
        """`vision_token_ban` of this engine's model, read once, at the first request (after vLLM has the model)."""
        if self._vision_ban is False:
            self._vision_ban = vision_token_ban(self.model_path)
        return self._vision_ban

    def vllm_params(self, sampling: SamplingParams):
        """Our SamplingParams as vLLM's (one completion, the sampled token's logprob).

        Every request carries its own seed, so what it samples depends on the seed alone, not on which
        requests share its batches. vLLM rewinds a request's generator when it discards a sample (the
        step of a chunked prefill), and a CPU generator cannot rewind ("CPU Generator does not use
        offset": the engine dies); on CPU chunked prefill is therefore off (`__init__`).
        """
        from vllm import SamplingParams as VSampling

        return VSampling(
            n=1,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            seed=sampling.seed,
            logprobs=0,
            ignore_eos=sampling.ignore_eos,
            include_stop_str_in_output=sampling.include_stop_str,
            logit_bias=self.no_vision_tokens(),
        )

    def request(self, prompt_ids: list[int], images: list | None = None) -> dict:
        """vLLM's prompt: token ids, and for a VL model the images as `multi_modal_data` with each run of
        <|image_pad|> collapsed to one pad (vLLM's processor expands it again to the image's count, so the
        engine sees exactly `prompt_ids`; verl's raw_prompt_ids)."""
        if not images:
            return {"prompt_token_ids": list(prompt_ids)}
        from rollout.vision import collapse_image_pads, load_images

        if self._image_pad_id is None:
            from transformers import AutoTokenizer

            self._image_pad_id = AutoTokenizer.from_pretrained(self.model_path).convert_tokens_to_ids("<|image_pad|>")
        return {"prompt_token_ids": collapse_image_pads(list(prompt_ids), self._image_pad_id),
                "multi_modal_data": {"image": load_images(images)}}

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams,
                       request_id: str | None = None, images: list | None = None) -> Generation:
        await self._bounded(self._paused.wait(), "the end of a weight update before a request")
        prompt = self.request(prompt_ids, images)
        params = self.vllm_params(sampling)
        rid = request_id or f"req-{next(self._ids)}"
        version = self.policy_version
        final = None

        async def run():
            nonlocal final
            async for out in self.llm.generate(prompt, params, rid):
                final = out

        try:
            await asyncio.wait_for(run(), timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            await self._bounded(self.llm.abort(rid), f"the abort of request {rid}")
            raise TimeoutError(
                f"vLLM engine {self.model_path}: request {rid} produced no final output within "
                f"{self.request_timeout_s}s"
            ) from None
        comp = final.outputs[0]
        ids = list(comp.token_ids)
        lps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs or [])]
        reason = comp.finish_reason if comp.finish_reason in ("stop", "length", "abort") else "stop"
        return Generation(ids, lps, reason, policy_version=version)

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        """Load a full state into the worker bucket by bucket, in place (`vllm_ext.py`).

        A portable stream (a transport whose buckets any process of this node can take: collective, ipc,
        disk) goes to the worker process, which receives and loads each bucket as it arrives, on the GPU
        where the transport delivers there; any other buckets cross vLLM's RPC one at a time. With tensor
        parallelism every worker needs the whole stream, so buckets then always go through the RPC.
        Requests in flight are not interrupted; new ones wait until the load is done, and the prefix
        cache (computed with the old weights) is dropped.
        """
        self._paused.clear()
        try:
            if getattr(buckets, "portable", False) and self.num_workers == 1:
                await self._bounded(self.llm.collective_rpc("windward_receive", args=(pickle.dumps(
                    buckets.for_engine()),)), f"the worker's receive and load of weight version {version}")
            else:
                await self._bounded(self.llm.collective_rpc("windward_begin_update"),
                                    f"the start of weight update {version}")
                try:
                    i = 0
                    async for data in aiter_buckets(buckets):
                        i += 1
                        await self._bounded(self.llm.collective_rpc(
                            "windward_load_bucket", args=(host_bytes(data).tobytes(),)),
                            f"the load of bucket {i} of weight version {version}")
                finally:
                    await self._bounded(self.llm.collective_rpc("windward_finish_update"),
                                        f"the end of weight update {version}")
            await self._bounded(self.llm.reset_prefix_cache(), "the prefix cache's reset")
            self.policy_version = version
        finally:
            self._paused.set()

    async def sleep(self) -> None:
        """Release the GPU for a colocated trainer: level 1 moves the weights to host memory and drops the
        KV cache (verl's hybrid engine). A no-op where sleep mode is off (CPU: nothing to release)."""
        if self.sleep_mode:
            await self._bounded(self.llm.reset_prefix_cache(), "the prefix cache's reset before sleep")
            await self._bounded(self.llm.sleep(level=1), "sleep (level 1)")

    async def wake(self) -> None:
        if self.sleep_mode:
            await self._bounded(self.llm.wake_up(), "wake-up")

    async def _bounded(self, awaitable, what: str):
        """`awaitable` within `request_timeout_s`, else a TimeoutError naming this engine and `what` it waited
        for (a wedged worker fails the call that reached it instead of every later one)."""
        try:
            return await asyncio.wait_for(awaitable, timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"vLLM engine {self.model_path}: waited {self.request_timeout_s:.0f}s for {what}; "
                               "no answer") from None

    async def shutdown(self) -> None:
        if self.llm is not None:
            # vLLM's own grace (5 s). A 1 s grace shut down in 1.4 s instead of 5, but the engine core was killed
            # before it unlinked its shared-memory queues: each shutdown left /dev/shm/psm_* files behind
            self.llm.shutdown()
            # drop it now: AsyncLLM.__del__ shuts down again, which fails at interpreter exit
            # ('NoneType' object is not callable) once its modules are torn down
            self.llm = None
            import gc

            gc.collect()
