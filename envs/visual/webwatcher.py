"""WebWatcher's tools in their own shapes (SEEDS 9.1; checklist item 19).

    web_search      {"queries": ["q1", "q2"]}                 top results per query (the world's search index)
    VLSearchImage   {"image_urls": ["image://q-..."]}          reverse image search: the nearest pictures and
                                                               their descriptions (names, kinds, page URLs)
    visit           {"url": "...", "goal": "..."}              goal-conditioned page summary: the `visit` kind
                                                               (envs/tools/visit.py, envs/tools/summary.py)
    code_interpreter {"code": "..."}                          the sandboxed python tool (envs/tools/python.py)
    ocr             {"image_url": "image://..."}               the text in an image, read by a real OCR engine

`web_search` and `code_interpreter` are the existing `search` and `python` tools under WebWatcher's names
and argument names (`Renamed`), so one implementation serves both grammars. Images are addressed by URL
(`envs/visual/pictures.py` WorldImages: entity pictures, question images, rendered pages), as the released
agent passes image URLs; the URL names no entity.

**OCR** is RapidOCR (PaddleOCR's detection + recognition models exported to ONNX, shipped inside the
`rapidocr-onnxruntime` wheel; onnxruntime on CPU). Nothing is downloaded. Where the engine cannot be
imported or loaded the tool refuses to start (`make_ocr_tool` raises, naming the package to install), never
answers with empty text. One engine per process, its calls serialised (`max_concurrency`, default 1: each
call already uses the cores).

Several tool calls of one turn run concurrently in the agent loop (rollout/agent.py `call_tools`); each
tool here is safe to call concurrently.

Owns: `Renamed`, `VLSearchImageTool`, `OCRTool` and the factories registered in envs/registry.py
("web_search", "vl_search_image", "code_interpreter", "ocr"). Never: raise into the agent loop (errors are
observations); import anything of the project outside `envs/`; reach the network.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from typing import Any

import numpy as np

from envs.base import Observation, Tool, error_observation
from envs.visual.pictures import PICTURE_SIZE, WorldImages, png


class Renamed:
    """A tool under another name and argument names: {"queries": ...} reaches the inner tool as {"query": ...}."""

    def __init__(self, inner: Tool, name: str, arguments: dict[str, str], description: str | None = None):
        self.inner, self.name, self.arguments = inner, name, dict(arguments)  # outer argument -> inner argument
        params = inner.schema.get("parameters", {})
        back = {v: k for k, v in self.arguments.items()}
        props = {back.get(k, k): v for k, v in params.get("properties", {}).items()}
        required = [back.get(k, k) for k in params.get("required", [])]
        self.schema = dict(inner.schema, name=name, parameters=dict(params, properties=props, required=required))
        if description:
            self.schema["description"] = description

    def __getattr__(self, attribute: str):  # the inner tool's settings (e.g. python's `limits` for the EnvServer)
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    async def call(self, arguments: dict) -> Observation:
        hidden = sorted(k for k in arguments if k not in self.arguments and k in self.arguments.values())
        if hidden:  # an inner name the model was not shown would override the checked outer argument
            return error_observation(f"Error: {self.name} has no argument {hidden[0]!r}; its arguments: "
                                     f"{sorted(self.schema['parameters'].get('properties', {}))}", tool=self.name)
        obs = await self.inner.call({self.arguments.get(k, k): v for k, v in arguments.items()})
        obs.metadata["tool"] = self.name
        return obs


def world_images(context: dict) -> WorldImages:
    """The build context's WorldImages, made on first use from context["world"] (and its base URL)."""
    images = context.get("world_images")
    if images is None:
        if context.get("world") is None:
            raise ValueError("WebWatcher image tools need context['world'] (the synthetic world; an EnvServer "
                             "with a `world` setting provides it) or context['world_images']")
        images = context["world_images"] = WorldImages(context["world"], context.get("base_url"))
    return images


class VLSearchImageTool:
    name = "VLSearchImage"
    schema = {
        "name": "VLSearchImage",
        "description": ("Reverse image search: the images most similar to the input image, with their "
                        "descriptions. Use it once, on the question's image."),
        "parameters": {
            "type": "object",
            "properties": {"image_urls": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                          "description": "The URL(s) of the image(s) to search with."}},
            "required": ["image_urls"],
        },
    }

    def __init__(self, images: WorldImages, top_k: int = 10, max_images: int = 3, return_images: bool = True,
                 image_size: int = 112):
        if top_k < 1 or max_images < 1 or image_size < 28:
            raise ValueError(f"VLSearchImage: need top_k >= 1 (got {top_k}), max_images >= 1 (got {max_images}), "
                             f"image_size >= 28 (got {image_size})")
        self.images, self.top_k, self.max_images = images, top_k, max_images
        self.return_images, self.image_size = return_images, image_size

    async def call(self, arguments: dict) -> Observation:
        urls = arguments.get("image_urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            return error_observation(f"Error: VLSearchImage needs 'image_urls': a non-empty list of image URLs, "
                                     f"got {urls!r:.120}", tool=self.name)
        return await asyncio.to_thread(self._search, [u.strip() for u in urls[: self.max_images]])

    def _search(self, urls: list[str]) -> Observation:
        blocks, shown, found, errors = [], [], [], 0
        w, h = PICTURE_SIZE
        size = (self.image_size, max(28, round(self.image_size * h / w / 28) * 28))
        for url in urls:
            try:
                query = self.images.image(url)
            except KeyError as err:
                errors += 1
                blocks.append(f"Error: VLSearchImage: {err.args[0]}")
                continue
            hits = self.images.nearest(query, self.top_k)
            lines = [f"Reverse image search for {url} found {len(hits)} images:"]
            for i, (picture, eid, score) in enumerate(hits, 1):
                lines.append(f"{i}. {self.images.description(eid)} (image {picture}, similarity {score:.2f})")
                if self.return_images:
                    shown.append(png(self.images.image(picture).resize(size)))
            found.append([eid for _, eid, _ in hits])
            blocks.append("\n".join(lines))
        text = "\n=======\n".join(blocks)
        if shown:
            text = "Contents of retrieved images (in the order listed):\n" + text
        return Observation(text, images=shown, metadata={"tool": self.name, "image_urls": urls, "entities": found,
                                                         "errors": errors}, error=errors == len(urls))


#: how long an OCR read waits for a free slot (the reads before it hold the engine) before failing as a tool error
SLOT_TIMEOUT_S = 120.0


class OCRTool:
    name = "ocr"
    schema = {
        "name": "ocr",
        "description": "Read the text in an image (optical character recognition), line by line.",
        "parameters": {
            "type": "object",
            "properties": {"image_url": {"type": "string", "description": "The URL of the image to read."}},
            "required": ["image_url"],
        },
    }

    def __init__(self, images: WorldImages, engine: Any, min_score: float = 0.5, max_concurrency: int = 1):
        if not 0 <= min_score <= 1 or max_concurrency < 1:
            raise ValueError(f"ocr: need 0 <= min_score <= 1 (got {min_score}) and max_concurrency >= 1 "
                             f"(got {max_concurrency})")
        self.images, self.engine, self.min_score = images, engine, min_score
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._max_concurrency = max_concurrency

    async def call(self, arguments: dict) -> Observation:
        url = arguments.get("image_url")
        if isinstance(url, list) and len(url) == 1:
            url = url[0]
        if not isinstance(url, str) or not url.strip():
            return error_observation(f"Error: ocr needs 'image_url': an image URL, got {url!r:.120}", tool=self.name)
        try:
            img = self.images.image(url.strip())
        except KeyError as err:
            return error_observation(f"Error: ocr: {err.args[0]}", tool=self.name)
        lines = await asyncio.to_thread(self.read, img)
        text = "\n".join(t for t, _ in lines) if lines else "(no text found in the image)"
        return Observation(f"Text in {url.strip()}:\n{text}", metadata={
            "tool": self.name, "image_url": url.strip(), "lines": len(lines),
            "scores": [round(s, 3) for _, s in lines]})

    def read(self, img) -> list[tuple[str, float]]:
        """(text, confidence) per line, top to bottom, lines under `min_score` left out."""
        if not self._slots.acquire(timeout=SLOT_TIMEOUT_S):  # a hung read must not hold every later one forever
            raise TimeoutError(f"ocr: no free OCR slot within {SLOT_TIMEOUT_S:.0f}s (max_concurrency "
                               f"{self._max_concurrency}: earlier reads have not finished)")
        try:
            result, _ = self.engine(np.asarray(img.convert("RGB"))[:, :, ::-1])  # the engine reads BGR, as cv2
        finally:
            self._slots.release()
        return [(str(text), float(score)) for _, text, score in (result or []) if float(score) >= self.min_score]


_ENGINE: Any = None
_ENGINE_LOCK = threading.Lock()


def ocr_engine():
    """The process's RapidOCR engine; RuntimeError naming what to install when it cannot load."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except Exception as err:  # ImportError, or a broken onnxruntime / opencv underneath
                raise RuntimeError(
                    f"ocr: no OCR engine ({type(err).__name__}: {err}); install rapidocr-onnxruntime==1.4.4 with "
                    "onnxruntime==1.32.0, pyclipper==1.4.0, shapely==2.2.0 (--no-deps; opencv is already there), "
                    "or leave the ocr tool out of env.tools") from None
            try:
                _ENGINE = RapidOCR()
            except Exception as err:
                raise RuntimeError(f"ocr: the RapidOCR engine did not load ({type(err).__name__}: {err}); its "
                                   "models ship inside the rapidocr-onnxruntime wheel: reinstall it") from None
    return _ENGINE


def release_ocr_engine() -> None:
    """Drop the engine's ONNX Runtime sessions while the interpreter is whole (atexit). A session left in module
    scope is freed during interpreter teardown, in no set order with ONNX Runtime's own process-wide environment,
    a known way for onnxruntime to crash the process at exit (microsoft/onnxruntime PR 24238's discussion)."""
    global _ENGINE
    with _ENGINE_LOCK:
        held, _ENGINE = _ENGINE is not None, None
    if held:
        import gc

        gc.collect()


atexit.register(release_ocr_engine)


# ----------------------------------------------------------------------------------------------------
# Factories (envs/registry.py)


def make_web_search_tool(context: dict, backend: str = "world", top_k: int = 10, max_queries: int = 5,
                         **backend_kwargs) -> Renamed:
    """WebWatcher's `web_search(queries)`: the `search` tool (envs/tools/search.py) under its names."""
    from envs.tools.search import make_search_tool

    inner = make_search_tool(context, backend=backend, top_k=top_k, max_queries=max_queries, **backend_kwargs)
    return Renamed(inner, "web_search", {"queries": "query"},
                   "Search the web: 'queries' is a list of one or more queries; the top results of each are returned.")


def _check_web_search(arguments: dict) -> None:
    from envs.tools.search import check_search_arguments

    check_search_arguments(arguments)


make_web_search_tool.check = _check_web_search


def make_code_interpreter_tool(context: dict, **python_settings) -> Renamed:
    """WebWatcher's `code_interpreter(code)`: the sandboxed `python` tool; its settings are python's."""
    from envs.tools.python import make_python_tool

    return Renamed(make_python_tool(context, **python_settings), "code_interpreter", {})


def _check_code_interpreter(arguments: dict) -> None:
    from envs.registry import check_arguments
    from envs.tools.python import make_python_tool

    check_arguments(make_python_tool, arguments, "tool kind 'code_interpreter'", skip=("context",))


make_code_interpreter_tool.check = _check_code_interpreter


def make_vl_search_image_tool(context: dict, top_k: int = 10, max_images: int = 3, return_images: bool = True,
                              image_size: int = 112) -> VLSearchImageTool:
    return VLSearchImageTool(world_images(context), top_k, max_images, return_images, image_size)


def make_ocr_tool(context: dict, min_score: float = 0.5, max_concurrency: int = 1) -> OCRTool:
    """The OCR tool; raises (the EnvServer does not start) when no OCR engine loads here."""
    return OCRTool(world_images(context), ocr_engine(), min_score, max_concurrency)
