"""Multimodal episodes: image observations framed into the ids of a Qwen2.5-VL-style template, carried
through the HF engine (pixels with every request) to the trainer (pixel_values), and the vLLM request form.

The tiny policy is a random-init Qwen2.5-VL (rl/models.py build_tiny_vl_model) on the local tokenizer."""

from __future__ import annotations

import asyncio
import io
import random
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from envs.base import LocalEnv, Observation
from rl.models import build_tiny_vl_model
from rollout.agent import AgentConfig, run_episode
from rollout.chat import ChatTemplate
from rollout.engines import Generation, SamplingParams
from rollout.formats.vrag import INVALID_ACTION, VRAGFormat
from rollout.trajectory import build_batch, with_columns
from rollout.vision import VisionSpec, collapse_image_pads


@pytest.fixture(scope="module")
def vl_model():
    return str(build_tiny_vl_model())


@pytest.fixture(scope="module")
def vl_tok(vl_model):
    return AutoTokenizer.from_pretrained(vl_model)


@pytest.fixture(scope="module")
def vision(vl_model, vl_tok):
    return VisionSpec.from_model(vl_model, vl_tok)


def png(w_tiles: int, h_tiles: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (28 * h_tiles, 28 * w_tiles, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ImageTool:
    """image_search / crop stand-ins: an image of a random size in VRAG-RL's pixel bounds."""

    def __init__(self, name, rng):
        self.name, self.rng = name, rng
        self.schema = {"name": name, "description": name, "parameters": {"type": "object", "properties": {}}}

    async def call(self, arguments):
        w = self.rng.randint(16, 24)
        h = self.rng.randint(max(11, -(-256 // w)), 512 // w)
        return Observation(f"[{self.name}: page {self.rng.randint(0, 99)}]", images=[png(w, h, self.rng.randint(0, 9))],
                           metadata={"retrieved": [f"p{self.rng.randint(0, 9)}"] if self.name == "image_search" else []})


class Scripted:
    """Emits fixed texts as their token ids; honours stop strings like an engine (the stop string is dropped)."""

    def __init__(self, tok, turns, then=None):
        self.tok, self.turns, self.then, self.policy_version = tok, list(turns), then, 0
        self.images_seen: list[int] = []

    async def generate(self, prompt_ids, sampling, request_id=None, images=None):
        self.images_seen.append(len(images or []))
        if not self.turns:
            return await self.then.generate(prompt_ids, sampling, request_id, images=images)
        text = self.turns.pop(0)
        for s in sampling.stop:
            if s in text:
                text = text[: text.index(s)]
        ids = self.tok.encode(text, add_special_tokens=False)
        return Generation(ids, [-0.5] * len(ids), "stop")


def expand_pads(ids: list[int], pad: int, counts: list[int]) -> list[int]:
    out, k = [], 0
    for t in ids:
        if t == pad:
            out.extend([pad] * counts[k])
            k += 1
        else:
            out.append(t)
    assert k == len(counts)
    return out


def random_vrag_turns(rng: random.Random) -> list[str]:
    words = ["page", "revenue", "chart", "Zatrea", "2019", "table", "population", "total"]
    turns = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.choice(["search", "bbox", "invalid"])
        think = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        if kind == "search":
            turns.append(f"<think>{think}</think>\n<search> {think} </search>")
        elif kind == "bbox":
            x, y = rng.randint(0, 100), rng.randint(0, 100)
            turns.append(f"<think>{think}</think>\n<bbox>[{x}, {y}, {x + 50}, {y + 40}]</bbox>")
        else:
            turns.append(f"<think>{think}</think> no action")
    turns.append(f"<think>done</think>\n<answer> {rng.choice(words)} </answer><|im_end|>")
    return turns


def test_image_observations_keep_the_token_append_invariant(vl_tok, vision):
    """prompt + appended ids == the template over the whole conversation (content lists with images),
    every <|image_pad|> expanded to its image's count; image tokens are never the model's."""
    rng = random.Random(0)
    template = ChatTemplate(vl_tok, vision=vision)
    assert "user" in template.append_only_roles
    for trial in range(12):
        turns = random_vrag_turns(rng)
        env = LocalEnv([ImageTool("image_search", rng), ImageTool("crop", rng)])
        engine = Scripted(vl_tok, turns)
        ep = asyncio.run(run_episode(engine, env, template, {"uid": "t", "question": "What is the total?"},
                                     SamplingParams(max_tokens=256), AgentConfig(max_context_tokens=20000),
                                     VRAGFormat()))
        r = ep.record
        assert r.finish == "answer"
        full = template.render(ep.messages)
        counts = [vision.num_image_tokens(im) for im in r.images]
        expected = expand_pads(vl_tok.encode(full[: len(full) - len(template.after_eos)], add_special_tokens=False),
                               vision.image_pad_id, counts)
        got = r.prompt_ids + r.response_ids
        if any("no action" in t for t in turns):
            # INVALID_ACTION spells out "<think>" etc., which observations keep as plain text (never control
            # tokens, rollout/chat.py), so only the text matches a naive tokenization of the rendering
            assert vl_tok.decode(got) == vl_tok.decode(expected), trial
        else:
            assert got == expected, trial
        pads = [m for t, m in zip(r.response_ids, r.loss_mask) if t == vision.image_pad_id]
        assert len(pads) == sum(counts) and not any(pads)
        # every request carried every image shown before it
        assert engine.images_seen == sorted(engine.images_seen) and engine.images_seen[-1] == len(r.images)
        invalid = sum(1 for m in ep.messages if m["role"] == "user" and m["content"] == INVALID_ACTION)
        assert invalid == sum(1 for t in turns if "no action" in t)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images_reach_the_trainer_and_its_logprobs_match_the_engine(vl_model, vl_tok, vision):
    """An episode whose later turns the HF engine generates while seeing the image; the trainer's
    logprobs of those tokens (pixel_values from the trajectory's `images` column) equal the engine's.
    A row without images trains next to it (the blank-image row keeps the vision tower in every forward)."""
    from rl.trainer.fsdp import FSDPTrainer
    from rollout.engines.hf_engine import HFEngine

    rng = random.Random(1)
    hf = HFEngine(vl_model)
    template = ChatTemplate(vl_tok, vision=vision)
    env = LocalEnv([ImageTool("image_search", rng), ImageTool("crop", rng)])
    engine = Scripted(vl_tok, ["<think>look</think>\n<search> total revenue </search>"], then=hf)
    ep = asyncio.run(run_episode(engine, env, template, {"uid": "a", "question": "What is the total?"},
                                 SamplingParams(max_tokens=12, temperature=1.0), AgentConfig(max_turns=2),
                                 VRAGFormat()))
    r = ep.record
    assert len(r.images) == 1 and r.num_turns == 2
    plain = asyncio.run(hf.generate(template.prompt_ids(template.initial_messages("No image here?")),
                                    SamplingParams(max_tokens=8)))
    from rollout.trajectory import TrajectoryRecord

    prompt2 = template.prompt_ids(template.initial_messages("No image here?"))
    r2 = TrajectoryRecord("b", 1, 0, prompt2, plain.token_ids, [1] * len(plain.token_ids), plain.logprobs)
    batch = build_batch([r, r2], with_images=True)
    assert batch.column("images")[0].as_py() == r.images and batch.column("images")[1].as_py() == []

    trainer = FSDPTrainer(vl_model, rank=0, world_size=1, lr=1e-3, micro_batch_size=1, grad_clip=1.0)
    trainer.init_distributed("127.0.0.1", free_port())
    try:
        lps = trainer.logprobs(batch)
        for row, got in zip((r, r2), lps):
            mask = np.array(row.loss_mask, bool)
            engine_lp = np.array(row.rollout_logprobs)
            # the scripted first turn has fake logprobs (-0.5); compare the engine-generated tokens
            gen = mask & (engine_lp != -0.5)
            assert gen.sum() > 0
            np.testing.assert_allclose(got[gen], engine_lp[gen], atol=2e-4)
        def full(v):
            return (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()

        before = {k: full(v) for k, v in trainer.model.named_parameters() if "visual" in k}
        m = trainer.train_step(with_columns(batch, {"advantage": np.array([1.0, -1.0], np.float32)}))
        assert np.isfinite(m["train/loss"])
        after = dict(trainer.model.named_parameters())
        assert any(not torch.equal(before[k], full(after[k])) for k in before), "the vision tower got no update"
    finally:
        trainer.shutdown()


def test_hf_engine_refuses_images_that_do_not_match_the_pads(vl_model, vl_tok, vision):
    from rollout.engines.hf_engine import HFEngine

    hf = HFEngine(vl_model)
    ids = vl_tok.encode("<|im_start|>user\n", add_special_tokens=False) + vision.image_ids(png(16, 16))
    with pytest.raises(ValueError, match="image_pad"):
        asyncio.run(hf.generate(ids, SamplingParams(max_tokens=2), images=[png(16, 20)]))


def test_vllm_request_collapses_each_image_to_one_pad(vl_model, vl_tok, vision):
    """vLLM expands each pad itself: the request holds one pad per image and the images as PIL."""
    from rollout.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # the request form only; vLLM cannot load a VL model on this CPU
    engine.model_path, engine._image_pad_id = vl_model, None
    a, b = png(16, 16), png(20, 14)
    ids = [5, 6] + vision.image_ids(a) + [7] + vision.image_ids(b) + [8]
    req = engine.request(ids, [a, b])
    pad = vision.image_pad_id
    assert req["prompt_token_ids"] == [5, 6, vision.vision_start_id, pad, vision.vision_end_id, 7,
                                       vision.vision_start_id, pad, vision.vision_end_id, 8]
    assert [im.size for im in req["multi_modal_data"]["image"]] == [(28 * 16, 28 * 16), (28 * 20, 28 * 14)]
    assert engine.request([1, 2, 3]) == {"prompt_token_ids": [1, 2, 3]}
    assert collapse_image_pads([pad, pad, 1, pad], pad) == [pad, 1, pad]
    assert vision.num_image_tokens(a) == 16 * 16 and vision.num_image_tokens(b) == 20 * 14  # one token per 28x28
