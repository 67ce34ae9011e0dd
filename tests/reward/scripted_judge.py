"""A tiny Qwen3 judge model whose greedy reply is a fixed text, for engine-judge tests and the judge benchmark.

`build_scripted_judge(reply)` derives it from `rl.models.build_tiny_model`: every attention and MLP output
projection is zeroed, so the hidden state at a position is the (normalised) embedding of that position's token,
and an untied output layer maps each token of the chain

    last token of the chat template's generation prompt -> reply tokens ... -> <|im_end|>

to the next one (the row of the next token is the normalised embedding of the current one, every other row is
zero: the logit of the next token is the hidden size, of any other at most a random inner product). Whatever
the prompt, greedy decoding therefore spells `reply` and stops: a random-init model whose replies parse, so the
real engine, chat template, cache and parser are exercised with verdicts instead of garbage. It costs what the
tiny model costs (the same shapes). The chain needs distinct tokens; a reply that repeats a token is refused.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path


def build_scripted_judge(reply: str = "Correct", tokenizer: str = "local", cache_dir: str | Path | None = None,
                         chat_template_kwargs: dict | None = None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rl.models import build_tiny_model, default_cache_dir

    base = build_tiny_model(tokenizer=tokenizer)
    kwargs = {"enable_thinking": False} if chat_template_kwargs is None else dict(chat_template_kwargs)
    key = hashlib.sha256(repr((base.name, reply, sorted(kwargs.items()), 1)).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "models"
    target = root / f"scripted-judge-{tokenizer}-{key}"
    if (target / "config.json").exists():
        return target

    tok = AutoTokenizer.from_pretrained(str(base))
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True,
                                     **kwargs)
    chain = [tok.encode(prompt, add_special_tokens=False)[-1]] + tok.encode(reply, add_special_tokens=False)
    if len(set(chain)) != len(chain):
        raise ValueError(f"scripted judge: the chain {chain} repeats a token; choose another reply than {reply!r}")
    chain.append(tok.convert_tokens_to_ids("<|im_end|>"))

    config = AutoConfig.from_pretrained(str(base))
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    base_model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.model.load_state_dict(base_model.model.state_dict())
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        hidden = model.model.norm(model.model.embed_tokens.weight)  # what the head sees after each token
        head = torch.zeros_like(model.lm_head.weight)
        for current, following in zip(chain, chain[1:]):
            head[following] = hidden[current]
        model.lm_head.weight.copy_(head)
    model.generation_config = base_model.generation_config

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process built the same folder
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
