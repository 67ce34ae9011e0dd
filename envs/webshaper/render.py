"""Questions from formalizations (SEEDS 8.2 step 3): templates offline, an LLM by configuration.

`template_question(f, kinds)` reads a tree formalization from the target outward: each variable becomes a
definite description of its kind built from its other items ("the book that is set in the city that hosted
Vemra Festival"), each item the world's English verb phrase for its relation (`envs/world/graph.py`
RELATIONS), each constant its name. The target's items become the question ("Which writer ... and ...?"), or
the asked attribute's question ("In which year was the band that ... formed?"). `kinds` gives the noun of
every entity term (the synthesizer knows its truth).

`llm_question(f, kinds, template, client)` asks an OpenAI-compatible model (`envs/llm.py` ChatClient) to
rewrite the template question fluently; its reply is kept only if it still names every constant and names
no entity the formalization hides (`hidden`), else the template question stands and the reason is returned.

Never: change the formalization or the answer, or import anything of the project outside `envs/`.
"""

from __future__ import annotations

import re

from envs.webshaper.formal import Formalization, Term, is_tree
from envs.webshaper.solve import answer_node
from envs.world.graph import ATTRIBUTES, KIND_TYPE, RELATIONS
from envs.world.query import attribute_question


def _vp(item, about: Term, kinds: dict[str, str], other_text: str) -> str:
    ks, ko = kinds[str(item.subject)], kinds[str(item.object)]
    direction = "forward" if item.subject == about else "inverse"
    return RELATIONS[item.relation].phrase(direction, ks, ko).format(other=other_text)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _description(f: Formalization, node: Term, parent: Term | None, kinds: dict[str, str]) -> str:
    if node.is_const:
        return node.name
    kind = kinds[str(node)]
    pronoun = "who" if KIND_TYPE[kind] == "person" else "that"
    return f"the {kind} {pronoun} " + _join(_clauses(f, node, parent, kinds))


def _clauses(f: Formalization, node: Term, parent: Term | None, kinds: dict[str, str]) -> list[str]:
    out = []
    for it in f.items:
        if node not in it.ends() or it.relation in ATTRIBUTES:
            continue
        other = it.object if it.subject == node else it.subject
        if other == parent:
            continue
        out.append(_vp(it, node, kinds, _description(f, other, node, kinds)))
    return out


def template_question(f: Formalization, kinds: dict[str, str]) -> str:
    """The English question of a tree formalization (module docstring)."""
    if not is_tree(f):
        raise ValueError("template_question reads a tree formalization (the layer-wise Expander builds trees)")
    node, asked = answer_node(f)
    missing = [str(t) for t in f.terms() if not t.is_const and t != Term("target", "?") and str(t) not in kinds]
    if missing or (asked is None and "?" not in kinds):
        raise ValueError(f"template_question: no kind for terms {missing or ['?']}")
    kind = kinds[str(node)]
    if asked is None:
        return f"Which {kind} " + _join(_clauses(f, node, None, kinds)) + "?"
    parent = Term("target", "?")
    return attribute_question(asked, kind, _description(f, node, parent, kinds))


def hidden_mentions(question: str, hidden_names: list[str]) -> list[str]:
    """The names of hidden entities (variables, the answer) a question states."""
    return [n for n in hidden_names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", question, re.IGNORECASE)]


PROMPT = ("Rewrite this question so that it reads naturally. Keep every name it contains exactly as written, "
          "keep every constraint, add no new facts and no names. Reply with the question only.\n\nQuestion: {q}")


async def llm_question(f: Formalization, template: str, hidden_names: list[str], client) -> tuple[str, str | None]:
    """(question, why the template was kept or None): an LLM rewrite of `template`, checked (module docstring).
    `client` is an `envs.llm.ChatClient`; its errors name the service and propagate."""
    reply = (await client.complete([{"role": "user", "content": PROMPT.format(q=template)}])).strip()
    lost = [t.name for t in f.constants() if t.name not in reply]
    if lost:
        return template, f"the rewrite dropped constants {lost}"
    leaked = hidden_mentions(reply, hidden_names)
    if leaked:
        return template, f"the rewrite names hidden entities {leaked}"
    if not reply.endswith("?") or len(reply) > 4 * len(template) + 200:
        return template, "the rewrite is not one question"
    return reply, None
