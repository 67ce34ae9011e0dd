"""Pictures of the world's entities, the images a BrowseComp-VL question attaches, and a small image
embedding for reverse image search (SEEDS 9.1 `VLSearchImage`, 9.2; checklist item 37).

The offline stand-in for the web's photos: each entity has one *picture*, a deterministic composition of
coloured shapes drawn from its id (no text on it), which the reverse-image index describes by the entity's
name and kind. A question's *image* is the same picture seen again: colours jittered, shifted by a few
pixels, and (by default) a caption plate with the entity's name at the bottom, as photos on the web often
carry one. The question image is therefore found again by visual similarity (reverse image search) or read
(OCR), never by its file name: image ids are hashes that name no entity.

    store = WorldImages(world, base_url)
    url = store.question_image_url("Keagal_Peapar")   # "image://q-3fa2c1d09b7e"
    img = store.image(url)                            # PIL image (pictures, question images, page images)
    hits = store.nearest(img, k=5)                    # [(picture url, entity id, cosine similarity)]

**The embedding** (`image_embedding`, a documented simplification, not a learned model): the image is
resized to 16 x 16 pixels (box filter), each colour channel centred on its mean, and the 768 values L2
normalised; similarity is the dot product. It is invariant to a uniform brightness shift per channel and
robust to small shifts and a caption strip; it knows nothing of semantics (a real run swaps in a CLIP-style
encoder through `WorldImages(embed=...)`).

Owns: `entity_picture`, `question_image`, `image_embedding`, `WorldImages` (id scheme, look-up, nearest
neighbours). Never: import anything of the project outside `envs/`; use global random state; reach the
network.
"""

from __future__ import annotations

import hashlib
import io
import random
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from envs.visual.pages import font, text_width
from envs.world.graph import World
from envs.world.pages import article, page_url

PICTURE_SIZE = (336, 252)
CAPTION_H = 40
GRID = 16  # embedding grid (module docstring)
SCHEME = "image://"


def _rng(*parts) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def entity_picture(entity_id: str) -> Image.Image:
    """The entity's picture: a background and 7 shapes, all drawn from the id alone."""
    rng = _rng("windward-picture", entity_id)
    w, h = PICTURE_SIZE
    img = Image.new("RGB", PICTURE_SIZE, tuple(rng.randrange(30, 226) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(7):
        colour = tuple(rng.randrange(0, 256) for _ in range(3))
        x1, y1 = rng.randrange(0, w - 40), rng.randrange(0, h - 40)
        x2, y2 = min(w, x1 + rng.randrange(40, w // 2)), min(h, y1 + rng.randrange(40, h // 2))
        shape = rng.choice(("ellipse", "rectangle", "triangle"))
        if shape == "ellipse":
            draw.ellipse((x1, y1, x2, y2), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x1, y1, x2, y2), fill=colour)
        else:
            draw.polygon([(x1, y2), ((x1 + x2) // 2, y1), (x2, y2)], fill=colour)
    return img


def question_image(entity_id: str, name: str | None, variant: int = 0) -> Image.Image:
    """The picture seen again (variant `variant`): colours shifted per channel, moved by up to 6 pixels,
    and with `name` on a caption plate at the bottom (None: no caption)."""
    rng = _rng("windward-question-image", entity_id, variant)
    base = np.asarray(entity_picture(entity_id), dtype=np.int16)
    shift = np.array([rng.randint(-18, 18) for _ in range(3)], dtype=np.int16)
    dx, dy = rng.randint(-6, 6), rng.randint(-6, 6)
    moved = np.roll(base + shift, (dy, dx), axis=(0, 1))
    img = Image.fromarray(np.clip(moved, 0, 255).astype(np.uint8), "RGB")
    if name:
        w, h = img.size
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, h - CAPTION_H, w, h), fill=(250, 250, 250))
        size = 22
        while size > 10 and text_width(name, size) > w - 16:
            size -= 1
        draw.text(((w - text_width(name, size)) / 2, h - CAPTION_H + (CAPTION_H - size) / 2 - 3), name,
                  fill=(20, 20, 20), font=font(size))
    return img


def image_embedding(img: Image.Image) -> np.ndarray:
    """GRID x GRID x 3 box-filtered pixels, centred per channel, L2-normalised (module docstring)."""
    small = np.asarray(img.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX), dtype=np.float32) / 255.0
    small = small - small.mean(axis=(0, 1), keepdims=True)
    v = small.reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _digest(*parts) -> str:
    return hashlib.sha1(":".join(str(p) for p in parts).encode()).hexdigest()[:12]


class WorldImages:
    """Every image of one world by URL: entity pictures ("image://p-<hash>"), question images
    ("image://q-<hash>", per entity and variant) and rendered pages ("image://page/<page id>"); and the
    reverse-image index over the pictures."""

    def __init__(self, world: World, base_url: str | None = None, variants: int = 4, caption: bool = True,
                 embed: Callable[[Image.Image], np.ndarray] = image_embedding):
        self.world, self.base_url, self.variants, self.caption = world, (base_url or "").rstrip("/"), variants, caption
        self.embed = embed
        self._pictures = {f"p-{_digest('picture', world.seed, eid)}": eid for eid in world.entities}
        self._questions = {f"q-{_digest('question', world.seed, eid, v)}": (eid, v)
                           for eid in world.entities for v in range(variants)}
        self._index: tuple[list[str], np.ndarray] | None = None
        self._pages = None

    # -- ids ------------------------------------------------------------------------------------------
    def picture_url(self, entity_id: str) -> str:
        return f"{SCHEME}p-{_digest('picture', self.world.seed, self.world.entity(entity_id).id)}"

    def question_image_url(self, entity_id: str, variant: int = 0) -> str:
        if not 0 <= variant < self.variants:
            raise ValueError(f"question image variant {variant} of {entity_id!r}: need 0 <= variant < {self.variants}")
        return f"{SCHEME}q-{_digest('question', self.world.seed, self.world.entity(entity_id).id, variant)}"

    def description(self, entity_id: str) -> str:
        e = self.world.entity(entity_id)
        where = f" Page: {self.base_url}{page_url(entity_id)}" if self.base_url else ""
        return f"{e.name}, {article(e.kind)} {e.kind}.{where}"

    # -- look-up --------------------------------------------------------------------------------------
    def image(self, url: str) -> Image.Image:
        """The image at `url` (the scheme may be left out). KeyError naming the URL when no image has it."""
        key = url[len(SCHEME):] if isinstance(url, str) and url.startswith(SCHEME) else url
        if not isinstance(key, str):
            raise KeyError(f"image URL must be a string, got {type(url).__name__}")
        if key in self._pictures:
            return entity_picture(self._pictures[key])
        if key in self._questions:
            eid, v = self._questions[key]
            return question_image(eid, self.world.entities[eid].name if self.caption else None, v)
        if key.startswith("page/"):
            from envs.visual.pages import page_image, render_pages

            if self._pages is None:
                self._pages = {p.id: p for p in render_pages(self.world)}
            page = self._pages.get(key[len("page/"):])
            if page is not None:
                return page_image(page)
        raise KeyError(f"no image at {url!r:.120} in this world (seed {self.world.seed}); known forms: "
                       f"{SCHEME}p-<hash> (pictures), {SCHEME}q-<hash> (question images), {SCHEME}page/<page id>")

    def nearest(self, img: Image.Image, k: int = 10) -> list[tuple[str, str, float]]:
        """The `k` pictures most similar to `img`: (picture URL, entity id, cosine similarity), best first."""
        if self._index is None:
            ids = sorted(self._pictures)
            self._index = ids, np.stack([self.embed(entity_picture(self._pictures[i])) for i in ids])
        ids, matrix = self._index
        scores = matrix @ self.embed(img)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(SCHEME + ids[i], self._pictures[ids[i]], float(scores[i])) for i in order]

