"""A scripted expert for the world's questions: it plans over the knowledge graph but acts only through
the tools (WebSailor's expert trajectories, SEEDS 3.3, on the synthetic world).

The expert knows the question's sub-graph (`task["subgraph"]`, `task["answer_entity"]`): it picks a
way in (the sub-graph entity that the question describes most specifically), searches for it with
words of the question, visits the pages on the sub-graph path from there to the answer, reading each
page through the `visit` tool, and answers with the name the answer page shows. When a search does not
surface the page it needs, it searches again by the entity's name (the plan's knowledge, used only to
phrase a query). Every fact it states comes from an observation; if a page or a search fails, it says
so and answers from what it has (such trajectories fail the RFT filter).

`next_turn(task, observations)` returns the text of the next assistant turn in the ReAct grammar
(SEEDS 3.6); `rollout/` turns this text policy into an engine so the real agent loop, templates and
tools produce the trajectory.

Never: import anything of the project outside `envs/world/`; answer with a fact no tool returned.
"""

from __future__ import annotations

import json
import re
from collections import deque

from envs.world.graph import World
from envs.world.pages import page_url

_URL = re.compile(r"\((https?://[^)\s]+/wiki/[^)\s]+)\)")
_STOP = {"a", "an", "the", "this", "that", "of", "in", "was", "is", "and", "by", "what", "which", "who", "name",
         "certain", "has", "with", "than", "more", "fewer", "people", "its", "their", "it", "to", "at", "as"}


def question_keywords(question: str, limit: int = 6) -> str:
    """The question's content words, most specific (longest) first: a search query."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9\-']+", question)
    seen, out = set(), []
    for w in sorted(words, key=len, reverse=True):
        lw = w.lower()
        if lw not in _STOP and lw not in seen:
            seen.add(lw)
            out.append(w)
    return " ".join(out[:limit])


def evidence_sentence(observation: str, answer: str) -> str | None:
    """The last sentence of an observation that states `answer` (a page's lead sentence, which names the
    page's entity and the related one), or None. Infobox lines ("Location X") are not sentences."""
    sentences = [s.strip() for line in observation.splitlines() for s in re.split(r"(?<=\.) (?=[A-Z0-9])", line)]
    found = [s for s in sentences if answer in s and s.endswith(".") and len(s) <= 200]
    return found[-1] if found else None


def plan_path(world: World, subgraph: list, start: str, goal: str) -> list[str]:
    """Entity ids from `start` to `goal` over the sub-graph's triples (either direction)."""
    adj: dict[str, set[str]] = {}
    for s, _, o in subgraph:
        adj.setdefault(s, set()).add(o)
        adj.setdefault(o, set()).add(s)
    prev, queue = {start: None}, deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            break
        for nxt in sorted(adj.get(node, ())):
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    if goal not in prev:
        return [goal]
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = prev[node]
    return path[::-1]


#: how much the expert's thoughts say (sft.expert_thoughts)
THOUGHTS = ("brief", "explicit")


class WorldExpert:
    """One instance per episode (it remembers its plan and where it is).

    thoughts: "brief" names the page it reads next, and quotes the page's sentence that gives the answer;
    "explicit" also restates the question and quotes the sentence of the page just read that leads on, before
    every step that follows a page (which link to follow, or the answer): the choice of a page's line is then
    made next to the question's words it depends on, in text the policy can copy."""

    def __init__(self, world: World, task: dict, base_url: str, thoughts: str = "brief"):
        if thoughts not in THOUGHTS:
            raise ValueError(f"expert thoughts must be one of {THOUGHTS}, got {thoughts!r}")
        self.thoughts = thoughts
        self.world, self.task, self.base_url = world, task, base_url.rstrip("/")
        answer = task["answer_entity"]
        nodes = sorted({x for s, _, o in task["subgraph"] for x in (s, o)})
        # the way in: an entity the question names (search its name), else the entity farthest from the
        # answer in the sub-graph (the question is built around it; search the question's words)
        paths = {n: plan_path(world, task["subgraph"], n, answer) for n in nodes}
        named = [n for n in nodes if n != answer and world.entity(n).name in task["question"]]
        self.named = named[0] if named else None
        self.start = self.named or (max(nodes, key=lambda n: (len(paths[n]), n)) if nodes else answer)
        self.path = paths.get(self.start, [answer])
        self.step = 0              # index into self.path of the page to visit next
        self.searched_name = False
        self.read: dict[str, str] = {}

    def url(self, entity_id: str) -> str:
        return self.base_url + page_url(entity_id)

    def _call(self, thought: str, name: str, arguments: dict) -> str:
        call = json.dumps({"name": name, "arguments": arguments})
        return f"<think>\n{thought}\n</think>\n<tool_call>\n{call}\n</tool_call>"

    def next_turn(self, observation: str | None) -> str:
        """The next assistant turn, given the last observation (None on the first turn)."""
        q = self.task["question"]
        self.last_observation = observation or ""
        if observation is None:
            if self.named:
                name = self.world.entity(self.named).name
                return self._call(f"The question names {name}. I will search for it.", "search", {"query": [name]})
            return self._call("I will search for the clues of the question.",
                              "search", {"query": [question_keywords(q)]})
        if self.read and str(self.task["answer"]) in observation:  # the page read last gives the answer
            return self._answer()
        if self.step == 0 and not self.read:  # after a search: is the way-in page among the results?
            target = self.url(self.start)
            if target in _URL.findall(observation) or self.searched_name:
                return self._visit(self.start)
            self.searched_name = True
            name = self.world.entity(self.start).name
            return self._call(f"No match yet. {name} fits the clues; I will search for it.", "search",
                              {"query": [name]})
        if self.step < len(self.path):
            return self._visit(self.path[self.step])
        return self._answer()

    def _visit(self, entity_id: str) -> str:
        following = bool(self.read)  # a link of the page just read, not a search result
        self.step = self.path.index(entity_id) + 1 if entity_id in self.path else self.step + 1
        self.read[entity_id] = ""
        name = self.world.entity(entity_id).name
        last = self.step >= len(self.path)
        goal = "the answer" if last else "the next clue"
        thought = (f"{name} matches the clues; its page gives the answer." if last else
                   f"I will read the page of {name}.")
        if following:
            thought = self._restated(evidence_sentence(self.last_observation, name)) + thought
        return self._call(thought, "visit", {"url": [self.url(entity_id)], "goal": goal})

    def _restated(self, evidence: str | None) -> str:
        """explicit thoughts: the question, then the page's sentence the next step rests on ("" when brief)."""
        if self.thoughts == "brief":
            return ""
        return f"The question: {self.task['question']}\n" + (f"The page says: {evidence}\n" if evidence else "")

    def _answer(self) -> str:
        """The task's answer (a name, or an attribute value the answer page shows), stated only if the
        last page the tools returned shows it."""
        entity = self.world.entity(self.task["answer_entity"]).name
        answer = str(self.task["answer"])
        if answer not in self.last_observation:  # the page did not come through: no unsupported claim
            return ("<think>\nI could not read the page that would confirm the answer.\n</think>\n"
                    "<answer>unknown</answer>")
        evidence = evidence_sentence(self.last_observation, answer)
        if evidence:  # quote the page: the answer is read off a sentence the tool returned
            what = self._restated(None) + f"The page says: {evidence}"
        else:
            what = f"The page of {entity} confirms every clue of the question"
            what += "." if answer == entity else f" and gives the value asked for: {answer}."
        return f"<think>\n{what}\n</think>\n<answer>{answer}</answer>"
