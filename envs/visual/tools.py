"""The VRAG-RL tools: `image_search` (a page image per query) and `crop` (zoom into a region) (SEEDS 4.2,
14 items 16-17).

    image_search {"query": "population of Zatrea", "episode_id": "task-7/3"}
        -> the best-ranked page not yet shown in this episode, as an image sized for the model
    crop {"bbox": [x1, y1, x2, y2], "episode_id": "task-7/3"}
        -> the region of the last image shown, cut from the raw page and re-encoded for the model

**The image as shown.** A vision-language model does not see the raw page: Qwen2.5-VL's processor resizes an
image to sides that are multiples of 28 with a pixel count in [min_pixels, max_pixels] (`fit_to_bounds`, the
processor's `smart_resize`), and the model's coordinates refer to that resized frame. The tools do this
resize themselves and send exactly those pixels (PNG by default), so the processor has nothing left to
change and "as shown" is unambiguous: `metadata["shown_size"]` is the (width, height) the model saw. The
defaults are VRAG-RL's bounds, 256*28*28 to 512*28*28 pixels. (VRAG-RL's own code reads the box in the frame
of its `process_image` output, which the processor then rounds to multiples of 28 once more; the two
frames differ by at most a few pixels per side. `factor=1` gives `process_image`'s frame exactly.)

**Crop numerics** (SEEDS 4.2 and 14 item 17, VRAG-RL `generation.py`): a box (x1, y1, x2, y2) in the frame of
the image as shown (w, h) maps to the raw image (W, H) as

    crop = [int(x1*W/w), int(y1*H/h), int(x2*W/w), int(y2*H/h)],  clamped to [0, W] x [0, H]

(`map_bbox`; with `pad` > 0, the evaluation setting of 28, the box first grows by `pad` shown pixels on
every side). The raw region is cut and re-encoded within the same pixel bounds, so a small region is
up-sampled to at least min_pixels: that is the zoom. A crop of a crop maps through the crop's own region of
the page, so the model can zoom twice (VRAG-RL instead always cuts from the last *retrieved* page, with the
box read in the frame of the last image shown, whichever it was). An invalid box is an error observation,
never an exception: not 4 numbers, a negative or non-finite number, x2 <= x1 or y2 <= y1, a box that starts
outside the image, a region under one raw pixel, or a region so thin the processor refuses it (aspect
ratio over 200). So are a crop before any image was shown and an unknown `image`.

**How the episode reaches the tools.** Both tools are shared by every episode an EnvServer hosts, so each
call names its episode in the argument `episode_id` (a string; the VRAG-RL format adds it, see
`rollout/formats/vrag.py`, `VRAGFormat(episode_id=...)` or `to_tool_call(action, episode_id)`). What an
episode has been shown (page ids in retrieval order, and each image's region and shown size, for crops)
is kept per episode id in an `EpisodeStore` that the two tools share through the build context (key
"visual_session"); both must therefore live in the same EnvServer, and all calls of an episode must reach
that server. A call without `episode_id` is an error observation unless the tool was built with
`default_episode` (one-episode use: a notebook, a demo); never silently shared across episodes. Episodes
are forgotten least-recently-used beyond `max_episodes`, or at once with `end_episode(episode_id)`.

**For the NDCG reward** (SEEDS 4.3): an image_search observation's `metadata["retrieved"]` is the list of page
ids this call added (one, or none on an error), so concatenating it over an episode's observations gives
the retrieval order; `metadata["episode_retrieved"]` is that whole order so far. Crops add no page.

Owns: the two tools and their factories (`make_image_search_tool`, `make_crop_tool`, registered in
`envs/registry.py` as kinds "image_search" and "crop"), `EpisodeStore`, and the pure functions
`fit_to_bounds`, `map_bbox`, `check_bbox`.

Never: raise into the agent loop (errors are observations); import anything of the project outside `envs/`.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from envs.base import Observation, error_observation
from envs.visual.corpus import PageCorpus

MIN_PIXELS = 256 * 28 * 28  # VRAG-RL process_image bounds (SEEDS 4.2)
MAX_PIXELS = 512 * 28 * 28
FACTOR = 28  # Qwen2.5-VL: patch 14 x merge 2
MAX_ASPECT = 200  # Qwen2.5-VL's processor refuses more
EVAL_PAD = 28  # VRAG-RL pads the box by 28 shown pixels at validation

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------------
# Pure numerics


def fit_to_bounds(width: int, height: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                  factor: int = FACTOR) -> tuple[int, int]:
    """(width, height) of an image as the model sees it: Qwen2.5-VL's `smart_resize`.

    Sides are rounded to multiples of `factor`; if the area then exceeds max_pixels (or falls short of
    min_pixels) both sides are scaled by the same beta and rounded down (up) to multiples of `factor`.
    Same arithmetic as transformers' `smart_resize` (which takes and returns (height, width)). Raises
    ValueError on an empty image or an aspect ratio over 200.
    """
    if width < 1 or height < 1:
        raise ValueError(f"fit_to_bounds: empty image {width}x{height}")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ValueError(f"fit_to_bounds: aspect ratio {max(width, height) / min(width, height):.1f} of "
                         f"{width}x{height} is over {MAX_ASPECT}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return w_bar, h_bar


def check_bbox(bbox: Any, shown_size: tuple[int, int]) -> str | None:
    """Why a box cannot be cropped from an image shown at `shown_size`, or None when it can."""
    if isinstance(bbox, (str, bytes, dict)) or not hasattr(bbox, "__len__"):
        return f"bbox must be a list of 4 numbers [x1, y1, x2, y2], got {type(bbox).__name__} {bbox!r:.80}"
    if len(bbox) != 4:
        return f"bbox must have 4 numbers [x1, y1, x2, y2], got {len(bbox)}: {list(bbox)!r:.80}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return f"bbox values must be numbers, got {list(bbox)!r:.80}"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox values must be finite, got {list(bbox)!r:.80}"
    x1, y1, x2, y2 = bbox
    if min(bbox) < 0:
        return f"bbox values must be non-negative, got {list(bbox)!r}"
    if x2 <= x1 or y2 <= y1:
        return f"bbox needs x1 < x2 and y1 < y2, got {list(bbox)!r}"
    w, h = shown_size
    if x1 >= w or y1 >= h:
        return f"bbox {list(bbox)!r} lies outside the image, which is shown at {w}x{h} (width x height)"
    return None


def map_bbox(bbox, shown_size: tuple[int, int], raw_size: tuple[int, int], pad: float = 0) -> Box:
    """SEEDS 14 item 17: a box in the frame of the image as shown (w, h) -> raw pixels (W, H), clamped.

        crop = [int(x1*W/w), int(y1*H/h), int(x2*W/w), int(y2*H/h)] -> [max(0,.), max(0,.), min(W,.), min(H,.)]

    `pad` (shown pixels) first widens the box on every side (VRAG-RL validation: 28). `int` truncates
    toward zero, as VRAG-RL's code does. The result may be empty (x2 <= x1) for a box off the image.
    """
    (w, h), (W, H) = shown_size, raw_size
    x1, y1, x2, y2 = bbox
    if pad:
        x1, y1, x2, y2 = x1 - pad, y1 - pad, x2 + pad, y2 + pad
    # clamped to the shown frame first (the same result): a finite 1e308 would overflow to inf when scaled
    x1, x2 = (min(max(v, 0), w) for v in (x1, x2))
    y1, y2 = (min(max(v, 0), h) for v in (y1, y2))
    crop = [int(W * x1 / w), int(H * y1 / h), int(W * x2 / w), int(H * y2 / h)]
    return max(0, crop[0]), max(0, crop[1]), min(W, crop[2]), min(H, crop[3])


def encode(img: Image.Image, size: tuple[int, int], image_format: str = "PNG") -> bytes:
    """The image resized to `size` (bicubic, as Qwen2.5-VL's processor) and encoded."""
    if img.size != size:
        img = img.resize(size, Image.Resampling.BICUBIC)
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    if image_format == "JPEG":
        img.save(buf, format="JPEG", quality=90)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------
# Per-episode state


@dataclass
class ShownImage:
    image_id: str  # "image_1", "image_2", ... in the order shown in the episode
    page_id: str
    region: Box  # the page's raw pixels this image shows
    shown_size: tuple[int, int]


@dataclass
class EpisodeState:
    retrieved: list[str] = field(default_factory=list)  # page ids in retrieval order (no repeats)
    images: list[ShownImage] = field(default_factory=list)  # every image shown, crops included


class EpisodeStore:
    """What each episode has been shown, by episode id; least-recently-used episodes beyond
    `max_episodes` are forgotten."""

    def __init__(self, max_episodes: int = 100_000):
        self.max_episodes = max_episodes
        self._episodes: OrderedDict[str, EpisodeState] = OrderedDict()
        self.lock = threading.Lock()  # held around read-modify-write of an episode

    def get(self, episode_id: str) -> EpisodeState:
        """The episode's state (created empty); call with `lock` held."""
        state = self._episodes.get(episode_id)
        if state is None:
            state = self._episodes[episode_id] = EpisodeState()
            while len(self._episodes) > self.max_episodes:
                self._episodes.popitem(last=False)
        else:
            self._episodes.move_to_end(episode_id)
        return state

    def end(self, episode_id: str) -> None:
        with self.lock:
            self._episodes.pop(episode_id, None)

    def __len__(self) -> int:
        return len(self._episodes)


@dataclass
class VisualSession:
    """What the two tools of one EnvServer share: the corpus and the episodes."""

    corpus: PageCorpus
    episodes: EpisodeStore


_NOT_ASKED = object()
_OWN_CORPUS = ("image_search.embedder applies to the world's rendered pages; this EnvServer was given its own "
               "visual corpus (context['visual_corpus'])")


def visual_session(context: dict, embedder: Any = _NOT_ASKED) -> VisualSession:
    """The session in the build context, made on first use from context["visual_corpus"] (a PageCorpus)
    or context["world"] (a synthetic World, whose pages are rendered). image_search passes its `embedder` setting
    (None: the lexical default; or an `envs.search_backends.make_embedder` spec, e.g. {kind: server, model:
    <name>}) for the world's pages; crop asks for none. The corpus ends up embedded as image_search asked, whichever
    tool came first; two image_search tools asking for different embedders of one corpus is an error."""
    asked = embedder is not _NOT_ASKED
    wanted = embedder if asked else None
    session = context.get("visual_session")
    if session is None:
        corpus = context.get("visual_corpus")
        if corpus is None:
            world = context.get("world")
            if world is None:
                raise ValueError("visual tools need context['visual_corpus'] (a PageCorpus) or context['world'] "
                                 "(a synthetic World whose pages are rendered); neither is in the context")
            corpus = context["visual_corpus"] = _world_corpus(world, wanted)
        elif wanted is not None:
            raise ValueError(_OWN_CORPUS)
        session = context["visual_session"] = VisualSession(corpus, EpisodeStore())
        if asked:
            context["visual_embedder"] = wanted
        return session
    if not asked:
        return session
    if "visual_embedder" in context:  # an earlier image_search chose
        if context["visual_embedder"] != wanted:
            raise ValueError(f"image_search.embedder: {wanted!r}, but this EnvServer's visual corpus was already "
                             f"embedded for another image_search with {context['visual_embedder']!r}")
        return session
    context["visual_embedder"] = wanted  # the session was made by crop, with the default
    if wanted is not None:
        if context.get("world") is None:
            raise ValueError(_OWN_CORPUS)
        session.corpus = context["visual_corpus"] = _world_corpus(context["world"], wanted)
    return session


def _world_corpus(world, embedder: str | dict | None) -> PageCorpus:
    if embedder is None:
        return PageCorpus.from_world(world)
    from envs.search_backends import make_embedder

    return PageCorpus.from_world(world, embedder=make_embedder(embedder))


# ----------------------------------------------------------------------------------------------------
# Tools


class _VisualTool:
    name: str
    schema: dict

    def __init__(self, session: VisualSession, min_pixels: int, max_pixels: int, factor: int,
                 image_format: str, caption: bool, default_episode: str | None, fixed_error: str | None):
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"tool {self.name!r}: need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        if factor < 1:
            raise ValueError(f"tool {self.name!r}: factor must be >= 1, got {factor}")
        image_format = image_format.upper()
        if image_format not in ("PNG", "JPEG"):
            raise ValueError(f"tool {self.name!r}: image_format {image_format!r}; use 'png' or 'jpeg'")
        self.session = session
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor
        self.image_format, self.caption = image_format, caption
        self.default_episode = default_episode
        self.fixed_error = fixed_error

    def end_episode(self, episode_id: str) -> None:
        """Forget an episode (both tools share the store)."""
        self.session.episodes.end(episode_id)

    def _error(self, reason: str, **metadata) -> Observation:
        text = self.fixed_error if self.fixed_error is not None else f"Error: {self.name}: {reason}"
        return error_observation(text, tool=self.name, reason=reason, retrieved=[], **metadata)

    def _episode_id(self, arguments: Any) -> tuple[str | None, Observation | None]:
        """(the call's episode id, None), or (None, the error observation)."""
        if not isinstance(arguments, dict):
            return None, self._error(f"arguments must be an object, got {type(arguments).__name__}")
        episode = arguments.get("episode_id", self.default_episode)
        if episode is None:
            return None, self._error("needs 'episode_id' (the agent loop passes each episode's key)")
        return str(episode), None


class ImageSearchTool(_VisualTool):
    name = "image_search"
    schema = {
        "name": "image_search",
        "description": "Search the page-image collection; returns the best-matching page not shown yet.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to look for."}},
            "required": ["query"],
        },
    }

    def __init__(self, session: VisualSession, top_k: int = 10, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS, factor: int = FACTOR, image_format: str = "PNG",
                 caption: bool = False, default_episode: str | None = None, fixed_error: str | None = None):
        super().__init__(session, min_pixels, max_pixels, factor, image_format, caption, default_episode, fixed_error)
        if top_k < 1:
            raise ValueError(f"tool {self.name!r}: top_k must be >= 1, got {top_k}")
        self.top_k = top_k

    async def call(self, arguments: dict) -> Observation:
        episode_id, error = self._episode_id(arguments)
        if error is not None:
            return error
        query = arguments.get("query")
        if isinstance(query, list) and len(query) == 1:
            query = query[0]
        if not isinstance(query, str) or not query.strip():
            return self._error(f"needs 'query': a non-empty string, got {query!r:.80}")
        return await asyncio.to_thread(self._search, query.strip(), episode_id)

    def _search(self, query: str, episode_id: str) -> Observation:
        corpus, store = self.session.corpus, self.session.episodes
        ranked = corpus.search(query, self.top_k)
        with store.lock:  # choose and record at once: two calls of one episode never pick the same page
            state = store.get(episode_id)
            shown = set(state.retrieved)
            rank, page_id = next(((i, p) for i, p in enumerate(ranked, 1) if p not in shown), (None, None))
            if page_id is not None:
                page = corpus.page(page_id)
                raw_size = page.size
                shown_size = fit_to_bounds(*raw_size, self.min_pixels, self.max_pixels, self.factor)
                image = ShownImage(f"image_{len(state.images) + 1}", page_id, (0, 0, *raw_size), shown_size)
                state.retrieved.append(page_id)
                state.images.append(image)
                retrieved_so_far = list(state.retrieved)
        if page_id is None:
            why = "no page matches" if not ranked else f"all {len(ranked)} best pages were already shown"
            return self._error(f"{why} for the query {query!r} in this episode; try a different query",
                               episode_id=episode_id, query=query)
        data = encode(corpus.image(page_id), shown_size, self.image_format)
        text = f"[{image.image_id}: page {page_id}, {shown_size[0]}x{shown_size[1]}]" if self.caption else ""
        return Observation(text, images=[data], metadata={
            "tool": self.name, "episode_id": episode_id, "query": query, "page_id": page_id,
            "image_id": image.image_id, "rank": rank, "retrieved": [page_id], "episode_retrieved": retrieved_so_far,
            "shown_size": list(shown_size), "raw_size": list(raw_size), "region": list(image.region),
            "format": self.image_format.lower()})


class CropTool(_VisualTool):
    name = "crop"
    schema = {
        "name": "crop",
        "description": ("Zoom into a region of the last image shown: bbox [x1, y1, x2, y2] in that image's "
                        "pixels as you see it."),
        "parameters": {
            "type": "object",
            "properties": {
                "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                "image": {"type": "string", "description": "Optional: the id of an earlier image (image_1, ...) "
                                                           "or a page id; default the last image shown."},
            },
            "required": ["bbox"],
        },
    }

    def __init__(self, session: VisualSession, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                 factor: int = FACTOR, pad: float = 0, image_format: str = "PNG", caption: bool = False,
                 default_episode: str | None = None, fixed_error: str | None = None):
        super().__init__(session, min_pixels, max_pixels, factor, image_format, caption, default_episode, fixed_error)
        if pad < 0:
            raise ValueError(f"tool {self.name!r}: pad must be >= 0 (VRAG-RL validation uses {EVAL_PAD}), got {pad}")
        self.pad = pad

    async def call(self, arguments: dict) -> Observation:
        episode_id, error = self._episode_id(arguments)
        if error is not None:
            return error
        bbox = arguments.get("bbox")
        if isinstance(bbox, str):  # a JSON list given as a string
            try:
                bbox = json.loads(bbox)
            except (ValueError, RecursionError):
                return self._error(f"bbox must be a list of 4 numbers [x1, y1, x2, y2], got {bbox!r:.80}",
                                   episode_id=episode_id)
        which = arguments.get("image")
        store = self.session.episodes
        with store.lock:
            state = store.get(episode_id)
            images = list(state.images)
        if not images:
            return self._error("no image has been shown in this episode yet; search first", episode_id=episode_id)
        if which is None:
            source = images[-1]
        else:
            source = next((im for im in reversed(images) if which in (im.image_id, im.page_id)), None)
            if source is None:
                known = [im.image_id for im in images] + sorted({im.page_id for im in images})
                return self._error(f"unknown image {which!r:.80}; shown in this episode: {known}",
                                   episode_id=episode_id)
        why = check_bbox(bbox, source.shown_size)
        if why is not None:
            return self._error(why, episode_id=episode_id, source=source.image_id)
        return await asyncio.to_thread(self._crop, [float(v) for v in bbox], source, episode_id)

    def _crop(self, bbox: list[float], source: ShownImage, episode_id: str) -> Observation:
        rx1, ry1, rx2, ry2 = source.region
        cx1, cy1, cx2, cy2 = map_bbox(bbox, source.shown_size, (rx2 - rx1, ry2 - ry1), self.pad)
        if cx2 <= cx1 or cy2 <= cy1:
            return self._error(f"bbox {bbox} covers less than one raw pixel of the image", episode_id=episode_id,
                               source=source.image_id)
        region = (rx1 + cx1, ry1 + cy1, rx1 + cx2, ry1 + cy2)  # in the page's raw pixels
        w, h = region[2] - region[0], region[3] - region[1]
        try:
            shown_size = fit_to_bounds(w, h, self.min_pixels, self.max_pixels, self.factor)
        except ValueError as err:
            return self._error(f"bbox {bbox} gives a {w}x{h} region the model cannot take ({err})",
                               episode_id=episode_id, source=source.image_id)
        data = encode(self.session.corpus.image(source.page_id).crop(region), shown_size, self.image_format)
        store = self.session.episodes
        with store.lock:
            state = store.get(episode_id)
            image = ShownImage(f"image_{len(state.images) + 1}", source.page_id, region, shown_size)
            state.images.append(image)
        text = f"[{image.image_id}: crop of {source.image_id}, {shown_size[0]}x{shown_size[1]}]" if self.caption else ""
        return Observation(text, images=[data], metadata={
            "tool": self.name, "episode_id": episode_id, "page_id": source.page_id, "image_id": image.image_id,
            "source": source.image_id, "bbox": bbox, "region": list(region), "shown_size": list(shown_size),
            "source_shown_size": list(source.shown_size), "retrieved": [], "format": self.image_format.lower()})


# ----------------------------------------------------------------------------------------------------
# Factories (envs/registry.py)


def make_image_search_tool(context: dict, top_k: int = 10, min_pixels: int = MIN_PIXELS,
                           max_pixels: int = MAX_PIXELS, factor: int = FACTOR, image_format: str = "png",
                           caption: bool = False, default_episode: str | None = None,
                           fixed_error: str | None = None, embedder: str | dict | None = None) -> ImageSearchTool:
    """`embedder`: None, the lexical default; or a make_embedder spec for the world's pages (visual_session)."""
    return ImageSearchTool(visual_session(context, embedder), top_k, min_pixels, max_pixels, factor, image_format, caption,
                           default_episode, fixed_error)


def make_crop_tool(context: dict, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS, factor: int = FACTOR,
                   pad: float = 0, image_format: str = "png", caption: bool = False,
                   default_episode: str | None = None, fixed_error: str | None = None) -> CropTool:
    return CropTool(visual_session(context), min_pixels, max_pixels, factor, pad, image_format, caption,
                    default_episode, fixed_error)
