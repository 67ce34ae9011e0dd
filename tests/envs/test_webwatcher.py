"""WebWatcher's tools, the multi-call turn and the BrowseComp-VL builder / loader (SEEDS 9; 14 items 19, 37).

Item 19: 128 tool calls of one turn run concurrently and come back in the calls' order; a failing tool is
that call's error observation while the others succeed. Item 37: every BC-VL item has an image and a level;
Level-2 questions contain none of the walk's entity names. OCR is checked against the rendered gold text."""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from envs.base import LocalEnv, Observation
from envs.registry import build_tools, validate_tools
from envs.visual.bcvl import browsecomp_vl, load_bcvl, name_leaks, parse_answers, write_bcvl
from envs.visual.pictures import WorldImages
from envs.world import generate_world
from rollout.agent import call_tools, merge_observations
from rollout.formats.react import INVALID_TOOL_CALL, Action, ParallelReActFormat, ReActFormat


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0, size="tiny")


@pytest.fixture(scope="module")
def images(world):
    return WorldImages(world, "http://127.0.0.1:9")


# --- item 19: concurrent calls, results in the calls' order ------------------------------------------


class Sleepy:
    """Answers its argument after a random delay; records how many calls were in flight at once."""
    name = "sleepy"
    schema = {"name": "sleepy", "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}}}

    def __init__(self):
        self.running = self.peak = 0

    async def call(self, arguments):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(random.Random(arguments["i"]).uniform(0.0, 0.05))
        self.running -= 1
        return Observation(f"result {arguments['i']}")


class Broken:
    name = "broken"
    schema = {"name": "broken", "parameters": {"type": "object"}}

    async def call(self, arguments):
        raise RuntimeError("the backend is down")


def test_128_concurrent_calls_return_in_order_and_failures_are_observations():
    sleepy = Sleepy()
    env = LocalEnv([sleepy, Broken()], timeout_s=5)
    calls = [Action("tool_call", name="broken", arguments={}) if i % 16 == 5 else
             Action("invalid", error=INVALID_TOOL_CALL) if i == 77 else
             Action("tool_call", name="sleepy", arguments={"i": i}) for i in range(128)]
    t0 = time.perf_counter()
    obs = asyncio.run(call_tools(env, calls, key="ep/0"))
    elapsed = time.perf_counter() - t0
    assert len(obs) == 128 and sleepy.peak > 64  # concurrent, not one after another (128 x 25 ms mean)
    assert elapsed < 1.5
    for i, o in enumerate(obs):
        if i % 16 == 5:
            assert o.error and "broken" in o.text and "the backend is down" in o.text
        elif i == 77:
            assert o.error and o.text == INVALID_TOOL_CALL
        else:
            assert not o.error and o.text == f"result {i}"
    merged = merge_observations(calls, obs)
    positions = [merged.text.index(f"result {i}\n") if i < 127 else merged.text.index("result 127")
                 for i in range(128) if i % 16 != 5 and i != 77]
    assert positions == sorted(positions) and merged.metadata["errors"] == 8 + 1 and not merged.error
    # the episode's remaining budget: calls past it are not run
    capped = asyncio.run(call_tools(env, calls[:4], allowed=2))
    assert [o.error for o in capped] == [False, False, True, True] and "limit" in capped[2].text


def test_parallel_grammar():
    fmt, one = ParallelReActFormat(), ReActFormat()
    call = '<tool_call>{"name": "ocr", "arguments": {"image_url": "image://q-1"}}</tool_call>'
    text = f"<think>x</think>{call}\n<tool_call>not json</tool_call>\n{call.replace('ocr', 'visit')}"
    a = fmt.parse(text)
    assert a.kind == "tool_call" and [c.kind for c in a.calls] == ["tool_call", "invalid", "tool_call"]
    assert [c.name for c in a.calls] == ["ocr", None, "visit"]
    single = f"<think>x</think>{call}"
    assert fmt.parse(single) == one.parse(single) and not fmt.parse(single).calls
    assert fmt.parse("<think>x</think><answer>Zatrea</answer>" + call).kind == "answer"
    assert fmt.parse("no tags").kind == "none" and fmt.stop_tokens == ()
    quoted = '<tool_call>{"name": "search", "arguments": {"query": ["what does <answer>x</answer> mean"]}}</tool_call>'
    assert fmt.parse(quoted) == one.parse(quoted) and fmt.parse(quoted).kind == "tool_call"  # an answer inside JSON
    cut = fmt.parse(call + "<answer>A</answer>" + call)  # a call after an answer (outside any call) is not read
    assert cut.kind == "tool_call" and cut.name == "ocr" and not cut.calls
    assert len(fmt.parse(call * 300).calls) == ParallelReActFormat.max_calls
    pieces = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<tool_response>", "<think>", "{", "}", "[",
              '"name"', '"arguments"', ":", ",", '"ocr"', "\ud800", "1e999", "[" * 3000, "x"]
    rng = random.Random(0)
    for _ in range(300):  # whatever the model writes: an action, never an exception
        a = fmt.parse("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
        assert a.kind in ("answer", "tool_call", "invalid", "none")
        assert all(c.kind in ("tool_call", "invalid") for c in a.calls)


# --- the tools -------------------------------------------------------------------------------------


def test_vl_search_image_finds_the_entity_of_every_question_image(world, images):
    tool = build_tools({"VLSearchImage": {"kind": "vl_search_image", "top_k": 3}}, {"world_images": images})[0]
    assert tool.schema["name"] == "VLSearchImage"
    found = 0
    for eid in world.entities:
        obs = asyncio.run(tool.call({"image_urls": [images.question_image_url(eid, 1)]}))
        found += obs.metadata["entities"][0][0] == eid
        assert len(obs.images) == 3 and f"{images.base_url}/wiki/" in obs.text
    assert found == len(world.entities)  # measured: 60 / 60 in the tiny world, 95.8 % in the small one
    bad = asyncio.run(tool.call({"image_urls": ["image://q-unknown"]}))
    assert bad.error and "no image at" in bad.text


def test_webwatcher_spec_builds_with_its_argument_names(world):
    spec = {"web_search": {"top_k": 2}, "code_interpreter": {"timeout_s": 5}}
    validate_tools(spec)
    with pytest.raises(ValueError, match="code_interpreter"):
        validate_tools({"code_interpreter": {"timeout_s": "soon"}})
    from envs.world import SearchIndex

    context = {"world": world, "index": SearchIndex.from_world(world, "http://w"), "base_url": "http://w"}
    search = build_tools({"web_search": {"top_k": 2}}, context)[0]
    assert list(search.schema["parameters"]["properties"]) == ["queries"]
    name = next(iter(world.entities.values())).name
    obs = asyncio.run(LocalEnv([search]).call("web_search", {"queries": [name, "zzzz"]}))
    assert not obs.error and name in obs.text and obs.metadata["tool"] == "web_search"
    # the inner name next to the checked outer one would win unchecked: refused, naming the model's own names
    obs = asyncio.run(search.call({"queries": [name], "query": [1, 2]}))
    assert obs.error and "web_search has no argument 'query'; its arguments: ['queries']" in obs.text
    # the EnvServer limits code_interpreter as the python sandbox it is: never retried, server timeout above its own
    from envs.server import default_limits

    code = build_tools({"code_interpreter": {"timeout_s": 5}}, {})[0]
    assert list(code.schema["parameters"]["properties"]) == ["code"]
    limits = default_limits("code_interpreter", code)
    assert limits.retries == 0 and limits.timeout_s == 15 and default_limits("web_search").cache


def test_ocr_reads_the_rendered_gold(world, images):
    pytest.importorskip("rapidocr_onnxruntime", reason="no OCR engine installed: the ocr tool refuses to start")
    from envs.visual.pages import page_image, render_pages

    tool = build_tools({"ocr": {}}, {"world_images": images})[0]
    eid = sorted(world.entities)[0]  # the caption plate of a question image: the entity's name, exactly
    obs = asyncio.run(tool.call({"image_url": images.question_image_url(eid)}))
    assert world.entities[eid].name in obs.text.splitlines()[1:], obs.text
    # a document page's heading and first paragraph (the top of the page: OCR costs seconds per page here)
    page = next(p for p in render_pages(world) if p.kind == "document")
    lines = tool.read(page_image(page).crop((0, 0, page.size[0], 650)))
    read = " ".join(t for t, _ in lines).split()
    gold = (page.title + " " + page.passages[0]).split()
    recall = sum(w in read for w in gold) / len(gold)
    assert recall >= 0.9, (recall, gold, read)  # whole document pages: 0.91-0.94 (words run together)
    # at exit the process's engine is dropped while the interpreter is whole; a later call loads a new one
    from envs.visual import webwatcher

    first = webwatcher.ocr_engine()
    webwatcher.release_ocr_engine()
    assert webwatcher._ENGINE is None and webwatcher.ocr_engine() is not first


# --- item 37: the builder and the released format -------------------------------------------------------


def test_bcvl_items_have_an_image_and_a_level_and_level2_names_nothing(world, images):
    items = browsecomp_vl(world, 60, seed=3, images=images)
    assert len(items) == 60 and {it["level"] for it in items} == {1, 2}
    for it in items:
        assert images.image(it["image_url"]).size[0] > 0 and it["image_entity"] == it["path"][0]
        assert it["answer"] == world.entities[it["path"][-1]].name and len(it["hops"]) >= 2
        hidden = it["path"] if it["level"] == 2 else it["path"][1:]
        assert not name_leaks(world, it["question"], hidden), it["question"]
        if it["level"] == 1:
            assert world.entities[it["path"][0]].name in it["question"]
        for s, r, o in it["hops"]:  # each hop has one answer: the walk's question is unique
            kind = world.entities[o].kind
            assert [x for x in world.objects(s, r) if world.entities[x].kind == kind] == [o]
    assert browsecomp_vl(world, 60, seed=3, images=images) == items


def test_bcvl_released_format_round_trip_and_bad_rows(world, images, tmp_path):
    items = browsecomp_vl(world, 6, seed=1, images=images)
    files = write_bcvl(items, tmp_path, images)
    assert [f.name for f in files] == ["bc_vl_level1.jsonl", "bc_vl_level2.jsonl"]
    row = json.loads(files[0].read_text().splitlines()[0])
    assert set(row) == {"question", "image_path", "answers", "domain"} and isinstance(row["answers"], str)
    loaded = load_bcvl(files[0]) + load_bcvl(files[1])
    assert sorted(t["question"] for t in loaded) == sorted(it["question"] for it in items)
    assert all(t["level"] in (1, 2) and t["answer"] == [next(i["answer"] for i in items
                                                             if i["question"] == t["question"])] for t in loaded)
    assert parse_answers('["a", "b"]', "x") == ["a", "b"] and parse_answers("['1999']", "x") == ["1999"]
    bad = tmp_path / "bad.jsonl"
    for line, field in (('{"question": "q", "image_path": "images/none.png", "answers": "[\'a\']"}', "image_path"),
                        ('{"question": "q", "answers": "[\'a\']"}', "'image_path'"),
                        ('{"question": "q", "image_path": "%s", "answers": "[oops"}' % row["image_path"], "answers")):
        bad.write_text(row_line := json.dumps(row) + "\n" + line + "\n")
        assert row_line
        with pytest.raises(ValueError, match=rf"bad.jsonl, line 2: .*{field}"):
            load_bcvl(bad)


def test_an_ocr_read_behind_a_hung_one_fails_with_a_message_instead_of_waiting_forever(world, images, monkeypatch):
    import threading

    from envs.visual import webwatcher

    release = threading.Event()

    def hung_engine(array):
        release.wait(30)
        return [], None

    monkeypatch.setattr(webwatcher, "SLOT_TIMEOUT_S", 0.3)
    tool = webwatcher.OCRTool(images, hung_engine, max_concurrency=1)
    img = images.image(images.picture_url(next(iter(world.entities))))
    first = threading.Thread(target=tool.read, args=(img,))
    first.start()
    time.sleep(0.1)
    with pytest.raises(TimeoutError, match=r"ocr: no free OCR slot within 0s \(max_concurrency 1"):
        tool.read(img)
    release.set()
    first.join(5)
    assert tool.read(img) == []  # the slot is free again
