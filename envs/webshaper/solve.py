"""The meaning of a formalization over the world's knowledge graph (SEEDS 8.1): knowledge projections,
R-Union, intersection, and the solver that proves an answer unique.

    R(V) = { u | ∃ v ∈ V : (u, v) ∈ R }                     knowledge projection   (`project`)
    R(S) = ∪_{s ∈ S} R({s})                                  R-Union                (`r_union`)
    R_1(S_1) ∩ R_2(S_2)                                       intersection           (`intersection`)

Relations are the world's (`envs/world/graph.py` RELATIONS, used as written: (subject, relation, object));
an item whose relation is an attribute of the world ("population", "birth_date", ...) says that its subject
has that attribute: with the target as object it asks for the value, with a constant as object it states
it ("C@1984": the year of a date, or the number as the page writes it). A constant names an entity by its
name or its id.

`answer_set` evaluates the formalization by projections: each term's set starts as every entity (a
constant: itself) and every item intersects each end with the projection of the other end's set, until
nothing changes (arc consistency). On a tree, which the layer-wise Expander always builds, that fixpoint is
exactly the set expression's value; on a graph with cycles each candidate is then confirmed by a search for
one assignment of all terms (`_consistent`), so the answer is exact either way. Terms may share an entity
(set semantics, unlike `envs/world/query.py`, whose nodes are distinct entities).

Never: write questions or choose expansions (`expand.py`), or import anything of the project outside `envs/`.
"""

from __future__ import annotations

from envs.webshaper.formal import Formalization, Item, Term, is_tree
from envs.world.graph import ATTRIBUTES, RELATIONS, World
from envs.world.query import answer_value


def project(world: World, relation: str, values: set[str], end: str = "subject") -> set[str]:
    """R(V): the entities at `end` ("subject" or "object") of a `relation` triple whose other end is in V."""
    if relation not in RELATIONS:
        raise ValueError(f"relation {relation!r} is not one of the world's ({sorted(RELATIONS)})")
    if end == "subject":
        return {s for v in values for s in world.subjects(v, relation)}
    if end == "object":
        return {o for v in values for o in world.objects(v, relation)}
    raise ValueError(f"project end {end!r}: 'subject' or 'object'")


def r_union(world: World, relation: str, values: set[str], end: str = "subject") -> set[str]:
    """R(S) = ∪_{s ∈ S} R({s}): one relation applied to every element of a set, the results joined."""
    out: set[str] = set()
    for s in values:
        out |= project(world, relation, {s}, end)
    return out


def intersection(*sets: set[str]) -> set[str]:
    """R_1(S_1) ∩ R_2(S_2) ∩ ...: the conjunctive constraints of a task."""
    if not sets:
        raise ValueError("intersection of no sets")
    out = set(sets[0])
    for s in sets[1:]:
        out &= s
    return out


def resolve_constant(world: World, term: Term, by_name: dict[str, str]) -> str:
    """The entity a constant names (by name, else by id); an error naming the constant otherwise."""
    eid = by_name.get(term.name) or (term.name if term.name in world.entities else None)
    if eid is None:
        raise ValueError(f"constant {term} names no entity of the world (seed {world.seed}, size {world.size!r})")
    return eid


def names(world: World) -> dict[str, str]:
    return {e.name: eid for eid, e in world.entities.items()}


def _attribute_matches(world: World, eid: str, attribute: str, text: str) -> bool:
    e = world.entities[eid]
    return attribute in e.attributes and answer_value(e, attribute) == text


def _check(f: Formalization) -> None:
    for it in f.items:
        if it.relation in ATTRIBUTES:
            if not (it.object.is_target or it.object.is_const) or it.subject.is_const:
                raise ValueError(f"item {it.to_json()}: an attribute item joins a variable or the target to the "
                                 "target '?' or to a constant value")
        elif it.relation not in RELATIONS:
            raise ValueError(f"item {it.to_json()}: relation {it.relation!r} is neither a relation "
                             f"({sorted(RELATIONS)}) nor an attribute ({sorted(ATTRIBUTES)}) of the world")
    asked = [it for it in f.items if it.relation in ATTRIBUTES and it.object.is_target]
    if len(asked) > 1:
        raise ValueError(f"{len(asked)} items ask an attribute as the target; a task asks one thing")
    if asked and any(it.relation in RELATIONS and it.object.is_target or it.subject.is_target for it in f.items):
        raise ValueError("the target '?' is an attribute value here and an entity elsewhere")


def domains(world: World, f: Formalization) -> dict[Term, set[str]]:
    """Every entity term's set after projections and intersections reach their fixpoint (module docstring).
    The target is an entity term unless an attribute item asks for it; then it has no set of its own."""
    _check(f)
    by_name = names(world)
    everything = set(world.entities)
    dom: dict[Term, set[str]] = {}
    for t in f.terms():
        if t.is_const:
            if any(it.relation in ATTRIBUTES and it.object == t for it in f.items):
                continue  # a value, not an entity
            dom[t] = {resolve_constant(world, t, by_name)}
        elif t.is_var or not any(it.relation in ATTRIBUTES and it.object == t for it in f.items):
            dom[t] = set(everything)
    for it in f.items:  # unary: attribute values stated by constants
        if it.relation in ATTRIBUTES and it.object.is_const:
            dom[it.subject] = {e for e in dom[it.subject] if _attribute_matches(world, e, it.relation, it.object.name)}
    edges = [it for it in f.items if it.relation in RELATIONS]
    changed = True
    while changed:
        changed = False
        for it in edges:
            s, o = it.subject, it.object
            new_s = dom[s] & project(world, it.relation, dom[o], "subject")
            new_o = dom[o] & project(world, it.relation, dom[s], "object")
            if new_s != dom[s] or new_o != dom[o]:
                dom[s], dom[o], changed = new_s, new_o, True
    return dom


#: assignments `_consistent` may try for one candidate before it gives up with a ValueError (a model-written
#: formalization with cycles can otherwise take exponential time: 8 items took 26 s, 10 would take hours)
MAX_SEARCH_STEPS = 200_000


def _consistent(world: World, f: Formalization, dom: dict[Term, set[str]], fixed: dict[Term, str]) -> bool:
    """Whether some assignment of every entity term within its set, extending `fixed`, holds every item.

    Each connected part of the formalization is searched alone (the parts do not constrain one another), its
    terms in breadth-first order from the fixed ones so that a wrong choice fails at once; at most
    `MAX_SEARCH_STEPS` assignments are tried in all (else ValueError, which the validate tool reports)."""
    edges = [it for it in f.items if it.relation in RELATIONS]
    near: dict[Term, set[Term]] = {t: set() for t in dom}
    for it in edges:
        near[it.subject].add(it.object)
        near[it.object].add(it.subject)
    steps = 0

    def ok(assigned: dict[Term, str], t: Term) -> bool:
        return all(world.has_triple(assigned[it.subject], it.relation, assigned[it.object]) for it in edges
                   if t in it.ends() and it.subject in assigned and it.object in assigned)

    def extend(terms: list[Term], k: int, assigned: dict[Term, str]) -> bool:
        nonlocal steps
        if k == len(terms):
            return True
        t = terms[k]
        for eid in sorted(dom[t]):
            steps += 1
            if steps > MAX_SEARCH_STEPS:
                raise ValueError(f"checking the answer needs more than {MAX_SEARCH_STEPS:,} trial assignments "
                                 "(cycles of unnamed entities): simplify the formalization")
            assigned[t] = eid
            if ok(assigned, t) and extend(terms, k + 1, assigned):
                return True
            del assigned[t]
        return False

    if not all(ok(fixed, t) for t in fixed):
        return False
    seen = set(fixed)
    for root in list(fixed) + [t for t in dom if t not in fixed]:
        if root in seen and root not in fixed:
            continue
        part, queue = [], [root]  # the terms connected to `root`, breadth first, the fixed ones left out
        seen.add(root)
        while queue:
            t = queue.pop(0)
            if t not in fixed:
                part.append(t)
            for u in sorted(near[t] - seen, key=str):
                seen.add(u)
                queue.append(u)
        if part and not extend(part, 0, dict(fixed)):
            return False
    return True


def answer_node(f: Formalization) -> tuple[Term, str | None]:
    """(the entity term the answer is about, the attribute asked or None): the target itself, or the subject
    of the item that asks an attribute."""
    for it in f.items:
        if it.relation in ATTRIBUTES and it.object.is_target:
            return it.subject, it.relation
    return Term("target", "?"), None


def answer_entities(world: World, f: Formalization) -> list[str]:
    """The entities the answer can be about (the target, or the entity whose attribute is asked), in world
    order: exact on any graph (module docstring)."""
    dom = domains(world, f)
    node, _ = answer_node(f)
    if node not in dom:
        raise ValueError("no item holds the target '?'")
    candidates = [e for e in world.entities if e in dom[node]]
    if is_tree(f) or any(not d for d in dom.values()):
        return candidates if all(dom.values()) else []
    return [e for e in candidates if _consistent(world, f, dom, {node: e})]


def answers(world: World, f: Formalization) -> list[str]:
    """The answer texts: entity names, or the asked attribute's values as pages write them (distinct)."""
    node, asked = answer_node(f)
    out: dict[str, None] = {}
    for eid in answer_entities(world, f):
        e = world.entities[eid]
        out.setdefault(e.name if asked is None else answer_value(e, asked), None)
    return list(out)


def is_unique(world: World, f: Formalization, answer_entity: str) -> bool:
    """The Expander's check: exactly one entity fits the answer node, and it is `answer_entity`."""
    return answer_entities(world, f) == [answer_entity]


def item_for(world: World, triple: tuple[str, str, str], terms: dict[str, Term]) -> Item:
    """The item of a world triple, its ends written as the given terms (entity id -> term)."""
    s, r, o = triple
    if r not in RELATIONS:
        raise ValueError(f"triple {triple}: not a relation of the world")
    return Item(terms[s], r, terms[o])
