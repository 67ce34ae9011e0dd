"""The visual environment (VRAG-RL): page images of the world, retrieval, per-episode de-duplication, crop."""

from __future__ import annotations

import asyncio
import io
import random

import numpy as np
import pytest
from PIL import Image

from envs.base import LocalEnv
from envs.registry import build_tools
from envs.visual.corpus import HashingEmbedder, PageCorpus
from envs.visual.pages import page_image, page_png, render_pages, visual_qa
from envs.visual.tools import (
    MAX_PIXELS,
    MIN_PIXELS,
    CropTool,
    EpisodeStore,
    ImageSearchTool,
    VisualSession,
    check_bbox,
    encode,
    fit_to_bounds,
    map_bbox,
)
from envs.world import generate_world


@pytest.fixture(scope="module")
def world():
    return generate_world(0, "tiny")


@pytest.fixture(scope="module")
def pages(world):
    return render_pages(world)


@pytest.fixture(scope="module")
def corpus(pages):
    return PageCorpus(pages)


@pytest.fixture(scope="module")
def tasks(world, pages):
    return visual_qa(world, pages, n=150)


def run(coro):
    return asyncio.run(coro)


def tools(corpus, **kwargs):
    session = VisualSession(corpus, EpisodeStore())
    return ImageSearchTool(session, **kwargs), CropTool(session)


def decoded(obs) -> Image.Image:
    assert len(obs.images) == 1
    return Image.open(io.BytesIO(obs.images[0]))


# ----------------------------------------------------------------------------------------------------
# Pages and tasks


def test_pages_and_tasks_are_deterministic_per_seed(world, pages, tasks):
    again = render_pages(generate_world(0, "tiny"))
    assert [(p.id, p.text, p.size, p.regions, p.passages) for p in again] == \
           [(p.id, p.text, p.size, p.regions, p.passages) for p in pages]
    for kind in ("document", "table", "chart"):
        a = next(p for p in pages if p.kind == kind)
        b = next(p for p in again if p.id == a.id)
        assert page_png(a) == page_png(b)
    assert visual_qa(world, again, n=150) == tasks
    other = render_pages(generate_world(1, "tiny"))
    assert [p.text for p in other] != [p.text for p in pages]
    assert visual_qa(world, pages, n=150, seed=1) != tasks  # another draw of tasks from the same pages


def test_every_fact_is_on_one_page_and_every_task_has_its_gold_region(pages, tasks):
    owners: dict[str, list[str]] = {}
    for p in pages:
        for fact in p.regions:
            owners.setdefault(fact, []).append(p.id)
    assert all(len(ids) == 1 for ids in owners.values())
    doc_heights = [b[3] - b[1] for p in pages if p.kind == "document" for b in p.regions.values()]
    assert max(doc_heights) < 40  # a name in a paragraph is one line: its box is tight
    by_id = {p.id: p for p in pages}
    kinds = {t["page_kind"] for t in tasks}
    assert kinds == {"document", "table", "chart"} and len({t["uid"] for t in tasks}) == len(tasks)
    for t in tasks:
        page = by_id[t["gold_ids"][0]]
        assert t["gold_region"]["page_id"] == page.id and t["gold_ids"] == [page.id]
        x1, y1, x2, y2 = t["gold_region"]["bbox"]
        assert 0 <= x1 < x2 <= page.size[0] and 0 <= y1 < y2 <= page.size[1]
        assert t["answer"] in page.text  # the page shows the answer ...
    for t in tasks[:30]:  # ... and its region holds ink
        region = page_image(by_id[t["gold_ids"][0]]).crop(tuple(t["gold_region"]["bbox"])).convert("L")
        assert np.asarray(region).min() < 100, t


# ----------------------------------------------------------------------------------------------------
# Retrieval


def test_retrieval_returns_the_gold_page_for_a_direct_query(pages, corpus, tasks):
    for p in pages:
        if p.kind != "document":  # table and chart titles are unique
            assert corpus.search(p.title, 1) == [p.id], p.title
    relation = [t for t in tasks if t["question_kind"] == "relation"]
    top1 = np.mean([corpus.search(t["question"], 1) == t["gold_ids"] for t in relation])
    assert top1 >= 0.9, top1
    top3 = np.mean([t["gold_ids"][0] in corpus.search(t["question"], 3) for t in tasks])
    assert top3 >= 0.95, top3
    assert corpus.search("the of and", 5) == []  # nothing the embedder knows


def test_embedder_is_deterministic_and_normalised(pages):
    a, b = HashingEmbedder(), HashingEmbedder()
    texts = [p.text for p in pages[:10]]
    a.fit(texts)
    b.fit(texts)
    va, vb = a.embed(texts), b.embed(texts)
    assert np.array_equal(va, vb) and np.allclose(np.linalg.norm(va, axis=1), 1.0, atol=1e-5)


def test_faiss_and_numpy_rank_alike(pages, corpus, tasks):
    pytest.importorskip("faiss")
    with_faiss = PageCorpus(pages, backend="faiss")
    assert with_faiss.backend == "faiss" and corpus.backend == "numpy"
    for t in tasks[:40]:
        a, b = corpus.search_scored(t["question"], 5), with_faiss.search_scored(t["question"], 5)
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)
        assert a[0][0] == b[0][0]


# ----------------------------------------------------------------------------------------------------
# image_search: de-duplication per episode


def test_the_same_query_twice_gives_a_new_page_in_an_episode_but_not_across_episodes(corpus, tasks):
    search, _ = tools(corpus)
    query = tasks[0]["question"]
    ranked = corpus.search(query, 10)
    first = run(search.call({"query": query, "episode_id": "A"}))
    second = run(search.call({"query": query, "episode_id": "A"}))
    other = run(search.call({"query": query, "episode_id": "B"}))
    assert not (first.error or second.error or other.error)
    assert first.metadata["page_id"] == ranked[0] and second.metadata["page_id"] == ranked[1]
    assert other.metadata["page_id"] == ranked[0]  # episode B has seen nothing
    assert first.metadata["retrieved"] == [ranked[0]] and second.metadata["retrieved"] == [ranked[1]]
    assert second.metadata["episode_retrieved"] == ranked[:2] and second.metadata["rank"] == 2
    # the image is what the model sees: sized within the pixel bounds, sides multiples of 28
    img = decoded(first)
    w, h = first.metadata["shown_size"]
    assert img.size == (w, h) and w % 28 == 0 and h % 28 == 0 and MIN_PIXELS <= w * h <= MAX_PIXELS
    assert tuple(first.metadata["raw_size"]) == corpus.page(ranked[0]).size


def test_a_query_whose_pages_were_all_shown_is_an_error_observation(corpus, tasks):
    search, _ = tools(corpus, top_k=2)
    q = tasks[0]["question"]
    assert not run(search.call({"query": q, "episode_id": "e"})).error
    assert not run(search.call({"query": q, "episode_id": "e"})).error
    third = run(search.call({"query": q, "episode_id": "e"}))
    assert third.error and "already shown" in third.text and third.metadata["retrieved"] == []
    for bad in ({"query": "", "episode_id": "e"}, {"query": ["a", "b"], "episode_id": "e"}, {"episode_id": "e"},
                {"query": "population"}):
        obs = run(search.call(bad))
        assert obs.error and obs.text.startswith("Error: image_search:"), bad
    assert not run(tools(corpus)[0].call({"query": ["population"], "episode_id": "x"})).error


def test_episodes_are_forgotten_at_the_end_and_beyond_the_bound(corpus):
    store = EpisodeStore(max_episodes=2)
    search = ImageSearchTool(VisualSession(corpus, store))
    for ep in ("a", "b", "c"):
        run(search.call({"query": "population", "episode_id": ep}))
    assert len(store) == 2
    search.end_episode("c")
    assert len(store) == 1
    again = run(search.call({"query": "population", "episode_id": "a"}))  # "a" was evicted: starts afresh
    assert again.metadata["rank"] == 1


# ----------------------------------------------------------------------------------------------------
# Crop numerics (SEEDS 14 item 17)


def test_fit_to_bounds_is_qwen_smart_resize_and_stays_within_the_bounds():
    # (width, height) -> shown size, from transformers' Qwen2-VL smart_resize(h, w, 28, 256*28*28, 512*28*28)
    pinned = {(1000, 1300): (532, 700), (1300, 1000): (700, 532), (1200, 900): (728, 532), (1, 1): (448, 448),
              (27, 27): (448, 448), (448, 448): (448, 448), (634, 634): (616, 616), (10, 1999): (56, 6356),
              (2000, 10): (6356, 56), (5000, 3000): (812, 476), (300, 20): (1736, 140), (640, 313): (644, 336),
              (17, 3000): (56, 5964)}
    assert {size: fit_to_bounds(*size) for size in pinned} == pinned
    rng = random.Random(0)
    for _ in range(3000):
        w, h = rng.randint(1, 4000), rng.randint(1, 4000)
        if max(w, h) / min(w, h) > 200:
            continue
        sw, sh = fit_to_bounds(w, h)
        assert sw % 28 == 0 and sh % 28 == 0 and MIN_PIXELS <= sw * sh <= MAX_PIXELS
    with pytest.raises(ValueError, match="aspect"):
        fit_to_bounds(1000, 4)


def test_map_bbox_numerics():
    W, H, w, h = 1000, 1300, 532, 700
    assert map_bbox([0, 0, w / 2, h / 2], (w, h), (W, H)) == (0, 0, W // 2, H // 2)  # SEEDS 14.17
    assert map_bbox([0, 0, w, h], (w, h), (W, H)) == (0, 0, W, H)
    # int() truncation: 100 * 1000 / 532 = 187.97 -> 187
    assert map_bbox([100, 100, 200, 200], (w, h), (W, H)) == (187, 185, 375, 371)
    assert map_bbox([500, 600, 900, 900], (w, h), (W, H)) == (939, 1114, W, H)  # clamped
    assert map_bbox([10, 10, 20, 20], (w, h), (W, H), pad=28) == (0, 0, 90, 89)  # eval pad, clamped at 0
    assert map_bbox([2, 4, 6, 8], (10, 10), (5, 5)) == (1, 2, 3, 4)  # shown larger than raw
    assert map_bbox([0, 0, 1e308, 1e308], (w, h), (W, H)) == (0, 0, W, H)  # finite, but inf once scaled


def test_check_bbox_names_the_problem():
    shown = (532, 700)
    assert check_bbox([0, 0, 10, 10], shown) is None
    assert check_bbox([0, 0, 9999, 9999], shown) is None  # partly outside: clamped later
    cases = {
        "4 numbers": [[1, 2, 3], [1, 2, 3, 4, 5], "1,2,3,4", {"x": 1}, 7, None],
        "must be numbers": [[1, "2", 3, 4], [True, 0, 3, 4], [None, 0, 3, 4]],
        "finite": [[float("nan"), 0, 3, 4], [0, 0, float("inf"), 4]],
        "non-negative": [[-1, 0, 3, 4]],
        "x1 < x2": [[10, 0, 10, 4], [0, 9, 5, 3]],
        "outside the image": [[532, 0, 600, 10], [0, 700, 10, 800]],
    }
    for needle, boxes in cases.items():
        for box in boxes:
            why = check_bbox(box, shown)
            assert why is not None and needle in why, (box, why)


def test_crop_maps_the_shown_box_to_raw_pixels_and_re_encodes_within_the_bounds(corpus):
    search, crop = tools(corpus)
    found = run(search.call({"query": "Population of cities", "episode_id": "e"}))
    page = corpus.page(found.metadata["page_id"])
    W, H = page.size
    w, h = found.metadata["shown_size"]
    half = run(crop.call({"bbox": [0, 0, w / 2, h / 2], "episode_id": "e"}))
    assert not half.error and half.metadata["region"] == [0, 0, int(W * (w / 2) / w), int(H * (h / 2) / h)]
    assert half.metadata["retrieved"] == [] and half.metadata["image_id"] == "image_2"
    img = decoded(half)
    sw, sh = half.metadata["shown_size"]
    assert img.size == (sw, sh) and MIN_PIXELS <= sw * sh <= MAX_PIXELS
    expected = encode(corpus.image(page.id).crop(tuple(half.metadata["region"])), (sw, sh))
    assert half.images[0] == expected  # exactly the raw region, resized
    # a small region is up-sampled (the zoom) and a crop of a crop maps through the crop's region
    small = run(crop.call({"bbox": [10, 10, 40, 30], "episode_id": "e"}))
    x0, y0 = half.metadata["region"][:2]
    rw, rh = half.metadata["region"][2] - x0, half.metadata["region"][3] - y0
    assert small.metadata["region"] == [x0 + int(rw * 10 / sw), y0 + int(rh * 10 / sh),
                                        x0 + int(rw * 40 / sw), y0 + int(rh * 30 / sh)]
    rx1, ry1, rx2, ry2 = small.metadata["region"]
    assert small.metadata["shown_size"][0] * small.metadata["shown_size"][1] >= MIN_PIXELS > (rx2 - rx1) * (ry2 - ry1)
    # an earlier image by id: the page as first shown
    back = run(crop.call({"bbox": [0, 0, w, h], "episode_id": "e", "image": "image_1"}))
    assert back.metadata["region"] == [0, 0, W, H]
    by_page = run(crop.call({"bbox": [0, 0, w, h], "episode_id": "e", "image": page.id}))
    assert by_page.metadata["region"] == [0, 0, W, H]


def test_a_crop_of_the_gold_region_contains_it(corpus, tasks):
    search, crop = tools(corpus)
    t = next(t for t in tasks if t["page_kind"] == "chart")
    gold = t["gold_ids"][0]
    ep = "g"
    for _ in range(5):  # search until the gold page is shown
        obs = run(search.call({"query": t["question"], "episode_id": ep}))
        if obs.metadata.get("page_id") == gold:
            break
    assert obs.metadata["page_id"] == gold
    (W, H), (w, h) = corpus.page(gold).size, obs.metadata["shown_size"]
    x1, y1, x2, y2 = t["gold_region"]["bbox"]
    shown_box = [x1 * w / W, y1 * h / H, min(w, x2 * w / W + 1), min(h, y2 * h / H + 1)]
    zoom = run(crop.call({"bbox": shown_box, "episode_id": ep}))
    rx1, ry1, rx2, ry2 = zoom.metadata["region"]
    assert rx1 <= x1 and ry1 <= y1 and rx2 >= x2 and ry2 >= y2


def test_invalid_crops_are_error_observations(corpus):
    search, crop = tools(corpus)
    nothing = run(crop.call({"bbox": [0, 0, 10, 10], "episode_id": "fresh"}))
    assert nothing.error and "no image has been shown" in nothing.text
    found = run(search.call({"query": "population", "episode_id": "e"}))
    w, h = found.metadata["shown_size"]
    bad = {
        "wrong arity": [1, 2, 3],
        "non-numbers": ["a", 0, 3, 4],
        "a string that is not JSON": "[1, 2,",
        "x2 <= x1": [50, 0, 40, 10],
        "y2 <= y1": [0, 50, 10, 50],
        "outside the image": [w + 5, 0, w + 50, 10],
        "negative": [-5, 0, 10, 10],
        "too thin": [0, 0, w, 0.5],
    }
    for what, box in bad.items():
        obs = run(crop.call({"bbox": box, "episode_id": "e"}))
        assert obs.error and obs.text.startswith("Error: crop:") and not obs.images, (what, obs.text)
    assert run(crop.call({"bbox": "[0, 0, 10, 10]", "episode_id": "e"})).error is False  # JSON text is fine
    unknown = run(crop.call({"bbox": [0, 0, 10, 10], "episode_id": "e", "image": "image_9"}))
    assert unknown.error and "unknown image" in unknown.text
    assert run(crop.call({"bbox": [0, 0, 10, 10]})).error  # no episode id
    fixed = CropTool(crop.session, fixed_error="Your previous action is invalid.")
    obs = run(fixed.call({"bbox": [1, 2, 3], "episode_id": "e"}))
    assert obs.error and obs.text == "Your previous action is invalid." and "4 numbers" in obs.metadata["reason"]


# ----------------------------------------------------------------------------------------------------
# Registry: both tools from one spec share the corpus and the episodes


def test_registry_builds_the_visual_tools_on_the_world(world):
    context = {"world": world}
    built = build_tools({"search": {"kind": "image_search", "top_k": 5}, "crop": {"pad": 0}}, context)
    assert [t.name for t in built] == ["search", "crop"]
    assert built[0].session is built[1].session is context["visual_session"]
    env = LocalEnv(built)
    found = run(env.call("search", {"query": "Population of cities", "episode_id": "e"}))
    w, h = found.metadata["shown_size"]
    zoom = run(env.call("crop", {"bbox": [0, 0, w // 2, h // 2], "episode_id": "e"}))
    assert not found.error and not zoom.error and zoom.metadata["page_id"] == found.metadata["page_id"]
    with pytest.raises(ValueError, match="unknown key"):
        build_tools({"crop": {"bbox": 1}}, context)
    with pytest.raises(ValueError, match="context"):
        build_tools({"crop": {}}, {})


def test_image_search_embedder_setting_embeds_the_pages_whoever_built_the_session(world, tasks):
    from envs.search_backends import HashingEmbedder as RetrievalHashing

    context = {"world": world}  # crop first: the session starts with the lexical default ...
    built = build_tools({"crop": {}, "search": {"kind": "image_search", "top_k": 3, "embedder": "hashing"}}, context)
    corpus = built[0].session.corpus  # ... and image_search's embedder re-embeds it for both tools
    assert built[0].session is built[1].session and isinstance(corpus.embedder, RetrievalHashing)
    assert corpus.vectors.shape[1] == corpus.embedder.dim
    top3 = np.mean([t["gold_ids"][0] in corpus.search(t["question"], 3) for t in tasks])
    assert top3 >= 0.9, top3  # 0.97 measured; queries through embed_queries, pages through embed_documents
    with pytest.raises(ValueError, match="already embedded"):
        build_tools({"search": {"kind": "image_search", "embedder": {"kind": "hashing", "dim": 64}}}, context)
    lexical = {"world": world}  # an image_search that kept the lexical default is not re-embedded by another
    build_tools({"a": {"kind": "image_search"}}, lexical)
    with pytest.raises(ValueError, match="already embedded"):
        build_tools({"b": {"kind": "image_search", "embedder": "hashing"}}, lexical)
    assert isinstance(lexical["visual_session"].corpus.embedder, HashingEmbedder)
