"""WebShaper (SEEDS 8): formalization-driven synthesis, then the WebSailor-style training stages.

    python launch/webshaper.py [--config FILE] [--smoke] [key.path=value ...]

The story (on one set of Ray actor groups, the stages of launch/stages.py):
  synthesize on the world (envs/webshaper/): seed tasks (1-hop formal questions whose answer the solver finds
     unique) -> data.shaper_layers layer-wise expansions by the Expander (data.shaper_expander: programmatic
     over the graph, or agentic: a ReAct agent with search / summarize / validate tools run through the
     agent loop, scripted offline or an LLM), each validated or rolled back -> questions written from the
     formalizations (templates, or an LLM by data.shaper_writer) -> expert / RL / held-out splits, written in
     the released format (data/webshaper_<split>.jsonl: id, question, answer, formalization, urls)
  -> expert trajectories (the world's scripted expert, envs/world/expert.py, through the policy's agent loop)
  -> RFT filter -> SFT (observations masked) -> RL -> evaluation on held-out WebShaper questions before and
     after each stage, plots and report.md (with the synthesis's counts).
`pipeline.stages` chooses the steps (default: expert eval_base sft eval_sft rl eval_rl).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/webshaper.py` from a checkout
    sys.path.insert(0, str(ROOT))

from launch.common import main  # noqa: E402
from launch.websailor import check_stages as websailor_stages  # noqa: E402

LLM_KEYS = {"base_url", "model", "api_key_env", "timeout_s"}


# --- configuration --------------------------------------------------------------------------------


def check_stages(cfg) -> str | None:
    """WebShaper's settings, said before anything starts (None if fine)."""
    d = cfg.data
    if d.task != "world_qa":
        return f"data.task={d.task!r}: WebShaper synthesizes its questions on the world; use data.task=world_qa"
    if (d.qa_nodes, d.qa_anchor_rate, d.qa_one_page) != ((3, 6), 0.0, False):
        return "data.qa_nodes / qa_anchor_rate / qa_one_page shape SailorFog questions; WebShaper does not read them"
    wants_llm = d.shaper_expander == "agentic_llm" or d.shaper_writer == "llm"
    if wants_llm and not d.shaper_llm:
        return "data.shaper_expander=agentic_llm and data.shaper_writer=llm need data.shaper_llm: {base_url, model}"
    if d.shaper_llm and not wants_llm:
        return ("data.shaper_llm would be read by nothing in this run: set data.shaper_expander=agentic_llm or "
                "data.shaper_writer=llm")
    if d.shaper_llm:
        unknown = sorted(set(d.shaper_llm) - LLM_KEYS)
        if unknown or not {"base_url", "model"} <= set(d.shaper_llm):
            return f"data.shaper_llm: keys {sorted(LLM_KEYS)} ('base_url' and 'model' required); unknown: {unknown}"
    return websailor_stages(cfg)


def chat_client(cfg, service: str):
    from envs.llm import ChatClient, api_key_from_env

    spec = cfg.data.shaper_llm
    return ChatClient(spec["base_url"], spec["model"], timeout_s=float(spec.get("timeout_s", 60.0)), service=service,
                      api_key=api_key_from_env(spec.get("api_key_env"), f"data.shaper_llm ({service})"))


def model_path(cfg) -> str:
    """The policy's folder: the agentic Expander runs in the policy's agent loop, chat template and tokenizer
    included, before the actor groups start."""
    from rl.groups import resolve_model_path

    return resolve_model_path(cfg)


# --- the Expander through the agent loop -----------------------------------------------------------


def agentic_expander(cfg, world, stats: Counter):
    """`expand_fn(world, task, rng) -> task | None`: one layer by the agentic Expander, one agent-loop episode
    (rollout/agent.py run_episode) with the search / summarize / validate tools in process."""
    from transformers import AutoTokenizer

    from envs.base import LocalEnv
    from envs.webshaper.agentic import ChatPolicy, ScriptedExpander, expander_tools, instruction, layer_result
    from envs.world import SearchIndex
    from rollout.agent import AgentConfig, run_episode
    from rollout.engines import SamplingParams
    from rollout.scripted import TextPolicyEngine
    from rollout.worker import agent_template

    tok = AutoTokenizer.from_pretrained(model_path(cfg))
    index = SearchIndex.from_world(world, "")
    client = chat_client(cfg, "webshaper expander") if cfg.data.shaper_expander == "agentic_llm" else None
    agent = AgentConfig(max_tool_calls=64, max_turns=96, max_context_tokens=200_000, max_tokens_per_turn=4096)
    sampling = SamplingParams(max_tokens=4096)
    schemas = LocalEnv(expander_tools(world, "", index)).tool_schemas()  # same tools for every task
    template, fmt = agent_template(tok, schemas, "react")

    def layer(world, task, rng):
        env = LocalEnv(expander_tools(world, task.answer_entity, index))
        policy = ScriptedExpander(task) if client is None else ChatPolicy(client, task)
        stats["expander/episodes"] += 1
        ep = asyncio.run(run_episode(TextPolicyEngine(policy.next_turn, tok), env, template,
                                     {"uid": f"expand-{stats['expander/episodes']}", "group": 0,
                                      "question": instruction(task)}, sampling, agent, fmt))
        stats["expander/tool_calls"] += ep.record.num_tool_calls
        stats["expander/validate_calls"] += env.calls.get("validate", 0)
        out = layer_result(world, task, ep.record.answer_text)
        if out is None:
            task.rollbacks += 1
        return out

    return layer


# --- data -----------------------------------------------------------------------------------------


def synthesize(cfg, run_dir: Path) -> dict:
    """WebShaper tasks on the world, split into disjoint expert (SFT), RL and held-out questions; written to
    run_dir/data/<split>.jsonl (all fields) and run_dir/data/webshaper_<split>.jsonl (the released format)."""
    from envs.webshaper.expand import check_row, expand, expand_layer, seed_task, shaper_item
    from envs.webshaper.formal import write_rows
    from envs.webshaper.render import llm_question, template_question
    from envs.world import generate_world

    t0 = time.perf_counter()
    d = cfg.data
    world = generate_world(seed=cfg.env.world_seed, size=cfg.env.world_size)
    wanted = cfg.sft.expert_tasks + d.num_tasks + cfg.eval.num_tasks
    stats: Counter = Counter()
    expand_fn = expand_layer if d.shaper_expander == "programmatic" else agentic_expander(cfg, world, stats)
    writer = chat_client(cfg, "webshaper writer") if d.shaper_writer == "llm" else None
    rng = random.Random(f"webshaper:{cfg.run.seed}")
    items, questions = [], set()
    for _ in range(40 * wanted):
        if len(items) >= wanted:
            break
        stats["seeds/drawn"] += 1
        seed = seed_task(world, rng)
        if seed is None:
            stats["seeds/ambiguous"] += 1
            continue
        task = expand(world, seed, d.shaper_layers, rng, expand_fn)
        stats["layers/rolled_back"] += task.rollbacks
        if task.layers < d.shaper_layers:
            stats["tasks/short"] += 1  # a layer was rolled back: the task is not as deep as asked
            continue
        kinds = {str(t): world.entities[e].kind for t, e in task.truth.items()}
        question = template_question(task.formalization, kinds)
        if writer is not None:
            hidden = [world.entities[e].name for t, e in task.truth.items() if not t.is_const]
            question, why = asyncio.run(llm_question(task.formalization, question, hidden, writer))
            stats["writer/kept_template"] += why is not None
        if question in questions:
            stats["tasks/duplicate"] += 1
            continue
        questions.add(question)
        answer = task.answer_text(world)
        uid = "webshaper-" + hashlib.sha1((question + "\n" + answer).encode()).hexdigest()[:12]
        item = shaper_item(world, task, question, uid)
        problems = check_row(world, item)
        if problems:  # the serialised row must say what the task says: a bug if not
            raise RuntimeError(f"synthesized row {uid} does not check from its serialised form: {problems}")
        items.append(item)
    if len(items) < wanted:
        raise ValueError(f"the {cfg.env.world_size} world (seed {cfg.env.world_seed}) yielded {len(items)} WebShaper "
                         f"tasks of {d.shaper_layers} layers, fewer than sft.expert_tasks + data.num_tasks + "
                         f"eval.num_tasks = {wanted}; use a larger env.world_size, fewer layers or fewer tasks")
    a, b = cfg.sft.expert_tasks, cfg.sft.expert_tasks + d.num_tasks
    split = {"expert": items[:a], "rl": items[a:b], "heldout": items[b:wanted]}
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in split.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_rows(folder / f"webshaper_{name}.jsonl", rows)
    synthesis = {
        "expander": d.shaper_expander, "writer": d.shaper_writer, "layers": d.shaper_layers, "tasks": len(items),
        **dict(sorted(stats.items())),
        "hops": dict(sorted(Counter(it["hops"] for it in items).items())),
        "items_per_task": round(sum(len(it["formalization"]) for it in items) / len(items), 2),
        "attribute_questions": sum(it["asked"] is not None for it in items),
        "seconds": round(time.perf_counter() - t0, 1),
        "example": {k: items[0][k] for k in ("question", "answer", "formalization", "expression")},
    }
    print(f"synthesized {len(items)} WebShaper tasks: {json.dumps({k: v for k, v in synthesis.items() if k != 'example'})}",
          flush=True)
    return {"world": world, **split, "synthesis": synthesis}


# --- the story ------------------------------------------------------------------------------------


def pipeline(cfg, run_dir: Path) -> dict:
    from launch import stages as st

    data = synthesize(cfg, run_dir)
    return st.run_pipeline(cfg, run_dir, data, st.rft_expert(cfg, data, run_dir),
                           results={"synthesis": data["synthesis"]})


def extend_report(run_dir: Path, results: dict) -> None:
    """The synthesis section `launch.stages.report` does not write (also added to results.json)."""
    s = results["synthesis"]
    ex = s["example"]
    lines = ["", "## WebShaper synthesis (SEEDS 8.2)", "",
             f"- Expander: {s['expander']}; writer: {s['writer']}; layers per task: {s['layers']}",
             f"- tasks kept: {s['tasks']} from {s.get('seeds/drawn', 0)} seeds drawn "
             f"({s.get('seeds/ambiguous', 0)} seeds ambiguous, {s.get('tasks/short', 0)} tasks with a layer "
             f"rolled back, {s.get('tasks/duplicate', 0)} duplicate questions); layers or sub-task options "
             f"rolled back: {s.get('layers/rolled_back', 0)}",
             f"- hops (target to the deepest constant): {s['hops']}; items per task: {s['items_per_task']}; "
             f"attribute questions: {s['attribute_questions']}; synthesis took {s['seconds']} s"]
    if "expander/episodes" in s:
        lines.append(f"- agentic Expander: {s['expander/episodes']} agent-loop episodes, "
                     f"{s.get('expander/tool_calls', 0)} tool calls ({s.get('expander/validate_calls', 0)} validate)")
    lines += ["", "Example (data/webshaper_expert.jsonl, the released format):", "",
              f"- question: {ex['question']}", f"- answer: {ex['answer']}",
              f"- formalization: `{json.dumps(ex['formalization'], ensure_ascii=False)}`",
              f"- as a set expression: {ex['expression']}", ""]
    with (run_dir / "report.md").open("a") as f:
        f.write("\n".join(lines))
    path = run_dir / "results.json"
    saved = json.loads(path.read_text())
    saved["synthesis"] = s
    path.write_text(json.dumps(saved, indent=1, ensure_ascii=False))


def run(argv: list[str]) -> int:
    return main(recipe="webshaper", default_config=ROOT / "launch/configs/webshaper.yaml", argv=argv,
                pipeline=pipeline, check=check_stages, extend=extend_report)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
