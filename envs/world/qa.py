"""SailorFog-QA-style synthesis over the synthetic world (SEEDS 3.2; checklist item 34).

Owns: `sample_subgraph` (a seeded random walk that, with some probability, jumps back to a node it has
already seen, plus edges among the chosen nodes, so sub-graphs are chains, stars, trees and cycles),
`sailorfog_qa` (one question per sub-graph whose answer is one node: its name, or a year or quantity of
it), and `obfuscation_problems` (the acceptance check every question passes).

The steps of one item, as in SEEDS 3.2:
  1. a seed entity, grown by random walk into a connected sub-graph of 3-6 entities;
  2. one node is the answer; every node becomes a query node with its kind ("writer", "city") and every
     sub-graph edge a query edge;
  3. information obfuscation: names of other nodes become partial ("a family name starting with 'K'"),
     dates become periods ("in the early 1980s"), quantities become qualitative bounds ("fewer than 500
     members"). Some vague facts are drawn at random; then more are added, one at a time, until the
     constraint checker (`query.solve`) finds that exactly one entity of the world fits the answer node.
     A sub-graph whose facts cannot pin the answer down is rejected;
  4. the question is written from the answer node outward, one sentence per edge, and accepted only if
     it states no exact date or number of the sub-graph's facts and names neither the answer nor (at level
     3) any other node. With `anchor_rate` > 0 one non-answer node is named exactly (level 2: a clear
     place to start searching); otherwise every name is hidden (level 3). With `one_page` a question is
     kept only when it names an entity whose page singles the answer out (a lead sentence that links to
     the answer entity and to nothing else): level 1, one search and one page read reduce it.

Never: call a model (the paper's LLM writer is replaced by templates over the same facts), fetch pages,
or import anything of the project outside `envs/world/`.
"""

from __future__ import annotations

import hashlib
import random
import re

from envs.world.graph import ATTRIBUTES, RELATIONS, Triple, World, year_of
from envs.world.pages import Link, article, lead_sentences
from envs.world.query import (
    Query,
    QueryNode,
    answer_value,
    attribute_question,
    bound,
    feature_phrases,
    name_initial,
    period,
    solve,
)

_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")
_NUMBER = re.compile(r"\d[\d,]*")


def uid(tag: str, question: str, answer: str) -> str:
    digest = hashlib.sha1((question + "\n" + answer).encode()).hexdigest()
    return f"{tag}-{digest[:12]}"


# ----------------------------------------------------------------------------------------------------
# Sub-graphs


def sample_subgraph(world: World, rng: random.Random, size: int, jump: float = 0.5,
                    extra_edges: float = 0.5, close_cycles: float = 0.5,
                    start: str | None = None) -> tuple[list[str], list[Triple]] | None:
    """A connected sub-graph of `size` entities grown by random walk from `start` (random if None).

    Each step either jumps back to a node already chosen (probability `jump`; the node is drawn in
    proportion to its degree in the sub-graph so far, which grows stars and trees instead of chains) or
    follows a triple of the current node to a new entity, preferring (probability `close_cycles`) an entity
    that is also linked to another chosen node. Then each other triple among the chosen entities joins with
    probability `extra_edges`, which closes those cycles. None when the walk cannot reach `size` entities.
    """
    nodes = [start if start is not None else rng.choice(list(world.entities))]
    edges: list[Triple] = []
    current = nodes[0]
    for _ in range(20 * size):
        if len(nodes) == size:
            break
        if len(nodes) > 1 and rng.random() < jump:
            degree = [1 + sum(n in (s, o) for s, _, o in edges) for n in nodes]
            current = rng.choices(nodes, weights=degree)[0]
            continue
        options = [t for t in world.triples_of(current) if (t[2] if t[0] == current else t[0]) not in nodes]
        if not options:
            current = rng.choice(nodes)
            continue
        closing = [t for t in options
                   if any(n in nodes and n != current for n in world.neighbours(t[2] if t[0] == current else t[0]))]
        t = rng.choice(closing if closing and rng.random() < close_cycles else options)
        current = t[2] if t[0] == current else t[0]
        nodes.append(current)
        edges.append(t)
    if len(nodes) < size:
        return None
    for eid in nodes:
        for t in world.triples_of(eid):
            if t[0] == eid and t[2] in nodes and t not in edges and rng.random() < extra_edges:
                edges.append(t)
    return nodes, edges


def topology(nodes: list[str], edges: list[Triple]) -> str:
    """"chain", "star", "tree" or "cyclic", from the undirected shape of the sub-graph."""
    pairs = {frozenset((s, o)) for s, _, o in edges}
    if len(pairs) >= len(nodes):
        return "cyclic"
    degree = {n: sum(n in p for p in pairs) for n in nodes}
    if max(degree.values()) <= 2:
        return "chain"
    if len(nodes) >= 4 and max(degree.values()) == len(nodes) - 1:
        return "star"
    return "tree"


# ----------------------------------------------------------------------------------------------------
# Acceptance


def fact_numbers(world: World, entity_ids: list[str]) -> set[int]:
    """Every number a fact of these entities states: quantities, and the years of dates."""
    out: set[int] = set()
    for eid in entity_ids:
        for attr, value in world.entities[eid].attributes.items():
            out.add(value if ATTRIBUTES[attr].value == "quantity" else year_of(value))
    return out


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE) is not None


def obfuscation_problems(world: World, question: str, subgraph: list[str], answer_entity: str,
                         named: tuple[str, ...] = ()) -> list[str]:
    """What makes a question fail SEEDS 14 item 34; empty when it passes.

    A number in the question (commas dropped; "1980s" reads as 1980) equal to a quantity or a year of a
    sub-graph fact, an ISO date, the answer's name, or the name of a sub-graph entity not in `named`.
    """
    problems = []
    facts = fact_numbers(world, subgraph)
    for token in _NUMBER.findall(question):
        if int(token.replace(",", "")) in facts:
            problems.append(f"states the fact number {token!r}")
    if re.search(r"\d{4}-\d{2}-\d{2}", question):
        problems.append("states an exact date")
    for eid in subgraph:
        name = world.entities[eid].name
        if eid == answer_entity and _mentions(question, name):
            problems.append(f"names the answer {name!r}")
        elif eid != answer_entity and eid not in named and _mentions(question, name):
            problems.append(f"names the hidden entity {name!r}")
    return problems


# ----------------------------------------------------------------------------------------------------
# Writing the question


def _edge_order(query: Query) -> list[int]:
    """Edge indices from the answer node outward: breadth-first tree edges, then the cycle-closing ones."""
    seen, order, queue = {query.answer}, [], [query.answer]
    while queue:
        u = queue.pop(0)
        for k, (s, _, o) in enumerate(query.edges):
            if k in order or u not in (s, o):
                continue
            other = o if s == u else s
            if other not in seen:
                seen.add(other)
                queue.append(other)
                order.append(k)
    return order + [k for k in range(len(query.edges)) if k not in order]


def render_question(world: World, query: Query, ids: list[str], asked: str | None) -> str:
    """English for a SailorFog query: one sentence per edge from the answer node outward, each new node's
    vague facts right after it, then the ask. `ids[i]` is the true entity of node i (for verb forms)."""
    nodes, a = query.nodes, query.answer
    edge_order = _edge_order(query)
    intro_order = []
    for k in edge_order:
        for i in (query.edges[k][0], query.edges[k][2]):
            if i != a and i not in intro_order:
                intro_order.append(i)
    hidden = [i for i in intro_order if nodes[i].entity is None]
    answer_noun = nodes[a].kind
    same = {i: [j for j in hidden if nodes[j].kind == nodes[i].kind] for i in hidden}

    intro, ref = {}, {}
    intro[a], ref[a] = f"a certain {answer_noun}", f"this {answer_noun}"
    for i in intro_order:
        noun = nodes[i].kind
        if nodes[i].entity is not None:
            intro[i] = ref[i] = world.entities[nodes[i].entity].name
            continue
        other = " other" if noun == answer_noun else ""
        p = same[i].index(i)
        if len(same[i]) == 1:
            intro[i] = f"another {noun}" if other else f"{article(noun)} {noun}"
            ref[i] = f"the{other} {noun}"
        else:
            intro[i] = (f"another {noun}" if other else f"{article(noun)} {noun}") if p == 0 \
                else f"a {_ORDINALS[p]}{other} {noun}"
            ref[i] = f"the {_ORDINALS[p]}{other} {noun}"

    introduced: set[int] = set()

    def mention(i: int) -> str:
        if i in introduced:
            return ref[i]
        introduced.add(i)
        return intro[i]

    def cap(text: str) -> str:
        return text[0].upper() + text[1:]

    def facts(i: int) -> str:
        phrases = feature_phrases(nodes[i])
        return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    sentences = []
    known = {a}  # nodes the text has already placed (the answer from the start)
    if feature_phrases(nodes[a]):
        sentences.append(cap(f"{mention(a)} {facts(a)}."))
    for k in edge_order:
        s, r, o = query.edges[k]
        ks, ko = world.entities[ids[s]].kind, world.entities[ids[o]].kind
        if o in known and s not in known:  # state it about the node already known
            subject, vp, new = o, RELATIONS[r].phrase("inverse", ks, ko), s
        else:
            subject, vp, new = s, RELATIONS[r].phrase("forward", ks, ko), o
        fresh = new not in known
        known.update((s, o))
        subject_text = mention(subject)
        sentences.append(cap(f"{subject_text} {vp.format(other=mention(new))}."))
        if fresh and nodes[new].entity is None and feature_phrases(nodes[new]):
            sentences.append(cap(f"{ref[new]} {facts(new)}."))
    answer_kind = world.entities[ids[a]].kind
    if asked is not None:
        ask = attribute_question(asked, answer_kind, ref[a])
    else:
        what = "title" if world.entities[ids[a]].type == "work" else "name"
        ask = f"What is the {what} of {ref[a]}?"
    return " ".join(sentences + [ask])


# ----------------------------------------------------------------------------------------------------
# Generation


def _features(world: World, ids: list[str], query: Query, asked: str | None, facts: set[int],
              rng: random.Random) -> list[tuple]:
    """Vague facts that may be stated: (node, "initial"), (node, "period", ...), (node, "bound", ...).
    None names the answer, states the asked attribute, or writes a number equal to a sub-graph fact."""
    out: list[tuple] = []
    for i, eid in enumerate(ids):
        if query.nodes[i].entity is not None:
            continue
        e = world.entities[eid]
        if i != query.answer:
            out.append((i, "initial"))
        for attr, value in e.attributes.items():
            if i == query.answer and attr == asked:
                continue
            if ATTRIBUTES[attr].value == "quantity":
                for op in rng.sample(("<", ">"), 2):
                    threshold = bound(value, op)
                    if threshold is not None and threshold not in facts:
                        out.append((i, "bound", attr, op, threshold))
                        break
            else:
                decade, part = period(value)
                if decade not in facts:
                    out.append((i, "period", attr, decade, part))
    return out


def _apply(world: World, query: Query, ids: list[str], feature: tuple) -> None:
    node = query.nodes[feature[0]]
    if feature[1] == "initial":
        node.initial = name_initial(world.entities[ids[feature[0]]])
    elif feature[1] == "period":
        node.periods.append(feature[2:])
    else:
        node.bounds.append(feature[2:])


def names_alone(world: World, page_entity: str, target: str) -> bool:
    """Whether the page of `page_entity` has a lead sentence that links to `target` and to nothing else."""
    return any([seg.entity_id for seg in sentence if isinstance(seg, Link)] == [target]
               for sentence in lead_sentences(world, page_entity))


def sailorfog_item(world: World, rng: random.Random, nodes: tuple[int, int] = (3, 6), anchor_rate: float = 0.0,
                   attribute_rate: float = 0.3, feature_rate: float = 0.35, one_page: bool = False) -> dict | None:
    """One SailorFog item, or None where this draw is rejected (walk stuck, answer not unique, leak, or with
    `one_page` no named entity whose page names the answer alone)."""
    sub = sample_subgraph(world, rng, rng.randint(*nodes))
    if sub is None:
        return None
    ids, triples = sub
    index = {eid: i for i, eid in enumerate(ids)}
    answer = rng.randrange(len(ids))
    answer_entity = world.entities[ids[answer]]
    asked = rng.choice(list(answer_entity.attributes)) if rng.random() < attribute_rate else None
    query = Query([QueryNode(kind=world.entities[eid].kind) for eid in ids],
                  [(index[s], r, index[o]) for s, r, o in triples], answer)
    named: tuple[str, ...] = ()
    if rng.random() < anchor_rate:
        anchor = rng.choice([i for i in range(len(ids)) if i != answer])
        query.nodes[anchor].entity = ids[anchor]
        named = (ids[anchor],)
    if one_page and not (named and names_alone(world, named[0], ids[answer])):
        return None
    facts = fact_numbers(world, ids)
    pool = _features(world, ids, query, asked, facts, rng)
    rng.shuffle(pool)
    chosen = [f for f in pool if rng.random() < feature_rate]
    rest = [f for f in pool if f not in chosen]
    for f in chosen:
        _apply(world, query, ids, f)
    while True:
        found = solve(world, query, limit=2)
        if found == [ids[answer]]:
            break
        if ids[answer] not in found and len(found) < 2:
            raise RuntimeError(f"constraint checker lost the true answer {ids[answer]!r} of query {query.to_dict()}")
        if not rest:
            return None
        _apply(world, query, ids, rest.pop(0))
    question = render_question(world, query, ids, asked)
    if obfuscation_problems(world, question, ids, ids[answer], named):
        return None
    answer_text = answer_entity.name if asked is None else answer_value(answer_entity, asked)
    return {
        "uid": uid("sailorfog", question, answer_text),
        "tag": "sailorfog",
        "question": question,
        "answer": answer_text,
        "answer_entity": ids[answer],
        "subgraph": [list(t) for t in triples],
        "hops": query.hops(),
        "level": (1 if one_page else 2) if named else 3,
        "topology": topology(ids, triples),
        "query": query.to_dict(),
    }


def sailorfog_qa(world: World, n: int, seed: int = 0, *, nodes: tuple[int, int] = (3, 6),
                 anchor_rate: float = 0.0, attribute_rate: float = 0.3, feature_rate: float = 0.35,
                 one_page: bool = False, max_attempts: int | None = None) -> list[dict]:
    """Up to `n` distinct SailorFog items, deterministic per (world, seed); fewer only when `max_attempts`
    draws (default 50 * n) did not yield n accepted ones.

    Item: {"uid", "tag": "sailorfog", "question", "answer", "answer_entity", "subgraph": [[s, r, o], ...],
    "hops", "level", "topology", "query"} where "query" is the constraint form of the question
    (`Query.to_dict`), which `query.solve` checks.
    """
    if not 1 <= nodes[0] <= nodes[1]:
        raise ValueError(f"nodes={nodes}: need 1 <= min <= max entities per sub-graph")
    if one_page and anchor_rate == 0:
        raise ValueError("one_page needs anchor_rate > 0: a level-1 question names the entity whose page answers it")
    rng = random.Random(f"sailorfog:{world.seed}:{world.size}:{seed}")
    return collect_distinct(lambda: sailorfog_item(world, rng, nodes, anchor_rate, attribute_rate, feature_rate,
                                                   one_page), n, max_attempts)


def collect_distinct(make, n: int, max_attempts: int | None = None) -> list[dict]:
    """Up to `n` items from `make()` (None = rejected draw) with distinct questions, in at most
    `max_attempts` draws (default 50 * n)."""
    items: list[dict] = []
    questions: set[str] = set()
    for _ in range(max_attempts if max_attempts is not None else 50 * n):
        if len(items) >= n:
            break
        item = make()
        if item is not None and item["question"] not in questions:
            questions.add(item["question"])
            items.append(item)
    return items
