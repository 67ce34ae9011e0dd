"""WebShaper's synthesis over the world (SEEDS 8.2): seed tasks, the layer-wise Expander, validation with
roll-back, and the released rows.

    seed      a random entity of the world is the answer; one or two of its triples become items that join
              the target to constants (or the entity's attribute is asked: ["V@A", "population", "?"]);
              kept when the solver finds that entity alone;
    expand    one layer: every leaf constant c (an entity e) is replaced by a new variable v plus the
              sub-task whose answer is e: an item joining v to a new constant by one of e's triples (two
              items, an intersection, where one leaves the answer ambiguous). A new constant is never the
              answer, never a term already there, never a neighbour of the answer entity in the world
              (a reasoning shortcut), and its name never overlaps another term's. Constants are only ever
              joined to variables, so none is adjacent to the target or to another constant;
    validate  after each expansion: the items hold for the true entities, the answer is still unique and
              correct by the solver (`solve.py`), no constant touches the target or another constant, no
              constant past the first layer is linked to the answer entity; otherwise the layer is rolled
              back (the task before it is kept) and counted.

`ShaperTask` carries the formalization with its truth (the entity of every entity term), which the
question writer (`render.py`) and the scripted expert (`envs/world/expert.py`: `subgraph`, `answer_entity`)
read; `shaper_item` turns it into a row with the released keys plus those.

Never: call a model or fetch (the agentic Expander is `agentic.py`), or import anything of the project
outside `envs/`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from envs.webshaper.formal import (
    TARGET_TERM,
    Formalization,
    Item,
    Term,
    const,
    constant_problems,
    depths,
    expression,
    leaf_constants,
    var,
)
from envs.webshaper.solve import answer_entities, answers, item_for
from envs.world.graph import ATTRIBUTES, World
from envs.world.pages import page_url
from envs.world.query import answer_value


@dataclass
class ShaperTask:
    formalization: Formalization
    truth: dict[Term, str]  # entity id of every entity term (variables, constants, an entity target)
    answer_entity: str
    asked: str | None = None  # the attribute asked, or None (the answer is the entity's name)
    layers: int = 0
    rollbacks: int = 0
    history: list[list[list[str]]] = field(default_factory=list)  # the formalization after each layer

    def answer_text(self, world: World) -> str:
        e = world.entities[self.answer_entity]
        return e.name if self.asked is None else answer_value(e, self.asked)

    def next_variable(self) -> Term:
        taken = {t.name for t in self.formalization.variables()}
        return var(next(f"x{k}" for k in range(1, 10_000) if f"x{k}" not in taken))


def _other(t: tuple[str, str, str], eid: str) -> str:
    return t[2] if t[0] == eid else t[0]


def seed_task(world: World, rng: random.Random, constants: tuple[int, int] = (1, 2),
              attribute_rate: float = 0.3, max_constants: int = 3) -> ShaperTask | None:
    """A 1-hop seed task with `constants` items (more, up to `max_constants`, until the answer is unique),
    or None where this draw stays ambiguous."""
    a = rng.choice(list(world.entities))
    options = [t for t in world.triples_of(a) if _other(t, a) != a]
    rng.shuffle(options)
    chosen, seen = [], set()
    for t in options:
        if _other(t, a) not in seen:
            seen.add(_other(t, a))
            chosen.append(t)
    if not chosen:
        return None
    asked = rng.choice(sorted(world.entities[a].attributes)) if rng.random() < attribute_rate else None
    node = var("A") if asked else TARGET_TERM
    base = [Item(node, asked, TARGET_TERM)] if asked else []
    for k in range(rng.randint(*constants), min(max_constants, len(chosen)) + 1):
        terms = {a: node} | {_other(t, a): const(world.entities[_other(t, a)].name) for t in chosen[:k]}
        f = Formalization(base + [item_for(world, t, terms) for t in chosen[:k]])
        if answer_entities(world, f) == [a]:
            return ShaperTask(f, {term: eid for eid, term in terms.items()}, a, asked, history=[f.to_json()])
    return None


# ----------------------------------------------------------------------------------------------------
# Validation


def validate(world: World, task: ShaperTask, expanded: bool = True) -> list[str]:
    """What is wrong with a task (empty when it passes): an item that does not hold for the true entities,
    then `formal_problems`; `expanded` adds the Expander's rules."""
    problems = []
    for it in task.formalization.items:  # correct: every entity item holds for the true entities
        if it.relation in ATTRIBUTES:
            continue
        s, o = task.truth.get(it.subject), task.truth.get(it.object)
        if s is None or o is None or not world.has_triple(s, it.relation, o):
            problems.append(f"item {it.to_json()} does not hold for the true entities")
    return problems + formal_problems(world, task.formalization, task.answer_entity, expanded)


def formal_problems(world: World, f: Formalization, answer_entity: str, expanded: bool = True) -> list[str]:
    """The checks that need only the formalization and the answer (the agentic Expander's validate tool):
    the solver finds `answer_entity` alone; with `expanded`, no constant is adjacent to the target or to
    another constant, and no constant past the first layer is linked to the answer entity (a shortcut)."""
    try:
        found = answer_entities(world, f)
    except (ValueError, RecursionError) as err:
        return [f"cannot solve: {err or type(err).__name__}"]
    problems = []
    if found != [answer_entity]:
        problems.append(f"answer not unique and correct: {len(found)} entities fit "
                        f"({', '.join(world.entities[e].name for e in found[:3])}), true answer "
                        f"{world.entities[answer_entity].name}")
    if expanded:
        problems += constant_problems(f)
        d = depths(f)
        first = 1 + any(it.relation in ATTRIBUTES and it.object.is_target for it in f.items)
        near = set(world.neighbours(answer_entity))
        by_name = {e.name: eid for eid, e in world.entities.items()}
        for c in f.constants():
            if d.get(c, 0) > first and by_name.get(c.name) in near:
                problems.append(f"shortcut: constant {c} is linked to the answer entity in the world")
    return problems


# ----------------------------------------------------------------------------------------------------
# The programmatic Expander


def expansion_options(world: World, task: ShaperTask, c: Term) -> list[tuple[str, str, str]]:
    """The triples of constant c's entity that may make its sub-task (module docstring: never the answer, a
    term already there, a neighbour of the answer, or a name overlapping another term's)."""
    e = task.truth[c]
    used = set(task.truth.values())
    near = set(world.neighbours(task.answer_entity))
    names = [t.name.lower() for t in task.formalization.terms() if t.is_const]
    out = []
    for t in world.triples_of(e):
        o = _other(t, e)
        name = world.entities[o].name.lower()
        if o in used or o in near or o == task.answer_entity:
            continue
        if any(name in n or n in name for n in names):
            continue
        out.append(t)
    return out


def replace_constant(world: World, task: ShaperTask, c: Term, triples: list[tuple[str, str, str]]) -> ShaperTask:
    """c becomes a new variable v; each triple of c's entity joins v to a new constant (its other end)."""
    e, v = task.truth[c], task.next_variable()
    truth = {t: x for t, x in task.truth.items() if t != c} | {v: e}
    items = []
    for t in triples:
        o = _other(t, e)
        truth[const(world.entities[o].name)] = o
        items.append(item_for(world, t, {e: v, o: const(world.entities[o].name)}))
    return replace(task, formalization=task.formalization.replace(c, v).with_items(items), truth=truth)


def expand_constant(world: World, task: ShaperTask, c: Term, rng: random.Random,
                    max_options: int = 8) -> ShaperTask | None:
    """Replace one leaf constant by a variable and its sub-task, the answer still unique; None if no option
    keeps it so (each failed option is rolled back and counted in `rollbacks`)."""
    options = expansion_options(world, task, c)
    rng.shuffle(options)
    failed = 0
    for k, t in enumerate(options[:max_options]):
        for extra in [[]] + [[u] for u in options[k + 1:k + 3] if _other(u, task.truth[c]) != _other(t, task.truth[c])]:
            candidate = replace_constant(world, task, c, [t] + extra)
            if answer_entities(world, candidate.formalization) == [task.answer_entity]:
                return replace(candidate, rollbacks=task.rollbacks + failed)
            failed += 1
    task.rollbacks += failed
    return None


def expand_layer(world: World, task: ShaperTask, rng: random.Random, max_options: int = 8) -> ShaperTask | None:
    """One layer: every leaf constant replaced (`expand_constant`), then `validate`; None (roll back to
    `task`, whose `rollbacks` counts it) if a constant has no valid sub-task or the layer fails validation."""
    current = task
    for c in leaf_constants(task.formalization):
        nxt = expand_constant(world, current, c, rng, max_options)
        if nxt is None:
            task.rollbacks = current.rollbacks + 1
            return None
        current = nxt
    if validate(world, current):
        task.rollbacks = current.rollbacks + 1
        return None
    return replace(current, layers=task.layers + 1, history=task.history + [current.formalization.to_json()])


def expand(world: World, task: ShaperTask, layers: int, rng: random.Random, expand_fn=None) -> ShaperTask:
    """Up to `layers` layer-wise expansions; stops at the first layer rolled back (the last valid task kept).
    `expand_fn(world, task, rng) -> task | None` is one layer (default: the programmatic `expand_layer`)."""
    expand_fn = expand_fn or expand_layer
    for _ in range(layers):
        nxt = expand_fn(world, task, rng)
        if nxt is None:
            break
        task = nxt
    return task


# ----------------------------------------------------------------------------------------------------
# Rows


def subgraph(task: ShaperTask) -> list[list[str]]:
    """The world triples the formalization's entity items stand for (the scripted expert's plan)."""
    return [[task.truth[it.subject], it.relation, task.truth[it.object]] for it in task.formalization.items
            if it.relation not in ATTRIBUTES]


def shaper_item(world: World, task: ShaperTask, question: str, uid: str) -> dict:
    """A row with the released keys (id, question, answer, formalization, urls: the pages of every entity of
    the task, from which it can be built and checked) and the synthesizer's own (uid, tag, answer_entity,
    asked, subgraph, layers, rollbacks, expression, kinds, hops)."""
    entities = sorted(set(task.truth.values()))
    return {
        "id": uid, "question": question, "answer": task.answer_text(world),
        "formalization": task.formalization.to_json(), "urls": [page_url(e) for e in entities],
        "uid": uid, "tag": "webshaper", "answer_entity": task.answer_entity, "asked": task.asked,
        "subgraph": subgraph(task),
        "layers": task.layers, "rollbacks": task.rollbacks, "expression": expression(task.formalization),
        "kinds": {str(t): world.entities[e].kind for t, e in task.truth.items()},
        "hops": max(depths(task.formalization).values()) - (task.asked is not None),
    }


def check_row(world: World, item: dict) -> list[str]:
    """A synthesized row checked again from its serialised form alone: the answer the solver finds."""
    from envs.webshaper.formal import parse_items

    f, problems = parse_items(item["formalization"], f"row {item.get('id')}")
    found = answers(world, f)
    if found != [item["answer"]]:
        problems.append(f"row {item.get('id')}: the solver finds {found[:3]}, the row says {item['answer']!r}")
    return problems
