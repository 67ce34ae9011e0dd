"""RAMP tasks (Retrieval-Augmented Mask Prediction, MaskSearch; SEEDS 7.1) from the world's pages or a corpus.

Owns: the paragraphs of a source (`world_pages`: the lead paragraph of every world page, cut into chunks of
consecutive sentences; `corpus_pages`: a jsonl / parquet file of {title, text} rows, paragraphs separated by
blank lines), salient-span extraction without a model (`world_spans`, `rule_spans`), the number of masks
(`num_masks`, the exact rule of SEEDS 7.1 step 4), and `ramp_tasks`, the generator itself. Deterministic per seed.

The generator, step by step (SEEDS 7.1; the numbers are its steps):
  1. paragraphs per page: up to len-1 of them, sampled (a page of one paragraph gives that one; ours, [M]:
     otherwise every one-paragraph row of a corpus would give nothing); paragraphs of fewer than
     `min_words` words or starting with '*' are skipped;
  2. salient spans. The paper asks an LLM (Qwen, the NER prompt "extract all the knowledge entities ...").
     Offline there is no LLM, so: on the world, the spans are what the world knows is in the paragraph (the
     names of world entities, the page's dates, years and quantities in their page surface form); on a
     corpus, a deterministic rule extractor (`rule_spans`): capitalised multi-word names, dates, numbers and
     years. This replaces the LLM NER prompt; it finds fewer kinds of span (no single-word names, concepts);
  6. (done first) the paragraph is made self-contained: the title is prepended ("<title>: <paragraph>")
     where it does not occur; done before step 3 so that a span that also occurs in the title counts as
     repeated;
  3. the title is removed from the spans, and every span occurring more than once (whole-word matches);
     spans nested inside another span's occurrence are dropped too (their mask would cut the other);
  4. the number of masks k (`num_masks`): |E| < 3 -> k ~ U{min(|E|,1) .. min(|E|,4)}; |E| = 3 -> 3;
     |E| >= 4 -> 4; |E| = 0 -> no sample;
  5. which spans: `random.choices` with replacement, weighted by length in words, purely numeric spans
     with the maximum weight; duplicates removed, sorted by position. So `mask_num` (the number of
     distinct masks, the curriculum key) can be smaller than k, as in the original;
  7. the first occurrence of each chosen span becomes `[mask]`; a sample that starts with `[mask]` is dropped;
  8. the row: {"uid", "tag": "ramp", "question": masked paragraph + `INSTRUCTION`, "answer": the (self-contained)
     paragraph, "masks", "mask_num", "k", "entities", "title", "source", "gold_ids"}.

Never: import anything of the project outside `envs/world/` (the instruction equals
`reward.fns.MASKSEARCH_INSTRUCTION`; a test checks it), call a model, fetch anything.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from envs.corpus import utf8_text
from envs.world.graph import ATTRIBUTES, World
from envs.world.pages import format_date, format_number, page_sentences

__all__ = ["INSTRUCTION", "MASK", "Page", "world_pages", "corpus_pages", "rule_spans", "world_spans",
           "num_masks", "choose_spans", "ramp_item", "ramp_tasks"]

MASK = "[mask]"
# SEEDS 7.1 step 8: after the masked paragraph (== reward.fns.MASKSEARCH_INSTRUCTION)
INSTRUCTION = "\n\nFill in all the [mask] and output the whole paragraph without changing its format."

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = re.compile(rf"\b(?:\d{{1,2}} (?:{_MONTHS}) \d{{3,4}}|(?:{_MONTHS}) \d{{1,2}}, \d{{3,4}}"
                   rf"|(?:{_MONTHS}) \d{{4}})\b")
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*%?(?![\w])")
_CONNECT = r"(?:of|the|and|de|da|del|der|du|la|le|van|von|y)"
_NAME = re.compile(rf"\b[A-Z][\w'\-]*(?:\s+(?:{_CONNECT}\s+)*[A-Z][\w'\-]*)+")
_LEADING = re.compile(r"^(?:The|A|An|In|On|At|By|For|From|After|Before|During|Since|This|That|These|Those)\s+")
_NUMERIC = re.compile(r"[\d.,%]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


@dataclass(frozen=True)
class Page:
    """A source page: its id, title, paragraphs, and (world only) the spans known to be in each paragraph."""

    id: str
    title: str
    paragraphs: tuple[str, ...]
    spans: tuple[tuple[str, ...], ...] | None = None  # per paragraph; None: `rule_spans` extracts them


# --------------------------------------------------------------------------------------------- sources

def world_spans(world: World, entity_id: str) -> list[str]:
    """What the world knows may be in the page of `entity_id`: every world entity's name linked to it, and its
    own attributes in the pages' surface forms (dates "13 March 1989", quantities "2,113", years "1954")."""
    e = world.entity(entity_id)
    out = [world.entities[i].name for i in world.neighbours(entity_id)]
    for attr, value in e.attributes.items():
        kind = ATTRIBUTES[attr].value
        out.append(format_date(value) if kind == "date" else format_number(value) if kind == "quantity"
                   else str(value))
    return list(dict.fromkeys(out))


def world_pages(world: World, sentences_per_paragraph: int = 2) -> list[Page]:
    """The world's pages in id order, each lead paragraph cut into paragraphs of `sentences_per_paragraph`
    consecutive sentences (a world page has one lead paragraph; Wikipedia pages have many)."""
    if sentences_per_paragraph < 1:
        raise ValueError(f"sentences_per_paragraph must be >= 1, got {sentences_per_paragraph}")
    pages = []
    for eid in sorted(world.entities):
        sents = page_sentences(world, eid)
        paras = tuple(" ".join(sents[i:i + sentences_per_paragraph])
                      for i in range(0, len(sents), sentences_per_paragraph))
        known = tuple(world_spans(world, eid))
        pages.append(Page(eid, world.entities[eid].name, paras, tuple(known for _ in paras)))
    return pages


def corpus_pages(path: str | Path) -> list[Page]:
    """Pages of a .jsonl or .parquet corpus of {title, text} rows (optional "id"); paragraphs are separated by
    blank lines (or single line breaks when there is no blank line). A bad row raises ValueError naming the
    file and the row (1-based)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"RAMP corpus {str(p)!r} is not a file")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = list(enumerate(pq.read_table(p).to_pylist(), 1))
    elif p.suffix in (".jsonl", ".ndjson", ".json"):
        text = utf8_text(p, "row")
        rows = []
        for i, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 and the like may stand in a row
            if not line.strip():
                continue
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}: row {i} is not valid JSON ({err})") from None
    else:
        raise ValueError(f"RAMP corpus {str(p)!r}: expected a .jsonl or .parquet file of {{title, text}} rows")
    pages, first_row = [], {}
    for i, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{p}: row {i} is a {type(row).__name__}, not an object with 'title' and 'text'")
        bad = [k for k in ("title", "text") if not isinstance(row.get(k), str) or not row[k].strip()]
        if bad:
            raise ValueError(f"{p}: row {i} has no non-empty string {bad} (each row needs 'title' and 'text')")
        text = row["text"].strip()
        parts = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
        paras = tuple(" ".join(x.split()) for x in parts if x.strip())
        page_id = str(row.get("id", f"{p.stem}-{i}"))
        if page_id in first_row:
            raise ValueError(f"{p}: row {i} repeats the id {page_id!r} of row {first_row[page_id]}")
        first_row[page_id] = i
        pages.append(Page(page_id, row["title"].strip(), paras))
    if not pages:
        raise ValueError(f"RAMP corpus {str(p)!r} has no rows")
    return pages


# ---------------------------------------------------------------------------------------------- spans

def rule_spans(text: str) -> list[str]:
    """The deterministic stand-in for the LLM NER prompt on any text: dates ("13 March 1989", "March 13,
    1989"), capitalised multi-word names ("Drebo Athletic Club", "University of Paris"; a leading "The", "In",
    ... is cut), numbers and years ("1954", "2,113", "3.5%"). In order of first appearance, distinct."""
    found: list[tuple[int, str]] = [(m.start(), m.group()) for m in _DATE.finditer(text)]
    for m in _NAME.finditer(text):
        name = _LEADING.sub("", m.group())
        if len(name.split()) >= 2:
            found.append((m.start() + len(m.group()) - len(name), name))
    found += [(m.start(), m.group()) for m in _NUMBER.finditer(text)]
    return list(dict.fromkeys(s for _, s in sorted(found, key=lambda x: x[0])))


def _pattern(span: str) -> re.Pattern:
    return re.compile(rf"(?<!\w){re.escape(span)}(?!\w)")


def _occurrences(text: str, span: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _pattern(span).finditer(text)]


def num_masks(num_entities: int, rng: random.Random) -> int:
    """SEEDS 7.1 step 4, exactly: |E| < 3 -> U{min(|E|,1) .. min(|E|,4)}; |E| = 3 -> U{3 .. 3}; |E| >= 4 -> 4."""
    if num_entities < 0:
        raise ValueError(f"num_entities must be >= 0, got {num_entities}")
    if num_entities >= 4:
        return 4
    if num_entities == 3:
        return rng.randint(3, 3)
    return rng.randint(min(num_entities, 1), min(num_entities, 4))


def _weight(span: str) -> int:
    return len(span.split())


def choose_spans(entities: list[str], k: int, rng: random.Random) -> list[str]:
    """SEEDS 7.1 step 5: k draws with replacement weighted by length in words (purely numeric spans get the
    maximum weight), duplicates removed (first draw order kept; the caller sorts by position)."""
    if k <= 0 or not entities:
        return []
    top = max(_weight(e) for e in entities)
    weights = [top if _NUMERIC.fullmatch(e) else _weight(e) for e in entities]
    return list(dict.fromkeys(rng.choices(entities, weights=weights, k=k)))


# --------------------------------------------------------------------------------------------- generator

def ramp_item(paragraph: str, title: str, candidates: Iterable[str] | None, rng: random.Random, *,
              source: str = "", page_id: str = "") -> dict | None:
    """One RAMP sample from one paragraph (module docstring, steps 2-8), or None when there is none."""
    text = " ".join(paragraph.split())
    if _pattern(title).search(text) is None:  # step 6, first (see the module docstring)
        text = f"{title}: {text}"
    spans = rule_spans(text) if candidates is None else list(candidates)
    entities = []
    for s in dict.fromkeys(x.strip() for x in spans):
        if not s or s == title or s.lower() == MASK:
            continue
        occ = _occurrences(text, s)
        if len(occ) == 1:  # step 3: absent or repeated spans go
            entities.append((s, occ[0]))
    # drop spans nested in another span's occurrence (a mask must not cut another span)
    entities = [(s, (a, b)) for s, (a, b) in entities
                if not any((a2 <= a and b <= b2) and (a2, b2) != (a, b) for _, (a2, b2) in entities)]
    entities.sort(key=lambda x: x[1][0])
    names = [s for s, _ in entities]
    k = num_masks(len(names), rng)
    if k == 0:
        return None
    chosen = set(choose_spans(names, k, rng))
    picked = [(s, pos) for s, pos in entities if s in chosen]  # sorted by position
    kept: list[tuple[str, tuple[int, int]]] = []
    for s, (a, b) in picked:  # partial overlaps (not nesting): the earlier span wins
        if kept and a < kept[-1][1][1]:
            continue
        kept.append((s, (a, b)))
    masked = text
    for _, (a, b) in reversed(kept):
        masked = masked[:a] + MASK + masked[b:]
    if masked.startswith(MASK):
        return None
    question = masked + INSTRUCTION
    digest = hashlib.sha1((question + "\n" + text).encode()).hexdigest()[:12]
    return {"uid": f"ramp-{digest}", "tag": "ramp", "question": question, "answer": text,
            "masks": [s for s, _ in kept], "mask_num": len(kept), "k": k, "entities": names,
            "title": title, "source": source, "gold_ids": [page_id] if page_id else []}


def ramp_tasks(pages: list[Page], seed: int = 0, *, source: str = "world", min_words: int = 5,
               max_tasks: int | None = None) -> list[dict]:
    """RAMP samples of every page in order (module docstring), distinct questions, deterministic per
    (pages, seed, source)."""
    rng = random.Random(f"ramp:{source}:{seed}")
    out, seen = [], set()
    for page in pages:
        idx = [i for i, par in enumerate(page.paragraphs)
               if len(par.split()) >= min_words and not par.lstrip().startswith("*")]
        if len(idx) > 1:  # step 1: up to len-1 paragraphs per page
            idx = sorted(rng.sample(idx, len(idx) - 1))
        for i in idx:
            cands = page.spans[i] if page.spans is not None else None
            item = ramp_item(page.paragraphs[i], page.title, cands, rng, source=source, page_id=page.id)
            if item is not None and item["question"] not in seen:
                seen.add(item["question"])
                out.append(item)
                if max_tasks is not None and len(out) >= max_tasks:
                    return out
    return out
