"""DynamicBench (SEEDS 14 item 42): the local path returns the argmax-cosine block; the grader returns five integers
in [1, 10] or a recorded failure (an unreadable reply is asked again, never guessed); the report system runs with
and without documents."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from envs.dynamicbench import (METRICS, Block, ReportStore, ReportWriter, ScriptedWriter, cosine, grade_report,
                               parse_grade, scripted_grade_reply, scripted_probes)
from envs.dynamicbench.grader import Probe


class FixedEmbedder:
    """Known vectors, deliberately not unit norm: the store must divide by the norms itself."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def embed_documents(self, texts):
        return np.array([self.vectors[t.split("\n", 1)[1]] for t in texts])

    def embed_queries(self, texts):
        return np.array([self.vectors[t] for t in texts])


def test_local_path_returns_argmax_cosine_block():
    vecs = {"a": [10.0, 0.0, 0.0], "b": [1.0, 1.0, 0.0], "c": [0.0, 0.2, 0.1], "q": [1.0, 2.0, 0.0]}
    store = ReportStore([Block("d", "t", i, x) for i, x in enumerate("abc")], FixedEmbedder(vecs))
    sims = cosine(np.array([vecs[x] for x in "abc"]), np.array(vecs["q"]))
    best = [b.text for b, _ in store.search("q", 3)]
    assert best[0] == "abc"[int(np.argmax(sims))] == "b"  # the largest dot product ("a") is not the best cosine
    assert best == [("abc")[i] for i in np.argsort(-sims)]
    # with the offline hashing embedder, on words
    docs = [("r1", "Kubrick", "Stanley Kubrick directed films."), ("r2", "Paris", "Paris is the capital of France.")]
    top, score = ReportStore.from_documents(docs).search("capital of France", 1)[0]
    assert top.doc_id == "r2" and 0 < score <= 1


PROBES = [Probe("Who?", "Ada"), Probe("When?", "1843")]


def test_parse_grade_reads_exactly_or_not_at_all():
    good = {"probes": ["correct", "Cannot judge"], "accuracy": 7, "completeness": 5, "readability": 9,
            "applicability": 4, "length": 10}
    scores, verdicts = parse_grade("Here:\n" + json.dumps(good), 2)
    assert scores == {m: good[m] for m in METRICS} and verdicts == ["correct", "cannot judge"]
    for bad in ({**good, "accuracy": 7.5}, {**good, "length": 11}, {**good, "readability": "9"},
                {**good, "probes": ["correct"]}, {k: v for k, v in good.items() if k != "length"},
                {**good, "probes": ["maybe", "correct"]}, {**good, "accuracy": True}):
        assert parse_grade(json.dumps(bad), 2) is None, bad
    assert parse_grade("accuracy 7, completeness 5 ...", 2) is None


def test_grader_five_integers_or_recorded_failure():
    replies = iter(["I think it is good.", json.dumps({"probes": ["correct", "incorrect"], "accuracy": 6,
                                                       "completeness": 4, "readability": 8, "applicability": 5,
                                                       "length": 3})])

    async def ask(messages):
        assert "1. Q: Who? A: Ada" in messages[0]["content"]
        return next(replies)

    g = asyncio.run(grade_report("Ada wrote notes in 1842.", PROBES, ask, retries=2))
    assert g.ok and g.attempts == 2 and len(g.replies) == 2
    assert set(g.scores) == set(METRICS) and all(isinstance(v, int) and 1 <= v <= 10 for v in g.scores.values())

    async def never(messages):
        return "seven out of ten"

    f = asyncio.run(grade_report("r", PROBES, never, retries=1))
    assert not f.ok and f.scores == {} and f.attempts == 2 and f.replies == ["seven out of ten"] * 2
    assert "no readable grade" in f.error

    async def down(messages):
        raise ConnectionError("judge http://127.0.0.1:9/v1 unreachable")

    d = asyncio.run(grade_report("r", PROBES, down))
    assert not d.ok and "unreachable" in d.error


def test_scripted_grader_and_writer_with_and_without_documents():
    reference = "Ada Lovelace was born in 1815 in London. She wrote the first program for the Analytical Engine."
    probes = scripted_probes(reference, 3)
    assert [p.answer for p in probes] == ["1815", "Analytical Engine"]
    store = ReportStore.from_documents([("ada", "Ada Lovelace", reference),
                                        ("x", "Paris", "Paris is the capital of France.")])
    writer = ReportWriter(ScriptedWriter(), store=store, sections=2)
    with_docs, without = (asyncio.run(writer.write("Ada Lovelace", d)) for d in (True, False))
    assert with_docs.ok and with_docs.plan == ["Overview", "Key facts"] and with_docs.evidence["Overview"][0] == "ada#0"
    assert without.evidence == {} and "## Key facts" in without.text
    grades = [parse_grade(scripted_grade_reply(r.text, probes), len(probes))[0] for r in (with_docs, without)]
    assert grades[0]["accuracy"] > grades[1]["accuracy"]


def test_a_failed_call_or_retrieval_fails_the_report_with_its_step_never_raises():
    async def down_at_section(messages):
        if messages[-1]["content"].startswith("TASK: section"):
            raise ConnectionError("endpoint http://127.0.0.1:9/v1 refused")
        return await ScriptedWriter()(messages)

    class BrokenStore:
        def search(self, query, k):
            raise RuntimeError("embedder server gone")

    report = asyncio.run(ReportWriter(down_at_section, sections=2).write("Ada Lovelace", with_docs=False))
    assert not report.ok and report.plan == ["Overview", "Key facts"]
    assert report.error == ("writer call failed (section 'Overview'): ConnectionError: endpoint "
                            "http://127.0.0.1:9/v1 refused")
    report = asyncio.run(ReportWriter(ScriptedWriter(), store=BrokenStore(), sections=1).write("Ada", with_docs=True))
    assert not report.ok and report.error.startswith("retrieval failed (query 'Ada' of section 'Overview')")
    assert "embedder server gone" in report.error
