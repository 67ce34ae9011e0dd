"""Inference engines behind one protocol (`base.Engine`): vLLM (GPU and CPU builds), HF, and sim (a latency
model of a GPU engine for scale tests, `sim_engine.py`)."""

from .base import Engine, Generation, SamplingParams, decode_bucket, encode_bucket

BACKENDS = ("vllm", "hf", "sim", "openai")


def make_engine(backend: str, model_path: str, **kwargs) -> Engine:
    """Build an engine by name; kwargs go to the backend's constructor."""
    if backend == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **kwargs)
    if backend == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model_path, **kwargs)
    if backend == "sim":
        from .sim_engine import SimEngine

        return SimEngine(model_path, **kwargs)
    if backend == "openai":  # an OpenAI-compatible /v1/completions endpoint (evaluation; openai_engine.py)
        from .openai_engine import OpenAIEngine

        return OpenAIEngine(model_path, **kwargs)
    raise ValueError(f"unknown engine backend {backend!r}; known: {BACKENDS}")


__all__ = ["Engine", "Generation", "SamplingParams", "make_engine", "encode_bucket", "decode_bucket", "BACKENDS"]
