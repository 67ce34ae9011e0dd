"""Page images of the synthetic world, with gold regions, and the visual QA tasks over them (SEEDS 4.1, 4.5).

The offline stand-in for VRAG-RL's corpus of slides and report pages. Three kinds of page, each fact of
the world shown on exactly one page (so a question has one gold page, as the NDCG reward of SEEDS 4.3
expects):

* document `doc_<entity id>`: the entity's name as a heading, then paragraphs that state its kind and
  every relation in which it is the subject ("Bara Kolen was born in Zatrea. Bara Kolen wrote ...");
* table `table_<type>_<i>`: people, organisations, works or events with their kind and their date or
  year (Born / Founded / Released / Date), a dozen rows or fewer per page;
* chart `chart_<attribute>_<group>_<i>`: a bar chart of one quantity (population, employees, students,
  members, sales, attendance) across a few entities of one kind, each bar labelled with its exact value.

A `Page` has an id, the text it shows (what a text retriever indexes), its size in raw pixels and its gold
regions: `regions[fact] = (x1, y1, x2, y2)` in raw pixels, where a fact is "<subject>|<relation>|<object>"
(documents) or "<entity>|<attribute>" (tables, charts). Pages are laid out eagerly (text, regions) and
drawn lazily (`page_image`, `page_png`): building the corpus of a large world costs font metrics only.

`visual_qa(world, pages, n, seed)` makes the tasks: question, answer, `gold_ids` (the one page that shows
the fact) and `gold_region` (that page's box of the answer).

Determinism: the layout is a pure function of (world, seed) and the font; the bytes of a drawn page also
depend on the font file and Pillow's FreeType. Fonts: DejaVu Sans from matplotlib's `mpl-data` where
matplotlib is installed, else the system's DejaVu, else Pillow's built-in font (`font_source()` says which;
regions are measured with the font actually used, so they are right whichever it is). Nothing is
downloaded.

Never: import anything of the project outside `envs/`; use global random state; reach the network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from envs.world.graph import ATTRIBUTES, RELATIONS, World
from envs.world.pages import article, format_date, format_number

Box = tuple[int, int, int, int]  # (x1, y1, x2, y2) in raw pixels, x2/y2 exclusive

DOC_SIZE = (1000, 1300)
TABLE_SIZE = (1300, 1000)
CHART_SIZE = (1200, 900)
MARGIN = 70
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (20, 20, 20), (110, 110, 110), (236, 239, 244)
_PALETTE = ((52, 101, 164), (204, 80, 62), (78, 154, 6), (117, 80, 123), (193, 125, 17), (46, 140, 140))

# ----------------------------------------------------------------------------------------------------
# Fonts

_SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF",
                     "/Library/Fonts", "/System/Library/Fonts/Supplemental")


@lru_cache(maxsize=None)
def _font_files() -> tuple[str | None, str | None, str]:
    """(regular, bold, source) DejaVu Sans files: matplotlib's mpl-data, then the system's, else none."""
    dirs = []
    spec = importlib.util.find_spec("matplotlib")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        dirs.append(("matplotlib", os.path.join(list(spec.submodule_search_locations)[0], "mpl-data", "fonts",
                                                "ttf")))
    dirs += [("system", d) for d in _SYSTEM_FONT_DIRS]
    for source, d in dirs:
        regular, bold = os.path.join(d, "DejaVuSans.ttf"), os.path.join(d, "DejaVuSans-Bold.ttf")
        if os.path.isfile(regular):
            return regular, bold if os.path.isfile(bold) else regular, f"{source}:{regular}"
    return None, None, "pillow-builtin"


def font_source() -> str:
    """Which font pages are drawn with: "matplotlib:<path>", "system:<path>" or "pillow-builtin"."""
    return _font_files()[2]


@lru_cache(maxsize=64)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    regular, bold_file, _ = _font_files()
    path = bold_file if bold else regular
    if path is None:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    return ImageFont.truetype(path, size)


def text_box(x: float, y: float, text: str, size: int, bold: bool = False) -> Box:
    """Ink box of `text` drawn with its top-left anchor at (x, y)."""
    l, t, r, b = font(size, bold).getbbox(text)
    return int(x + l), int(y + t), int(x + r) + 1, int(y + b) + 1


def text_width(text: str, size: int, bold: bool = False) -> float:
    return font(size, bold).getlength(text)


def union(*boxes: Box, pad: int = 0) -> Box:
    return (min(b[0] for b in boxes) - pad, min(b[1] for b in boxes) - pad,
            max(b[2] for b in boxes) + pad, max(b[3] for b in boxes) + pad)


# ----------------------------------------------------------------------------------------------------
# Pages


@dataclass(frozen=True)
class Page:
    id: str
    kind: str  # "document" | "table" | "chart"
    title: str
    text: str  # what the page shows, as text (for retrieval)
    size: tuple[int, int]  # (width, height) in raw pixels
    regions: dict[str, Box]  # fact key -> box in raw pixels
    passages: tuple[str, ...] = ()  # retrieval units: a sentence, a table row, a bar, each with its context
    ops: tuple = field(repr=False, compare=False, default=())  # drawing operations (see `page_image`)


class _Canvas:
    """Records drawing operations and measures as it goes (nothing is drawn until `page_image`)."""

    def __init__(self):
        self.ops: list[tuple] = []

    def text(self, x: float, y: float, s: str, size: int, fill=BLACK, bold: bool = False) -> Box:
        self.ops.append(("text", (round(x), round(y)), s, size, bold, fill))
        return text_box(round(x), round(y), s, size, bold)

    def rect(self, box: Box, fill=None, outline=None, width: int = 1) -> None:
        self.ops.append(("rect", tuple(int(v) for v in box), fill, outline, width))

    def line(self, xy: tuple[int, int, int, int], fill=GREY, width: int = 1) -> None:
        self.ops.append(("line", tuple(int(v) for v in xy), fill, width))


def page_image(page: Page) -> Image.Image:
    """Draw a page (RGB, `page.size`)."""
    img = Image.new("RGB", page.size, WHITE)
    draw = ImageDraw.Draw(img)
    for op in page.ops:
        if op[0] == "text":
            _, xy, s, size, bold, fill = op
            draw.text(xy, s, fill=fill, font=font(size, bold))
        elif op[0] == "rect":
            _, box, fill, outline, width = op
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill, outline=outline, width=width)
        else:
            _, xy, fill, width = op
            draw.line(xy, fill=fill, width=width)
    return img


def page_png(page: Page) -> bytes:
    buf = io.BytesIO()
    page_image(page).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _header(canvas: _Canvas, width: int, title: str, subtitle: str, title_size: int = 36) -> int:
    """Title, a grey subtitle and a rule; returns the y where the body starts."""
    y = MARGIN - 10
    canvas.text(MARGIN, y, title, title_size, bold=True)
    y += int(title_size * 1.35)
    canvas.text(MARGIN, y, subtitle, 18, fill=GREY)
    y += 34
    canvas.line((MARGIN, y, width - MARGIN, y), fill=GREY, width=2)
    return y + 30


def _footer(canvas: _Canvas, size: tuple[int, int], page_id: str) -> None:
    canvas.text(MARGIN, size[1] - MARGIN + 20, f"Windward World · {page_id}", 14, fill=GREY)


# -- documents ---------------------------------------------------------------------------------------

def _relation_sentences(world: World, entity_id: str) -> list[list[tuple[str, str | None]]]:
    """Sentences about the entity as (text, fact key or None) runs: its kind, then every relation in
    which it is the subject, objects grouped by phrase ("X wrote A and B.")."""
    e = world.entity(entity_id)
    noun = f"{article(e.kind)} {e.kind}"
    sentences: list[list[tuple[str, str | None]]] = [[(f"{e.name} is {noun}.", None)]]
    groups: dict[str, list[tuple[str, str]]] = {}
    for r, o in ((r, o) for s, r, o in world.triples_of(entity_id) if s == entity_id):
        phrase = RELATIONS[r].phrase("forward", e.kind, world.entities[o].kind)
        groups.setdefault(phrase, []).append((r, o))
    for phrase, pairs in groups.items():
        before, after = phrase.split("{other}")
        runs: list[tuple[str, str | None]] = [(f"{e.name} {before}", None)]
        for i, (r, o) in enumerate(pairs):
            if i:
                runs.append((" and " if i == len(pairs) - 1 else ", ", None))
            runs.append((world.entities[o].name, f"{entity_id}|{r}|{o}"))
        runs.append((f"{after}.", None))
        sentences.append(runs)
    return sentences


def _document(world: World, entity_id: str, rng: random.Random) -> Page:
    e = world.entity(entity_id)
    page_id = f"doc_{entity_id}"
    width, height = DOC_SIZE
    canvas = _Canvas()
    y = _header(canvas, width, e.name, f"{e.kind.capitalize()} · document", title_size=38)
    size = rng.choice((20, 22, 24))
    line_h = int(size * 1.55)
    space = text_width(" ", size)
    right = width - MARGIN
    word_boxes: dict[str, list[Box]] = {}
    sentences = _relation_sentences(world, entity_id)
    per_paragraph = rng.choice((2, 3))
    text_lines = [e.name]
    for start in range(0, len(sentences), per_paragraph):
        x = MARGIN
        paragraph = sentences[start:start + per_paragraph]
        text_lines.append(" ".join("".join(s for s, _ in runs) for runs in paragraph))
        # a token is what lies between spaces, as pieces that keep the fact key of their run, so that
        # "Zatrea" and the "." after it wrap together and the box of "Zatrea" stays its own; a name (a run
        # with a fact key) is never broken across lines, so that its box is one tight box
        tokens: list[list[tuple[str, str | None]]] = [[]]
        for runs in paragraph:
            for s, key in runs:
                for j, piece in enumerate(s.split(" ") if key is None else [s]):
                    if j:
                        tokens.append([])
                    if piece:
                        tokens[-1].append((piece, key))
            tokens.append([])
        for token in filter(None, tokens):
            wlen = sum(text_width(s, size) for s, _ in token)
            if x > MARGIN and x + wlen > right:
                x, y = MARGIN, y + line_h
            for s, key in token:
                box = canvas.text(x, y, s, size)
                if key is not None:
                    word_boxes.setdefault(key, []).append(box)
                x += text_width(s, size)
            x += space
        y += line_h + int(size * 0.9)
    page_size = (width, max(height, y + 2 * MARGIN))  # a hub's long list of works makes a longer page
    _footer(canvas, page_size, page_id)
    regions = {key: union(*boxes, pad=2) for key, boxes in word_boxes.items()}
    passages = tuple(text_lines[1:])  # the paragraphs
    return Page(page_id, "document", e.name, "\n".join(text_lines), page_size, regions, passages,
                tuple(canvas.ops))


# -- tables ------------------------------------------------------------------------------------------

#: entity type -> (date attribute(s), table title, column label)
_TABLE_TYPES = {
    "person": (("birth_date",), "Birth dates of people", "Born"),
    "organisation": (("founding_year",), "Founding years of organisations", "Founded"),
    "work": (("release_date",), "Release dates of works", "Released"),
    "event": (("date",), "Dates of events", "Date"),
}


def _value_text(attr: str, value) -> str:
    kind = ATTRIBUTES[attr].value
    return format_date(value) if kind == "date" else format_number(value) if kind == "quantity" else str(value)


def _table(world: World, type_: str, ids: list[str], index: int, count: int, rng: random.Random) -> Page:
    attrs, title_base, label = _TABLE_TYPES[type_]
    page_id = f"table_{type_}_{index}"
    title = f"{title_base} (table {index} of {count})"
    width, height = TABLE_SIZE
    canvas = _Canvas()
    y = _header(canvas, width, title, "Table · Windward World records", title_size=32)
    size = 20
    header = ["Name", "Kind", label]
    rows = []
    for eid in ids:
        e = world.entities[eid]
        attr = next(a for a in attrs if a in e.attributes)
        rows.append((eid, attr, [e.name, e.kind, _value_text(attr, e.attributes[attr])]))
    pad_x, row_h = 16, int(size * 2.1)
    widths = [max(text_width(c, size, bold=True) for c in [header[j]] + [r[2][j] for r in rows]) + 2 * pad_x
              for j in range(3)]
    extra = (width - 2 * MARGIN - sum(widths)) / 3
    widths = [w + max(0.0, extra) for w in widths]
    xs = [MARGIN]
    for w in widths:
        xs.append(xs[-1] + w)
    stripe = rng.choice(((236, 239, 244), (240, 244, 236), (246, 240, 236)))
    canvas.rect((xs[0], y, xs[-1], y + row_h), fill=(60, 72, 88))
    for j, h in enumerate(header):
        canvas.text(xs[j] + pad_x, y + (row_h - size) / 2 - 2, h, size, fill=WHITE, bold=True)
    y += row_h
    regions: dict[str, Box] = {}
    lines = [title, " | ".join(header)]
    passages = [title]
    for i, (eid, attr, cells) in enumerate(rows):
        if i % 2:
            canvas.rect((xs[0], y, xs[-1], y + row_h), fill=stripe)
        for j, cell in enumerate(cells):
            canvas.text(xs[j] + pad_x, y + (row_h - size) / 2 - 2, cell, size)
        regions[f"{eid}|{attr}"] = (int(xs[2]), int(y), int(xs[3]), int(y + row_h))  # the value's cell
        regions[f"{eid}|row"] = (int(xs[0]), int(y), int(xs[3]), int(y + row_h))
        canvas.line((xs[0], y + row_h, xs[-1], y + row_h), fill=(200, 200, 200))
        lines.append(" | ".join(cells))
        passages.append(f"{cells[0]}, {cells[1]}: {label.lower()} {cells[2]} ({title_base.lower()}, table)")
        y += row_h
    canvas.rect((xs[0], y - row_h * (len(rows) + 1), xs[-1], y), outline=(60, 72, 88), width=2)
    _footer(canvas, TABLE_SIZE, page_id)
    return Page(page_id, "table", title, "\n".join(lines), TABLE_SIZE, regions, tuple(passages), tuple(canvas.ops))


# -- charts ------------------------------------------------------------------------------------------

#: chart group -> (attribute, kinds, title noun, axis label)
_CHART_GROUPS = {
    "population_city": ("population", ("city",), "cities", "Population"),
    "population_country": ("population", ("country",), "countries", "Population"),
    "employees_company": ("employees", ("company",), "companies", "Employees"),
    "students_university": ("students", ("university",), "universities", "Students"),
    "members_club": ("members", ("club",), "clubs", "Members"),
    "sales_book": ("sales", ("book",), "books", "Copies sold"),
    "sales_album": ("sales", ("album",), "albums", "Copies sold"),
    "sales_film": ("sales", ("film",), "films", "Tickets sold"),
    "attendance_event": ("attendance", ("festival", "summit", "championship", "prize"), "events", "Attendance"),
}


def _nice_max(v: int) -> tuple[float, float]:
    """(axis maximum, tick step): a round number at or above v, in 4 to 10 steps."""
    v = max(v, 1)
    exp = 10 ** (len(str(int(v))) - 1)
    for step_mult in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10):
        step = exp * step_mult
        if v / step <= 8:
            n = -(-v // step)
            return n * step, step
    return float(v), float(v)


def _wrap(name: str, size: int, max_width: float) -> list[str]:
    lines: list[str] = []
    for word in name.split(" "):
        if lines and text_width(lines[-1] + " " + word, size) <= max_width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _chart(world: World, group: str, ids: list[str], index: int, count: int, rng: random.Random) -> Page:
    attr, _, noun, axis = _CHART_GROUPS[group]
    page_id = f"chart_{group}_{index}"
    label = ATTRIBUTES[attr].label
    title = f"{label} of {noun} (chart {index} of {count})"
    width, height = CHART_SIZE
    canvas = _Canvas()
    top = _header(canvas, width, title, f"Bar chart · {axis}", title_size=30)
    left, right, bottom = MARGIN + 110, width - MARGIN, height - MARGIN - 110
    values = [world.entities[i].attributes[attr] for i in ids]
    vmax, step = _nice_max(max(values))
    plot_top = top + 40
    scale = (bottom - plot_top) / vmax
    tick = 0.0
    while tick <= vmax + 1e-9:  # grid and y labels
        ty = bottom - tick * scale
        canvas.line((left, round(ty), right, round(ty)), fill=(225, 225, 225))
        s = format_number(int(tick))
        canvas.text(left - 12 - text_width(s, 15), ty - 9, s, 15, fill=GREY)
        tick += step
    canvas.line((left, plot_top, left, bottom), fill=BLACK, width=2)
    canvas.line((left, bottom, right, bottom), fill=BLACK, width=2)
    canvas.text(MARGIN - 40, plot_top - 34, axis, 16, fill=GREY, bold=True)
    colour = rng.choice(_PALETTE)
    slot = (right - left) / len(ids)
    bar_w = min(90.0, slot * 0.6)
    regions: dict[str, Box] = {}
    lines = [title, axis]
    passages = [title]
    for i, (eid, v) in enumerate(zip(ids, values)):
        cx = left + slot * (i + 0.5)
        bar = (round(cx - bar_w / 2), round(bottom - v * scale), round(cx + bar_w / 2), bottom)
        bar = (bar[0], min(bar[1], bottom - 2), bar[2], bar[3])
        canvas.rect(bar, fill=colour)
        vs = format_number(v)
        vsize = 16 if text_width(vs, 16, bold=True) < slot - 6 else 13
        vbox = canvas.text(cx - text_width(vs, vsize, bold=True) / 2, bar[1] - vsize - 10, vs, vsize, bold=True)
        name = world.entities[eid].name
        nboxes = []
        for k, ln in enumerate(_wrap(name, 15, slot - 8)):
            nboxes.append(canvas.text(cx - text_width(ln, 15) / 2, bottom + 12 + k * 20, ln, 15))
        regions[f"{eid}|{attr}"] = union(vbox, bar, *nboxes, pad=3)
        lines.append(f"{name}: {vs}")
        passages.append(f"{axis} of {name}: {vs} ({label.lower()} of {noun}, bar chart)")
    _footer(canvas, CHART_SIZE, page_id)
    return Page(page_id, "chart", title, "\n".join(lines), CHART_SIZE, regions, tuple(passages), tuple(canvas.ops))


# -- the corpus of pages -----------------------------------------------------------------------------

def _chunks(ids: list[str], rng: random.Random, low: int, high: int) -> list[list[str]]:
    ids = list(ids)
    rng.shuffle(ids)
    out = []
    while ids:
        n = rng.randint(low, high)
        if 0 < len(ids) - n < low:  # no runt at the end
            n = len(ids) if len(ids) <= high else len(ids) - low
        out.append(ids[:n])
        ids = ids[n:]
    return out


def render_pages(world: World, seed: int | None = None) -> list[Page]:
    """Every page of the world: documents (one per entity), then tables, then charts.

    Deterministic per (world, seed); `seed` defaults to the world's seed. Each fact is on one page only.
    """
    seed = world.seed if seed is None else seed
    rng = random.Random(f"windward-visual:{world.seed}:{world.size}:{seed}")
    pages = [_document(world, eid, random.Random(f"{seed}:{eid}")) for eid in world.entities]
    for type_ in _TABLE_TYPES:
        ids = world.of_type(type_)
        chunks = _chunks(ids, rng, 6, 12)
        pages += [_table(world, type_, c, i, len(chunks), rng) for i, c in enumerate(chunks, 1)]
    for group, (attr, kinds, _, _) in _CHART_GROUPS.items():
        ids = [eid for k in kinds for eid in world.of_kind(k) if attr in world.entities[eid].attributes]
        chunks = _chunks(ids, rng, 4, 8)
        pages += [_chart(world, group, c, i, len(chunks), rng) for i, c in enumerate(chunks, 1)]
    return pages


# ----------------------------------------------------------------------------------------------------
# Visual QA tasks

def _uid(question: str, answer: str) -> str:
    return "vrag-" + hashlib.sha1((question + "\n" + answer).encode()).hexdigest()[:12]


_TABLE_QUESTIONS = {
    "birth_date": "On what date was {name} born?",
    "founding_year": "In which year was {name} founded?",
    "release_date": "On what date was {name} released?",
    "date": "On what date did {name} take place?",
}
_CHART_QUESTIONS = {
    "population": "What is the population of {name}?",
    "employees": "How many employees does {name} have?",
    "students": "How many students does {name} have?",
    "members": "How many members does {name} have?",
    "sales": "How many {unit} did {name} sell?",
    "attendance": "How many people attended {name}?",
}


def _task(question: str, answer: str, page: Page, fact: str, kind: str) -> dict:
    return {"uid": _uid(question, answer), "tag": "vrag", "question": question, "answer": answer,
            "gold_ids": [page.id], "gold_region": {"page_id": page.id, "bbox": list(page.regions[fact])},
            "page_kind": page.kind, "question_kind": kind, "fact": fact}


def _document_tasks(world: World, page: Page) -> list[dict]:
    eid = page.id[len("doc_"):]
    e = world.entities[eid]
    out = []
    for fact in page.regions:
        _, r, o = fact.split("|")
        okind = world.entities[o].kind
        # the answer must be unique: one object of that kind for (subject, relation)
        if sum(1 for x in world.objects(eid, r) if world.entities[x].kind == okind) != 1:
            continue
        before, after = RELATIONS[r].phrase("forward", e.kind, okind).split("{other}")
        question = f"{e.name} {before}which {okind}{after}?"
        out.append(_task(question, world.entities[o].name, page, fact, "relation"))
    return out


def _table_tasks(world: World, page: Page) -> list[dict]:
    out = []
    for fact in page.regions:
        eid, attr = fact.split("|")
        if attr == "row":
            continue
        e = world.entities[eid]
        question = _TABLE_QUESTIONS[attr].format(name=e.name, kind=e.kind)
        out.append(_task(question, _value_text(attr, e.attributes[attr]), page, fact, "table_value"))
    return out


def _chart_tasks(world: World, page: Page) -> list[dict]:
    out = []
    facts = list(page.regions)
    for fact in facts:
        eid, attr = fact.split("|")
        e = world.entities[eid]
        unit = "tickets" if e.kind == "film" else "copies"
        question = _CHART_QUESTIONS[attr].format(name=e.name, kind=e.kind, unit=unit)
        out.append(_task(question, format_number(e.attributes[attr]), page, fact, "chart_value"))
    if len(facts) >= 3:
        attr = facts[0].split("|")[1]
        best = max(facts, key=lambda f: world.entities[f.split("|")[0]].attributes[attr])
        noun = page.title.split(" of ", 1)[1].split(" (chart")[0]
        question = (f"In the bar chart \"{page.title}\", which of the {noun} has the largest "
                    f"{ATTRIBUTES[attr].label.lower()}?")
        out.append(_task(question, world.entities[best.split("|")[0]].name, page, best, "chart_max"))
    return out


def visual_qa(world: World, pages: list[Page] | None = None, n: int = 100, seed: int = 0,
              mix: dict[str, float] | None = None) -> list[dict]:
    """Up to `n` visual QA tasks over the pages, deterministic per (world, pages, seed).

    Task: {"uid", "tag": "vrag", "question", "answer", "gold_ids": [page id], "gold_region": {"page_id",
    "bbox": [x1, y1, x2, y2] in the page's raw pixels}, "page_kind", "question_kind", "fact"}. `mix` weighs
    the page kinds (default: documents, tables and charts equally); fewer than `n` only when the world has
    fewer facts.
    """
    pages = render_pages(world) if pages is None else pages
    mix = mix or {"document": 1.0, "table": 1.0, "chart": 1.0}
    unknown = set(mix) - {"document", "table", "chart"}
    if unknown:
        raise ValueError(f"visual_qa: unknown page kinds {sorted(unknown)} in mix; use document, table, chart")
    makers = {"document": _document_tasks, "table": _table_tasks, "chart": _chart_tasks}
    pools = {k: [t for p in pages if p.kind == k for t in makers[k](world, p)] for k in mix}
    rng = random.Random(f"visual-qa:{world.seed}:{world.size}:{seed}")
    for pool in pools.values():
        rng.shuffle(pool)
    total = sum(mix.values())
    quota = {k: int(round(n * w / total)) for k, w in mix.items()}
    out, seen = [], set()
    for k in mix:
        for t in pools[k][: quota[k]]:
            if t["question"] not in seen:
                seen.add(t["question"])
                out.append(t)
    leftovers = [t for k in mix for t in pools[k][quota[k]:]]  # fill up from the other kinds
    rng.shuffle(leftovers)
    for t in leftovers:
        if len(out) >= n:
            break
        if t["question"] not in seen:
            seen.add(t["question"])
            out.append(t)
    rng.shuffle(out)
    return out[:n]
