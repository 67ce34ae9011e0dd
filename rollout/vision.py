"""Images in token space: how a Qwen2.5-VL-style policy sees an image observation (SEEDS 4.2).

An image enters the token stream as `<|vision_start|>` + `<|image_pad|>` x n + `<|vision_end|>`, where
n = (h/14)(w/14) / merge^2 for the image as resized by the processor (sides multiples of 28 within
[min_pixels, max_pixels]). The agent loop keeps the ids with every pad expanded (so lengths, loss masks
and logprobs line up with what the model computes) and the images themselves, in order, as encoded
bytes; the trainer turns those bytes into `pixel_values` / `image_grid_thw` with the same processor.

Owns: `VisionSpec` (the token ids and the processor of a vision-language model folder, or None for a
text model), `num_image_tokens`, `image_inputs` (bytes -> model inputs), `collapse_image_pads` (the
unexpanded form vLLM wants: it expands each pad itself) and `load_images`.

Never: resize images on its own terms (the tools send images already fitted to the processor's bounds,
`envs/visual/tools.py`; the processor then changes nothing), or know about episodes.

Without torchvision (this CPU machine) transformers' default Qwen2-VL image processor cannot load;
the PIL twin (`Qwen2VLImageProcessorPil`) computes the same tensors and is used then.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path


def is_vision_model(model_path: str) -> bool:
    """True when the model folder's config has a vision tower (a `vision_config`)."""
    cfg = Path(model_path) / "config.json"
    if cfg.exists():
        return "vision_config" in json.loads(cfg.read_text())
    from transformers import AutoConfig  # a hub name: let transformers resolve it

    return hasattr(AutoConfig.from_pretrained(model_path), "vision_config")


def load_image_processor(model_path: str):
    """The folder's Qwen2-VL image processor; its PIL twin where torchvision is missing."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        from transformers import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil.from_pretrained(model_path)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_path)


def load_images(images) -> list:
    """PIL RGB images from encoded bytes (PNG/JPEG) or PIL images."""
    from PIL import Image

    out = []
    for i, im in enumerate(images):
        if isinstance(im, (bytes, bytearray, memoryview)):
            try:
                im = Image.open(io.BytesIO(bytes(im)))
                im.load()
            except Exception as err:
                raise ValueError(f"image {i}: not a decodable image ({err})") from None
        out.append(im.convert("RGB"))
    return out


@dataclass
class VisionSpec:
    """What the loop and the trainer need of a vision-language model."""

    image_pad_id: int
    vision_start_id: int
    vision_end_id: int
    merge_size: int
    processor: object

    @classmethod
    def from_model(cls, model_path: str, tokenizer=None) -> "VisionSpec | None":
        if not is_vision_model(model_path):
            return None
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_path)
        ids = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>"])
        unk = tokenizer.unk_token_id
        if any(i is None or i == unk for i in ids):
            raise ValueError(f"{model_path}: a vision model whose tokenizer lacks <|image_pad|>, <|vision_start|> "
                             "or <|vision_end|>")
        processor = load_image_processor(model_path)
        return cls(*ids, merge_size=int(getattr(processor, "merge_size", 2)), processor=processor)

    def grid(self, images) -> "object":
        """image_grid_thw [N, 3] of `images` (PIL or bytes)."""
        return self.image_inputs(images)["image_grid_thw"]

    def num_image_tokens(self, image) -> int:
        """How many <|image_pad|> ids one image takes."""
        return int(self.grid([image])[0].prod()) // (self.merge_size ** 2)

    def image_ids(self, image) -> list[int]:
        """The ids one image puts in the stream: start, pads, end."""
        return [self.vision_start_id] + [self.image_pad_id] * self.num_image_tokens(image) + [self.vision_end_id]

    def image_inputs(self, images) -> dict:
        """{"pixel_values": [P, C*T*14*14], "image_grid_thw": [N, 3]} for the model's forward."""
        return dict(self.processor(images=load_images(images), return_tensors="pt"))

    def check(self, ids: list[int], images) -> None:
        """The pads in `ids` must be exactly what `images` take, in order."""
        want = sum(self.num_image_tokens(im) for im in images)
        have = sum(1 for t in ids if t == self.image_pad_id)
        if want != have:
            raise ValueError(f"{have} <|image_pad|> ids in the sequence but its {len(images)} images take {want}")


def collapse_image_pads(ids: list[int], pad_id: int) -> list[int]:
    """Each run of `pad_id` reduced to one pad: the prompt form vLLM expands itself (verl's
    `raw_prompt_ids`). Two images are always separated by their end and start ids."""
    out: list[int] = []
    for t in ids:
        if t == pad_id and out and out[-1] == pad_id:
            continue
        out.append(t)
    return out
