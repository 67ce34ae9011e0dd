"""The visual environment of VRAG-RL (SEEDS 4): page images, retrieval by text query, and crop (DESIGN section 5).

    world = generate_world(seed=0, size="tiny")
    pages = render_pages(world)                       # documents, tables, charts, with gold regions
    tasks = visual_qa(world, pages, n=100)            # question, answer, gold_ids, gold_region
    corpus = PageCorpus(pages)                        # embedding retrieval (offline lexical embedder)
    tools = build_tools({"image_search": {}, "crop": {}}, {"visual_corpus": corpus})

`pages.py` draws the pages (Pillow, DejaVu fonts), `corpus.py` retrieves them, `tools.py` holds the
`image_search` and `crop` tools (per-episode de-duplication, the crop mapping of SEEDS 14 item 17). The
VRAG-RL action grammar that calls these tools is `rollout/formats/vrag.py`.

WebWatcher (SEEDS 9): `pictures.py` (entity pictures, question images, the reverse-image index),
`webwatcher.py` (web_search, VLSearchImage, code_interpreter, ocr), `bcvl.py` (BrowseComp-VL-style
questions and the released files' loader), `expert_webwatcher.py` (the scripted expert).

Never: import anything of the project outside `envs/`; reach the network.
"""

from envs.visual.bcvl import browsecomp_vl, load_bcvl, write_bcvl
from envs.visual.corpus import Embedder, HashingEmbedder, PageCorpus
from envs.visual.pages import Page, font_source, page_image, page_png, render_pages, visual_qa
from envs.visual.pictures import WorldImages
from envs.visual.tools import (
    CropTool,
    EpisodeStore,
    ImageSearchTool,
    VisualSession,
    check_bbox,
    fit_to_bounds,
    make_crop_tool,
    make_image_search_tool,
    map_bbox,
)

__all__ = [
    "CropTool", "Embedder", "EpisodeStore", "HashingEmbedder", "ImageSearchTool", "Page", "PageCorpus",
    "VisualSession", "check_bbox", "fit_to_bounds", "font_source", "make_crop_tool", "make_image_search_tool",
    "map_bbox", "page_image", "page_png", "render_pages", "visual_qa",
    "WorldImages", "browsecomp_vl", "load_bcvl", "write_bcvl",
]
