"""WebShaper: formalization-driven information-seeking task synthesis on the synthetic world (SEEDS 8).

    formal.py   the formalization as data: V@/C@/? items, the released rows, JSON <-> graph, the set expression
    solve.py    its meaning over the world: projections R(V), R-Union, intersection; the exact answer set
    expand.py   seed tasks, the layer-wise programmatic Expander, validation and roll-back, rows
    agentic.py  the agentic Expander: search / summarize / validate tools and a ReAct policy (scripted or an LLM)
    render.py   questions from formalizations: templates, an LLM by configuration

Never: import anything of the project outside `envs/` (DESIGN section 1).
"""

from envs.webshaper.expand import ShaperTask, expand, expand_layer, seed_task, shaper_item, validate
from envs.webshaper.formal import (
    TARGET,
    FormalGraph,
    Formalization,
    Item,
    ShaperRow,
    Term,
    constant_problems,
    expression,
    from_graph,
    parse_items,
    read_rows,
    to_graph,
    write_rows,
)
from envs.webshaper.render import template_question
from envs.webshaper.solve import answer_entities, answers, intersection, project, r_union

__all__ = [
    "TARGET", "FormalGraph", "Formalization", "Item", "ShaperRow", "ShaperTask", "Term", "answer_entities",
    "answers", "constant_problems", "expand", "expand_layer", "expression", "from_graph", "intersection",
    "parse_items", "project", "r_union", "read_rows", "seed_task", "shaper_item", "template_question",
    "to_graph", "validate", "write_rows",
]
