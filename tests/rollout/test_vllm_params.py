"""What the vLLM engine asks of vLLM, without starting one: a vision-language policy is barred from sampling
its image placeholders (as the HF engine's bad_words_ids), a text policy is not; the serving dtype the weight
transport packs in."""

from __future__ import annotations

from rollout.engines.base import SamplingParams
from rollout.engines.vllm_engine import VLLMEngine, serving_dtype


def params_of(model_path: str):
    engine = object.__new__(VLLMEngine)  # the request-building half only: no AsyncLLM behind it
    engine.gpu, engine.model_path, engine._vision_ban = False, model_path, False
    return engine.vllm_params(SamplingParams(max_tokens=4))


def test_vl_policy_never_samples_image_placeholders(tiny_model):
    from rl.models import build_tiny_vl_model
    from rollout.vision import VisionSpec

    path = str(build_tiny_vl_model())
    v = VisionSpec.from_model(path)
    bias = params_of(path).logit_bias
    assert bias == {v.image_pad_id: -100.0, v.vision_start_id: -100.0, v.vision_end_id: -100.0}
    assert not params_of(tiny_model).logit_bias  # a text model samples every token


def test_serving_dtype():
    assert serving_dtype(gpu=True) == "bfloat16" and serving_dtype(gpu=False) == "float32"
    assert serving_dtype(gpu=True, dtype="float16") == "float16"


def test_a_cpu_engine_serves_the_dtype_asked_for():
    assert serving_dtype(gpu=False, dtype="bfloat16") == "bfloat16"
    assert serving_dtype(gpu=False, dtype="auto") == "float32"
