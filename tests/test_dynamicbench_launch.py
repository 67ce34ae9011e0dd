"""launch/dynamicbench.py: a table per setting from a small corpus; writer and grader settings that nothing reads are
refused; a failed call (an endpoint that is down, a model that writes no readable plan) is recorded on its report,
never raised; the `engine` backend serves writer and grader from one engine of the project's own; the writer as
an agent (`writer.mode: agent`) runs one episode per report through the agent loop."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest

from launch.common import ROOT
from launch.dynamicbench import EngineChats, LLMSection, load, main, run_bench

CONFIG = ROOT / "launch/configs/dynamicbench/dynamicbench.yaml"
SUBJECTS = {
    "Ada Lovelace": "Ada Lovelace was born in 1815 in London. She worked with Charles Babbage. She wrote the first "
                    "program for the Analytical Engine. She died in 1852.",
    "Marie Curie": "Marie Curie was born in 1867 in Warsaw. She studied in Paris. She won the Nobel Prize twice. "
                   "She discovered polonium and radium.",
    "Alan Turing": "Alan Turing was born in 1912 in London. He studied at Cambridge. He designed the Bombe at "
                   "Bletchley Park. He proposed the Turing test in 1950.",
    "Grace Hopper": "Grace Hopper was born in 1906 in New York. She worked on the Harvard Mark I. She led the team "
                    "behind COBOL. She retired from the Navy in 1986.",
}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "leads.json"
    path.write_text(json.dumps({t: {"title": t, "extract": x} for t, x in SUBJECTS.items()}))
    return [f"corpus.path={path}", "corpus.subjects=2", "corpus.store_docs=4", "corpus.web_search=false",
            "writer.k_web=0", "writer.sections=2"]


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_scripted_run_writes_a_table_per_setting(tmp_path, corpus):
    assert main(["--config", str(CONFIG), f"run_dir={tmp_path / 'run'}", *corpus]) == 0
    results = json.loads((tmp_path / "run/results.json").read_text())
    table = results["table"]
    assert set(table) == {"without_doc", "with_doc"} and all(t["graded"] == 2 for t in table.values())
    assert table["with_doc"]["accuracy"] > table["without_doc"]["accuracy"]
    assert "| with_doc | 2 | 2 | 0 | 0 |" in (tmp_path / "run/report.md").read_text()


@pytest.mark.parametrize("overrides, named", [
    (["writer.engine=hf"], "'writer.engine' (from the command line) would be read by nothing in this run, so it would "
                           "be silently ignored: writer.backend is scripted"),
    (["grader.max_tokens=64"], "'grader.max_tokens' (from the command line) would be read by nothing"),
    (["writer.backend=engine"], "bad value for 'writer.backend' (from the command line): engine needs writer.model"),
    (["writer.backend=engine", "writer.model=x", "writer.base_url=http://h/v1"], "'writer.base_url' (from the "
                                                                                 "command line) would be read"),
    (["writer.backend=openai", "writer.model=x", "writer.base_url=http://h/v1", "writer.max_model_len=99"],
     "'writer.max_model_len' (from the command line) would be read by nothing in this run, so it would be silently "
     "ignored: writer.backend is openai"),
    (["grader.backend=engine", "grader.model=x", "grader.max_tokens=0"],
     "bad value for 'grader.max_tokens' (from the command line): Expected `int` >= 1"),
    (["writer.mode=agent", "writer.backend=openai", "writer.model=x", "writer.base_url=http://h/v1"],
     "writer.mode' (from the command line): agent runs the writer through the agent loop on an engine"),
    (["writer.mode=agent", "writer.queries_per_section=3"], "'writer.queries_per_section' (from the command line) "
                                                            "would be read by nothing"),
    (["writer.max_tool_calls=3"], "would be read by nothing in this run, so it would be silently ignored: "
                                  "writer.mode is chain"),
    (["writer.mode=agent", "writer.max_tool_calls=0"], "bad value for 'writer.max_tool_calls' (from the command "
                                                       "line): Expected `int` >= 1"),
])
def test_settings_nothing_reads_or_out_of_range_are_refused(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load(CONFIG, overrides, smoke=False)


def test_the_writer_as_an_agent_searches_through_the_agent_loop(tmp_path, corpus):
    """writer.mode=agent: one episode per report; with documents it calls `search` once and its sections are the
    blocks the search returned (the subject's own first), without documents it has no tool; every episode's row is
    in trajectories/writer.parquet."""
    import pyarrow.parquet as pq

    assert main(["--config", str(CONFIG), f"run_dir={tmp_path / 'run'}", *corpus, "writer.mode=agent"]) == 0
    results = json.loads((tmp_path / "run/results.json").read_text())
    items = {(r["setting"], r["subject"]): r for r in results["items"]}
    assert len(items) == 4 and all(r["writer_ok"] and r["plan"] == ["Overview", "Key facts"] for r in items.values())
    for (setting, subject), r in items.items():
        shown = r["evidence"].get("search", [])
        assert (shown[:1] == [f"local:{subject.replace(' ', '_')}#0"]) if setting == "with_doc" else shown == []
    rows = pq.read_table(tmp_path / "run/trajectories/writer.parquet").to_pylist()
    assert sorted((r["uid"].split("/")[0], r["finish"], r["num_tool_calls"]) for r in rows) == \
        [("with_doc", "answer", 1)] * 2 + [("without_doc", "answer", 0)] * 2
    table = results["table"]
    assert table["with_doc"]["accuracy"] > table["without_doc"]["accuracy"]
    assert "as an agent: one episode per report" in (tmp_path / "run/report.md").read_text()


def test_an_agent_episode_that_never_answers_is_the_reports_recorded_failure(corpus):
    """A policy that only ever searches runs out of tool calls: the report fails with the episode's finish."""
    from envs.dynamicbench import ReportStore
    from launch.dynamicbench import AgentWriter
    from rollout.scripted import TextPolicyEngine

    cfg = load(CONFIG, corpus + ["writer.mode=agent", "writer.max_tool_calls=2"], smoke=False)
    store = ReportStore.from_documents([(t, t, x) for t, x in SUBJECTS.items()])
    writer = AgentWriter(cfg.writer, store, None)
    call = '<tool_call>\n{"name": "search", "arguments": {"query": ["Ada"]}}\n</tool_call>'
    writer.engine = TextPolicyEngine(lambda observation: call, writer.tok)
    report = asyncio.run(writer.write("Ada Lovelace", with_docs=True))
    assert not report.ok and report.text == "" and len(writer.records) == 1
    assert report.error.startswith(f"the writer's episode ended with finish {writer.records[0].finish!r} after 2 tool")


def test_a_failed_call_is_recorded_on_its_report_not_raised(tmp_path, corpus):
    """Writer and grader on an endpoint that is down: every report fails with the call's error, the run ends."""
    url = closed_port_url()
    down = [f"{who}.{k}={v}" for who in ("writer", "grader")
            for k, v in (("backend", "openai"), ("base_url", url), ("model", "m"), ("timeout_s", 5))]
    cfg = load(CONFIG, corpus + down, smoke=False)
    results = asyncio.run(run_bench(cfg, tmp_path))
    items = results["items"]
    assert len(items) == 4 and not any(r["writer_ok"] or r["grade_ok"] for r in items)
    assert all(r["writer_error"].startswith("writer call failed (plan)") and url in r["writer_error"] for r in items)
    assert all(r["grade_error"].startswith("probe extraction failed") for r in items)
    assert all(t["writer_failures"] == 2 and t["graded"] == 0 for t in results["table"].values())


@pytest.mark.slow
def test_engine_backend_shares_one_engine_and_records_unreadable_replies(tmp_path, tiny_model, corpus):
    """The tiny random model on the HF engine as writer and grader: one engine for both; a reply is decoded text;
    a prompt longer than max_model_len is refused with the numbers; the run records the random model's
    unreadable plans and probe lists as failures and ends."""
    section = LLMSection(backend="engine", model=tiny_model, engine="hf", max_tokens=8, max_model_len=256)

    async def direct():
        chats = EngineChats()
        try:
            writer, grader = chats.ask(section, "writer"), chats.ask(section, "grader")
            reply = await writer([{"role": "user", "content": "TASK: plan"}])
            with pytest.raises(ValueError, match="exceed max_model_len 256"):
                await grader([{"role": "user", "content": "word " * 400}])
            return len(chats.engines), reply
        finally:
            await chats.close()

    engines, reply = asyncio.run(direct())
    assert engines == 1 and isinstance(reply, str)
    on_engine = [f"{who}.{k}={v}" for who in ("writer", "grader") for k, v in
                 (("backend", "engine"), ("model", tiny_model), ("engine", "hf"), ("max_tokens", 8))]
    assert main(["--config", str(CONFIG), f"run_dir={tmp_path / 'run'}", *corpus, *on_engine]) == 0
    items = json.loads((tmp_path / "run/results.json").read_text())["items"]
    assert len(items) == 4
    assert all(r["writer_ok"] or r["writer_error"].startswith("no readable section plan in 3 replies; last: ")
               for r in items)
    assert all(r["grade_ok"] or r["grade_error"] for r in items)
    assert "engine hf" in (tmp_path / "run/report.md").read_text()
    # the same model as an agent writer (max_model_len bounds its episode): it runs, whatever it writes
    assert main(["--config", str(CONFIG), f"run_dir={tmp_path / 'agent'}", *corpus, *on_engine, "writer.mode=agent",
                 "writer.max_model_len=1024"]) == 0
    items = json.loads((tmp_path / "agent/results.json").read_text())["items"]
    assert len(items) == 4 and all(r["writer_ok"] or r["writer_error"].startswith("the writer's episode ended")
                                   for r in items)
