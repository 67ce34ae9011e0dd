"""The scripted expert for WebDancer's questions on the world (CRAWLQA and E2HQA, `qa_webdancer.py`).

MULTI-HOP, INTERSECTION and E2HQA items carry a sub-graph and an answer entity like SailorFog-QA items,
and `WorldExpert` solves them as it is. COUNT items ("How many works did X create?") need a different
plan: the answer is not a name on a page but the number of entities the page of X lists under one
relation. This expert goes straight to that page (searching with the question's words, then by name if
the page does not come up), reads it through `visit`, finds the sentence of the relation in what the
tool returned and counts the entities it lists. It states that count only if it found the sentence;
otherwise it answers "unknown" (the trajectory then fails the correctness stage of the filter).

Never: import anything of the project outside `envs/world/`; answer with a fact no tool returned.
"""

from __future__ import annotations

import re

from envs.world.expert import WorldExpert
from envs.world.graph import RELATIONS, World

_LIST_SPLIT = re.compile(r", | and ")


def relation_sentences(world: World, entity_id: str, triples: list) -> list[tuple[str, str]]:
    """(text before the list, text after it) of each page sentence that states `triples` (one or more
    sentences: the page groups a relation's triples by phrase, and the phrase may depend on the kinds)."""
    name = world.entity(entity_id).name
    out: dict[tuple[str, str], None] = {}
    for s, r, o in triples:
        direction = "forward" if s == entity_id else "inverse"
        phrase = RELATIONS[r].phrase(direction, world.entities[s].kind, world.entities[o].kind)
        before, after = phrase.split("{other}")
        out.setdefault((f"{name} {before}", f"{after}."), None)
    return list(out)


def count_listed(observation: str, sentences: list[tuple[str, str]]) -> int | None:
    """How many entities the observation lists in the given sentences, or None if one is missing."""
    total = 0
    for prefix, suffix in sentences:
        start = observation.find(prefix)
        if start < 0:
            return None
        start += len(prefix)
        end = observation.find(suffix, start)
        if end < 0:
            return None
        listed = [x for x in _LIST_SPLIT.split(observation[start:end]) if x.strip()]
        total += len(listed)
    return total


class WebDancerExpert(WorldExpert):
    """`WorldExpert` for CRAWLQA and E2HQA items; COUNT items are answered by counting on the page."""

    def __init__(self, world: World, task: dict, base_url: str, thoughts: str = "brief"):
        super().__init__(world, task, base_url, thoughts)
        self.counting = task.get("type") == "count"
        if self.counting:  # the way in is the page the question names; nothing to follow from there
            self.start = task["answer_entity"]
            self.path = [self.start]

    def _answer(self) -> str:
        if not self.counting:
            return super()._answer()
        entity = self.task["answer_entity"]
        n = count_listed(self.last_observation, relation_sentences(self.world, entity, self.task["subgraph"]))
        if n is None:
            return ("<think>\nI could not find on the page the sentence that lists them.\n</think>\n"
                    "<answer>unknown</answer>")
        name = self.world.entity(entity).name
        return (f"<think>\nThe page of {name} lists them in one place; counting the names there gives {n}.\n"
                f"</think>\n<answer>{n}</answer>")
