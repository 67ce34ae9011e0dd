"""The agentic Expander (SEEDS 8.2 step 2): a ReAct agent that expands one layer of a formal task with
three tools, run through the policy's agent loop (`rollout/agent.py`, by `launch/webshaper.py`).

    search     {"query"}          BM25 over the world's pages: the pages that mention an entity
    summarize  {"entity"}         the facts of an entity's page as candidate items about a new variable
                                  (["V@new", "wrote", "C@Silent Vemra"]): what the Expander may say about it
    validate   {"formalization"}  the solver's verdict on a proposed formalization: VALID (the answer is
                                  still the one entity, no constant touches the target or another constant,
                                  no shortcut constant) or INVALID with the problems

`ScriptedExpander` is the offline policy: for each leaf constant it searches, summarizes, then proposes the
candidates one by one through `validate`, keeping the first VALID one (an INVALID one is rolled back); it
answers with the expanded formalization as JSON, or "none" when a constant has no valid sub-task (the layer
is rolled back). `ChatPolicy` puts an OpenAI-compatible model (`envs/llm.py`) in its place. Whatever the
policy answers, `layer_result` re-reads it and `expand.validate` checks it against the world before it is
kept: the agent's word is never trusted.

Never: import anything of the project outside `envs/`; raise into the agent loop (tool errors are
observations).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from dataclasses import replace

from envs.base import Observation, error_observation
from envs.webshaper.expand import ShaperTask, formal_problems, validate
from envs.webshaper.formal import Formalization, Item, Term, leaf_constants, parse_items, parse_term
from envs.world.graph import World
from envs.world.index import SearchIndex
from envs.world.pages import page_url

NEW = "V@new"  # the variable a summary's candidate items are about


class SearchTool:
    name = "search"
    schema = {"name": "search", "description": "Search the pages of the web for an entity.",
              "parameters": {"type": "object", "properties": {"query": {"type": "string", "minLength": 1}},
                             "required": ["query"]}}

    def __init__(self, index: SearchIndex, k: int = 3):
        self.index, self.k = index, k

    async def call(self, arguments: dict) -> Observation:
        hits = self.index.search(arguments["query"], k=self.k)
        if not hits:
            return Observation(f"No page matches {arguments['query']!r}.")
        return Observation("\n".join(f"{i}. {h.title} ({h.url})" for i, h in enumerate(hits, 1)))


class SummarizeTool:
    name = "summarize"
    schema = {"name": "summarize", "description": "The facts of an entity's page, as items about a new variable.",
              "parameters": {"type": "object", "properties": {"entity": {"type": "string", "minLength": 1}},
                             "required": ["entity"]}}

    def __init__(self, world: World):
        self.world = world
        self.by_name = {e.name: eid for eid, e in world.entities.items()}

    async def call(self, arguments: dict) -> Observation:
        eid = self.by_name.get(arguments["entity"].strip())
        if eid is None:
            return error_observation(f"Error: tool 'summarize': no page for entity {arguments['entity']!r:.80}")
        lines = [f"Facts of {page_url(eid)} about {NEW} (= {self.world.entities[eid].name}):"]
        for s, r, o in self.world.triples_of(eid):
            item = [NEW, r, f"C@{self.world.entities[o].name}"] if s == eid else \
                [f"C@{self.world.entities[s].name}", r, NEW]
            lines.append(json.dumps(item, ensure_ascii=False))
        return Observation("\n".join(lines))


class ValidateTool:
    name = "validate"
    schema = {"name": "validate", "description": "Check a proposed formalization: unique answer, no shortcut.",
              "parameters": {"type": "object", "properties": {"formalization": {"type": "array"}},
                             "required": ["formalization"]}}

    def __init__(self, world: World, answer_entity: str):
        self.world, self.answer_entity = world, answer_entity

    async def call(self, arguments: dict) -> Observation:
        f, skipped = parse_items(arguments["formalization"], "formalization")
        # the solver is CPU-bound (a bounded search on cyclic formalizations): off the event loop
        problems = skipped + await asyncio.to_thread(formal_problems, self.world, f, self.answer_entity, True)
        if problems:
            return Observation("INVALID\n" + "\n".join(problems[:5]))
        return Observation("VALID: the answer is unique and no constant touches the target or another constant.")


def expander_tools(world: World, answer_entity: str, index: SearchIndex) -> list:
    """The tools of one Expander episode (validate knows this task's answer entity)."""
    return [SearchTool(index), SummarizeTool(world), ValidateTool(world, answer_entity)]


def instruction(task: ShaperTask) -> str:
    """The Expander's task text: the formalization and what to do with its leaf constants."""
    leaves = ", ".join(str(c) for c in leaf_constants(task.formalization))
    return ("Expand this formal question by one layer. Replace each leaf constant (" + leaves + ") with a new "
            "variable and an item that pins it down; never join a constant to the target or to another "
            "constant; validate, and answer with the new formalization as JSON (or none).\n"
            + json.dumps(task.formalization.to_json(), ensure_ascii=False))


_CALL = "<think>\n{thought}\n</think>\n<tool_call>\n{call}\n</tool_call>"
_ITEM = re.compile(r'^\[".*"\]$')


class ScriptedExpander:
    """The offline ReAct policy of one Expander episode (module docstring); `next_turn(observation)`."""

    def __init__(self, task: ShaperTask, max_candidates: int = 8):
        self.current = task.formalization
        self.terms = {t.name.lower() for t in task.formalization.constants()}
        self.queue = list(leaf_constants(task.formalization))
        self.max_candidates = max_candidates
        self.next_var = 1 + max([int(t.name[1:]) for t in task.formalization.variables()
                                 if re.fullmatch(r"x\d+", t.name)] or [0])
        self.state, self.candidates, self.proposal = "search", [], None

    def _call(self, thought: str, name: str, arguments: dict) -> str:
        return _CALL.format(thought=thought, call=json.dumps({"name": name, "arguments": arguments},
                                                             ensure_ascii=False))

    def next_turn(self, observation: str | None) -> str:
        if self.state == "validate":  # the verdict on the last proposal
            if observation is not None and "VALID:" in observation:
                self.current, self.state = self.proposal, "search"
                self.terms |= {t.name.lower() for t in self.current.constants()}
                self.queue.pop(0)
                self.next_var += 1
            elif self.candidates:
                return self._propose("The check failed; I roll it back and try the next fact.")
            else:
                return "<think>\nNo fact of this entity passes the check; the layer is rolled back.\n</think>\n" \
                       "<answer>none</answer>"
        elif self.state == "summarize":
            self.candidates = [json.loads(line) for line in (observation or "").splitlines()
                               if _ITEM.match(line.strip())][:self.max_candidates]
            self.candidates = [c for c in self.candidates if not self._reuses(c)]
            if not self.candidates:
                return "<think>\nThe page gives no new fact to expand with.\n</think>\n<answer>none</answer>"
            return self._propose("I replace the constant with a variable pinned down by a fact of its page.")
        elif self.state == "read":
            self.state = "summarize"
            return self._call("I will summarize its page into facts.", "summarize", {"entity": self.queue[0].name})
        if not self.queue:
            return ("<think>\nEvery leaf constant is replaced and the check passed.\n</think>\n<answer>"
                    + json.dumps(self.current.to_json(), ensure_ascii=False) + "</answer>")
        self.state = "read"
        return self._call(f"I look for the page of {self.queue[0].name}.", "search", {"query": self.queue[0].name})

    def _reuses(self, candidate: list[str]) -> bool:
        other = candidate[2] if candidate[0] == NEW else candidate[0]
        name = other[2:].lower()
        return any(name in t or t in name for t in self.terms)

    def _propose(self, thought: str) -> str:
        candidate = self.candidates.pop(0)
        v = Term("var", f"x{self.next_var}")
        swap = lambda x: str(v) if x == NEW else x  # noqa: E731
        item = Item(parse_term(swap(candidate[0])), candidate[1], parse_term(swap(candidate[2])))
        self.proposal = self.current.replace(self.queue[0], v).with_items([item])
        self.state = "validate"  # the variable's name is reused until a proposal is kept
        return self._call(thought, "validate", {"formalization": self.proposal.to_json()})


def layer_result(world: World, task: ShaperTask, answer: str | None) -> ShaperTask | None:
    """The expanded task from the Expander's answer, or None (roll back) when it answered none, wrote no
    formalization, changed more than the leaf constants, or fails `validate` on the world."""
    if not answer or answer.strip().lower() == "none":
        return None
    f, problems = parse_items(answer.strip(), "expander answer")
    old = task.formalization
    if problems or len(f.items) <= len(old.items):
        return None
    truth = {t: e for t, e in task.truth.items()}
    by_name = {e.name: eid for eid, e in world.entities.items()}
    for before, after in zip(old.items, f.items):  # old items keep their place; a constant may become a variable
        if before.relation != after.relation:
            return None
        for b, a in ((before.subject, after.subject), (before.object, after.object)):
            if a != b:
                if not (b.is_const and a.is_var and a not in old.terms()):
                    return None
                truth[a] = task.truth[b]
                truth.pop(b, None)
    for t in f.terms():
        if t.is_const and t not in truth:
            if t.name not in by_name:
                return None
            truth[t] = by_name[t.name]
    truth = {t: e for t, e in truth.items() if t in set(f.terms())}
    new = replace(task, formalization=Formalization(list(f.items)), truth=truth)
    if any(t not in truth for t in f.terms() if not t.is_target or task.asked is None) or validate(world, new):
        return None
    return replace(new, layers=task.layers + 1, history=task.history + [f.to_json()])


class ChatPolicy:
    """An OpenAI-compatible model as the Expander's policy (`envs.llm.ChatClient`): the conversation so far
    in, the next assistant turn out. Synchronous, as `next_turn` is; each reply waits at most `timeout_s`."""

    def __init__(self, client, task: ShaperTask, timeout_s: float = 120.0):
        self.client, self.timeout_s = client, timeout_s
        self.messages = [{"role": "system", "content": "You expand formal questions. Tools: search, summarize, "
                          "validate; call one per turn as <tool_call>{\"name\": ..., \"arguments\": ...}"
                          "</tool_call>, answer inside <answer></answer>."},
                         {"role": "user", "content": instruction(task)}]

    def next_turn(self, observation: str | None) -> str:
        if observation is not None:
            self.messages.append({"role": "user", "content": observation})
        pool = concurrent.futures.ThreadPoolExecutor(1)  # its own event loop: next_turn is called in one
        try:
            reply = pool.submit(asyncio.run, self.client.complete(list(self.messages))).result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"webshaper expander: {self.client!r} gave no reply within "
                               f"{self.timeout_s:.0f}s") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a hung reply is not waited for on the way out
        self.messages.append({"role": "assistant", "content": reply})
        return reply
