"""RAMP task generation (SEEDS 7.1): the k rule, span choice, the masked paragraph, determinism, sources."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from envs.world import generate_world
from envs.world.ramp import (
    INSTRUCTION,
    MASK,
    Page,
    choose_spans,
    corpus_pages,
    num_masks,
    ramp_item,
    ramp_tasks,
    rule_spans,
    world_pages,
)


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0, size="small")


@pytest.fixture(scope="module")
def tasks(world):
    return ramp_tasks(world_pages(world, 3), seed=0)


def test_instruction_is_the_rewards():
    from reward.fns import MASKSEARCH_INSTRUCTION

    assert INSTRUCTION == MASKSEARCH_INSTRUCTION


def test_k_rule_exact():
    rng = random.Random(0)
    draws = {n: Counter(num_masks(n, rng) for _ in range(400)) for n in range(8)}
    assert set(draws[0]) == {0}
    assert set(draws[1]) == {1}
    assert set(draws[2]) == {1, 2} and min(draws[2].values()) > 150  # uniform over {1, 2}
    assert set(draws[3]) == {3}
    for n in (4, 5, 7):
        assert set(draws[n]) == {4}
    with pytest.raises(ValueError):
        num_masks(-1, rng)


def test_span_choice_weighted_by_length_numbers_max():
    rng = random.Random(1)
    entities = ["Alpha Beta Gamma Delta", "Epsilon", "1,234"]
    first = Counter()
    for _ in range(3000):
        first[choose_spans(entities, 1, rng)[0]] += 1
    # weights 4, 1, 4 (purely numeric: the maximum)
    assert first["Epsilon"] / 3000 == pytest.approx(1 / 9, abs=0.03)
    assert first["1,234"] / 3000 == pytest.approx(4 / 9, abs=0.04)
    # with replacement, then de-duplicated: never more than k, never repeated
    for _ in range(200):
        chosen = choose_spans(entities, 3, rng)
        assert 1 <= len(chosen) <= 3 and len(set(chosen)) == len(chosen)


def _template(item):
    assert item["question"].endswith(INSTRUCTION)
    return item["question"][: -len(INSTRUCTION)]


def test_world_tasks_follow_the_rules(world, tasks):
    assert len(tasks) > 400
    assert {t["mask_num"] for t in tasks} == {1, 2, 3, 4}
    for t in tasks:
        masked, answer = _template(t), t["answer"]
        assert not masked.startswith(MASK)
        assert masked.count(MASK) == t["mask_num"] == len(t["masks"]) >= 1
        n = len(t["entities"])  # the k rule on |E| (after the title and repeated spans went)
        assert (t["k"] == min(n, 4)) if n >= 3 else (1 <= t["k"] <= n)
        assert t["mask_num"] <= t["k"] and len(set(t["masks"])) == len(t["masks"])
        assert t["title"] in answer and t["title"] not in t["masks"]
        for span in t["masks"]:
            # the span occurred exactly once in the paragraph, and is gone from the masked one
            assert len(re.findall(rf"(?<!\w){re.escape(span)}(?!\w)", answer)) == 1, (span, answer)
            assert span in t["entities"]
        # filling the masks in order gives the paragraph back
        filled = masked
        for span in t["masks"]:
            filled = filled.replace(MASK, span, 1)
        assert filled == answer
        assert t["gold_ids"] and t["gold_ids"][0] in world.entities
    assert len({t["uid"] for t in tasks}) == len(tasks)


def test_title_prepended_when_absent():
    rng = random.Random(0)
    item = ramp_item("Its capital Vorlan Dask was founded in 1874 by Mira Tollen.", "Kestrel Republic", None, rng)
    assert item["answer"].startswith("Kestrel Republic: Its capital")
    assert set(item["entities"]) == {"Vorlan Dask", "1874", "Mira Tollen"} and item["mask_num"] >= 1
    present = ramp_item("The Kestrel Republic has 1874 lakes and Vorlan Dask.", "Kestrel Republic", None, rng)
    assert present["answer"] == "The Kestrel Republic has 1874 lakes and Vorlan Dask."


def test_repeated_spans_and_title_are_never_masked():
    rng = random.Random(0)
    text = "Vorlan Dask met Mira Tollen in 1874. Mira Tollen left Vorlan Dask in 1901 for Osk Harbor."
    for _ in range(50):
        item = ramp_item(text, "Vorlan Dask", None, rng)
        # Vorlan Dask is the title, Mira Tollen occurs twice: only 1874, 1901 and Osk Harbor remain
        assert set(item["entities"]) == {"1874", "1901", "Osk Harbor"}
        assert item["k"] == 3


def test_no_sample_starting_with_a_mask():
    rng = random.Random(0)
    outs = [ramp_item("Mira Tollen wrote it.", "Mira Tollen wrote it", ["Mira Tollen"], rng) for _ in range(5)]
    # the title is the paragraph, its only span is Mira Tollen at the start (the title is present: not prepended)
    assert outs == [None] * 5


def test_rule_spans():
    text = "The University of Osk hired Mira Tollen on 3 March 1901; 2,500 students and 12% of Vorlan Dask came."
    spans = rule_spans(text)
    assert spans[:3] == ["University of Osk", "Mira Tollen", "3 March 1901"]
    assert "2,500" in spans and "12%" in spans and "Vorlan Dask" in spans


def test_deterministic_by_seed(world, tasks):
    again = ramp_tasks(world_pages(world, 3), seed=0)
    assert json.dumps(again) == json.dumps(tasks)
    other = ramp_tasks(world_pages(world, 3), seed=1)
    assert json.dumps(other) != json.dumps(tasks)


def test_corpus_source_and_bad_rows(tmp_path):
    rows = [{"id": "p1", "title": "Kestrel Republic",
             "text": "Kestrel Republic was founded in 1874 by Mira Tollen.\n\n"
                     "Its capital is Vorlan Dask, home to 2,500 people."},
            {"title": "Osk Harbor", "text": "Osk Harbor trades with Vorlan Dask and the Tarn Isles since 1901."}]
    good = tmp_path / "corpus.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pages = corpus_pages(good)
    assert [p.title for p in pages] == ["Kestrel Republic", "Osk Harbor"] and len(pages[0].paragraphs) == 2
    items = ramp_tasks(pages, seed=0, source="corpus.jsonl")
    assert items and all(it["source"] == "corpus.jsonl" for it in items)
    assert len([it for it in items if it["title"] == "Kestrel Republic"]) == 1  # up to len-1 paragraphs per page

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"title": "No text"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 2 .*'text'"):
        corpus_pages(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl: row 2 is not valid JSON"):
        corpus_pages(broken)
    listed = tmp_path / "list.jsonl"
    listed.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"list\.jsonl: row 1 is a list"):
        corpus_pages(listed)
    marked = tmp_path / "bom.jsonl"  # a byte-order mark, and a line separator (U+2028) inside a row
    marked.write_bytes(b"\xef\xbb\xbf" + json.dumps(dict(rows[1], text="a\u2028b"), ensure_ascii=False).encode() + b"\n")
    assert [p.paragraphs for p in corpus_pages(marked)] == [("a b",)]  # one row (whitespace collapsed)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(rows[0]).encode() + b"\n" + '{"title": "Caf\u00e9", "text": "x"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.jsonl: row 2 is not UTF-8 text"):
        corpus_pages(latin)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"twice\.jsonl: row 2 repeats the id 'p1' of row 1"):
        corpus_pages(twice)


def test_page_without_known_spans_gives_nothing():
    page = Page("x", "Nothing Here", ("Nothing Here is a plain paragraph with no names at all.",),
                ((),))
    assert ramp_tasks([page]) == []
