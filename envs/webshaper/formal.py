"""WebShaper's formalization as data (SEEDS 8.1; checklist item 35): the released serialised form, the
graph it stands for, and its rows.

Owns: `Term` (a variable `V@x`, a constant `C@x` or the target `?`), `Item` (one [subject, relation,
object] triple), `Formalization` (the items of one task) with its JSON form (`to_json` / `parse_items`, a
parser that skips and reports every item that is not a triple of terms, as the released 500 rows have some)
and its graph form (`FormalGraph`: nodes and labelled edges; `to_graph` / `from_graph`), the graph facts the
Expander's rules are stated in (constants adjacent to the target or to another constant, leaf constants,
depth, trees), the set expression it denotes (`expression`: T = R_1(C_1) ∩ R_2(R_3(C_2)), SEEDS 8.1), and
the rows `{id, question, answer, formalization, urls}` read (`read_rows`, each bad row or item reported by
file and line) and written (`write_rows`, exactly the released keys).

Never: know the world (the semantics over a knowledge graph is `solve.py`), call a model, or import anything
of the project outside `envs/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TARGET = "?"
VAR, CONST, TARGET_KIND = "var", "const", "target"
ROW_KEYS = ("id", "question", "answer", "formalization", "urls")


@dataclass(frozen=True, order=True)
class Term:
    kind: str  # var | const | target
    name: str  # what follows "V@" / "C@"; "?" for the target

    def __str__(self) -> str:
        return TARGET if self.kind == TARGET_KIND else ("V@" if self.kind == VAR else "C@") + self.name

    @property
    def is_var(self) -> bool:
        return self.kind == VAR

    @property
    def is_const(self) -> bool:
        return self.kind == CONST

    @property
    def is_target(self) -> bool:
        return self.kind == TARGET_KIND


def var(name: str) -> Term:
    return Term(VAR, name)


def const(name: str) -> Term:
    return Term(CONST, name)


TARGET_TERM = Term(TARGET_KIND, TARGET)


def parse_term(text) -> Term | None:
    """"V@x" -> a variable, "C@x" -> a constant, "?" -> the target; None for anything else."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if text == TARGET:
        return TARGET_TERM
    if len(text) > 2 and text[:2] in ("V@", "C@") and text[2:].strip():
        return Term(VAR if text[0] == "V" else CONST, text[2:].strip())
    return None


@dataclass(frozen=True)
class Item:
    subject: Term
    relation: str
    object: Term

    def to_json(self) -> list[str]:
        return [str(self.subject), self.relation, str(self.object)]

    def ends(self) -> tuple[Term, Term]:
        return self.subject, self.object


@dataclass
class Formalization:
    """The items of one task, in order. A target `?` appears in at least one item."""

    items: list[Item] = field(default_factory=list)

    def to_json(self) -> list[list[str]]:
        return [it.to_json() for it in self.items]

    def terms(self) -> list[Term]:
        """Every term, in order of first appearance."""
        seen: dict[Term, None] = {}
        for it in self.items:
            seen.setdefault(it.subject, None)
            seen.setdefault(it.object, None)
        return list(seen)

    def variables(self) -> list[Term]:
        return [t for t in self.terms() if t.is_var]

    def constants(self) -> list[Term]:
        return [t for t in self.terms() if t.is_const]

    def replace(self, old: Term, new: Term) -> Formalization:
        """A copy with every occurrence of `old` replaced by `new`."""
        swap = lambda t: new if t == old else t  # noqa: E731
        return Formalization([Item(swap(it.subject), it.relation, swap(it.object)) for it in self.items])

    def with_items(self, extra: list[Item]) -> Formalization:
        return Formalization(self.items + list(extra))


def parse_items(raw, where: str = "formalization") -> tuple[Formalization, list[str]]:
    """The released `formalization` field -> (Formalization, one problem line per skipped item).

    An item is kept when it is a list of three strings: a term, a non-empty relation, a term (`parse_term`).
    Anything else (a pair, a quadruple, a bare string, a term without V@/C@/?) is skipped and reported with
    its index, never a crash. A field that is not a list at all is one problem and no items."""
    if isinstance(raw, str):  # some dumps store the list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            return Formalization(), [f"{where}: a string that is not JSON ({err.msg})"]
    if not isinstance(raw, list):
        return Formalization(), [f"{where}: expected a list of [subject, relation, object] items, got "
                                 f"{type(raw).__name__}"]
    items, problems = [], []
    for k, entry in enumerate(raw):
        why = None
        if not isinstance(entry, list) or len(entry) != 3:
            size = f"{len(entry)} elements" if isinstance(entry, list) else type(entry).__name__
            why = f"not a triple ({size})"
        elif not all(isinstance(x, str) for x in entry):
            why = "not a triple of strings"
        else:
            s, r, o = parse_term(entry[0]), entry[1].strip(), parse_term(entry[2])
            if s is None or o is None:
                bad = entry[0] if s is None else entry[2]
                why = f"term {bad!r} is not V@<name>, C@<name> or ?"
            elif not r:
                why = "empty relation"
            elif s == o:
                why = f"subject and object are the same term {str(s)!r}"
            else:
                items.append(Item(s, r, o))
        if why:
            problems.append(f"{where} item {k}: {why}: {json.dumps(entry, ensure_ascii=False)[:120]}")
    return Formalization(items), problems


# ----------------------------------------------------------------------------------------------------
# The graph


@dataclass
class FormalGraph:
    """Nodes (terms as their serialised labels) and labelled edges (subject, relation, object)."""

    nodes: list[str]
    edges: list[tuple[str, str, str]]

    def neighbours(self, node: str) -> list[str]:
        out: dict[str, None] = {}
        for s, _, o in self.edges:
            if s == node:
                out.setdefault(o, None)
            elif o == node:
                out.setdefault(s, None)
        return list(out)

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_dict(cls, d: dict) -> FormalGraph:
        return cls(list(d["nodes"]), [tuple(e) for e in d["edges"]])


def to_graph(f: Formalization) -> FormalGraph:
    return FormalGraph([str(t) for t in f.terms()], [(str(it.subject), it.relation, str(it.object)) for it in f.items])


def from_graph(g: FormalGraph) -> Formalization:
    """The formalization of a graph; every node must be a term and lie on an edge (a lone node has no item)."""
    terms = {n: parse_term(n) for n in g.nodes}
    bad = [n for n, t in terms.items() if t is None]
    if bad:
        raise ValueError(f"formal graph: nodes {bad} are not V@<name>, C@<name> or ?")
    on_edges = {x for s, _, o in g.edges for x in (s, o)}
    for n in g.nodes:
        if n not in on_edges:
            raise ValueError(f"formal graph: node {n!r} lies on no edge; a formalization cannot hold it")
    for s, r, o in g.edges:
        if s not in terms or o not in terms:
            raise ValueError(f"formal graph: edge ({s!r}, {r!r}, {o!r}) names a node not in the graph")
    return Formalization([Item(terms[s], r, terms[o]) for s, r, o in g.edges])


def constant_problems(f: Formalization) -> list[str]:
    """The Expander's rules (SEEDS 8.2): no constant adjacent to the target, none adjacent to another constant.
    Empty when both hold."""
    out = []
    for it in f.items:
        s, o = it.ends()
        if s.is_const and o.is_const:
            out.append(f"constant {s} is joined to constant {o} by {it.relation!r}")
        elif (s.is_const and o.is_target) or (s.is_target and o.is_const):
            out.append(f"constant {s if s.is_const else o} is adjacent to the target by {it.relation!r}")
    return out


def depths(f: Formalization) -> dict[Term, int]:
    """Distance (edges, either direction) of every term from the target; terms not connected to it are absent."""
    dist = {TARGET_TERM: 0} if any(TARGET_TERM in it.ends() for it in f.items) else {}
    frontier = list(dist)
    while frontier:
        nxt = []
        for u in frontier:
            for it in f.items:
                for a, b in (it.ends(), it.ends()[::-1]):
                    if a == u and b not in dist:
                        dist[b] = dist[u] + 1
                        nxt.append(b)
        frontier = nxt
    return dist


def leaf_constants(f: Formalization) -> list[Term]:
    """Constants on exactly one item (the leaves the layer-wise Expander replaces), deepest layer first."""
    count: dict[Term, int] = {}
    for it in f.items:
        for t in it.ends():
            count[t] = count.get(t, 0) + 1
    d = depths(f)
    leaves = [t for t in f.constants() if count[t] == 1]
    return sorted(leaves, key=lambda t: -d.get(t, 0))


def is_tree(f: Formalization) -> bool:
    """Connected and acyclic as an undirected multigraph (items = edges)."""
    terms = f.terms()
    return bool(terms) and len(f.items) == len(terms) - 1 and len(depths(f)) == len(terms)


def expression(f: Formalization) -> str:
    """The set expression of a tree formalization, read from the target (SEEDS 8.1):
    ["?", r1, "C@a"], ["?", r2, "V@x"], ["V@x", r3, "C@b"] -> "T = r1(C@a) ∩ r2(r3(C@b))"; an inverse
    relation (the target as object) is written r^-1."""
    if not is_tree(f):
        return "T = (not a tree: " + "; ".join(" ".join(it.to_json()) for it in f.items) + ")"

    def of(node: Term, parent: Term | None) -> str:
        if node.is_const:
            return str(node)
        parts = []
        for it in f.items:
            if node not in it.ends():
                continue
            other = it.object if it.subject == node else it.subject
            if other == parent:
                continue
            name = it.relation if it.subject == node else f"{it.relation}^-1"
            parts.append(f"{name}({of(other, node)})")
        return " ∩ ".join(parts)

    return "T = " + of(TARGET_TERM, None)


# ----------------------------------------------------------------------------------------------------
# Rows


@dataclass
class ShaperRow:
    id: str
    question: str
    answer: str
    formalization: Formalization
    urls: list[str]

    def to_json(self) -> dict:
        return {"id": self.id, "question": self.question, "answer": self.answer,
                "formalization": self.formalization.to_json(), "urls": list(self.urls)}


def row_from_json(d, where: str) -> tuple[ShaperRow | None, list[str]]:
    """One released row -> (row or None, problems). A row lacking a key or with a wrong type is None with its
    problem; skipped formalization items are problems of a row that is kept."""
    if not isinstance(d, dict):
        return None, [f"{where}: a row must be a JSON object, got {type(d).__name__}"]
    missing = [k for k in ROW_KEYS if k not in d]
    if missing:
        return None, [f"{where}: lacks {missing} (a row holds {list(ROW_KEYS)})"]
    for key in ("question", "answer"):
        if not isinstance(d[key], (str, int, float)) or isinstance(d[key], bool):
            return None, [f"{where}: field {key!r} must be a string, got {type(d[key]).__name__}"]
    urls = d["urls"]
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        return None, [f"{where}: field 'urls' must be a list of strings"]
    f, problems = parse_items(d["formalization"], f"{where} formalization")
    if not any(TARGET_TERM in it.ends() for it in f.items):
        problems.append(f"{where}: no item holds the target '?'")
    return ShaperRow(str(d["id"]), str(d["question"]), str(d["answer"]), f, list(urls)), problems


def read_rows(path: str | Path) -> tuple[list[ShaperRow], list[str]]:
    """Rows of a WebShaper jsonl (the released webshaper.500.jsonl shape) and every problem, by file and line:
    a line that is not JSON or not a row is skipped; a row with malformed items keeps its good items."""
    rows, problems = [], []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not JSON ({err.msg})")
            continue
        row, found = row_from_json(d, where)
        problems += found
        if row is not None:
            rows.append(row)
    return rows, problems


def write_rows(path: str | Path, rows: list[ShaperRow | dict]) -> Path:
    """Rows in the released shape, one JSON object per line with exactly the keys `ROW_KEYS`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        d = r.to_json() if isinstance(r, ShaperRow) else r
        lines.append(json.dumps({k: d[k] for k in ROW_KEYS}, ensure_ascii=False))
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return path
