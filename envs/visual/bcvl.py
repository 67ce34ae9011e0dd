"""BrowseComp-VL-style visual questions over the synthetic world, and the loader of the released files
(SEEDS 9.2; checklist item 37).

The builder, as in the paper: a multi-hop question from a random walk over the knowledge graph (as
SailorFog-QA, SEEDS 3.2: here a walk that follows, from a key entity, relations whose object is unique for
its kind, so every hop has one answer), turned into a visual question by attaching an image of the key
entity (`envs/visual/pictures.py`: the entity's picture seen again, with a caption plate):

* Level 1 names the key entity: "The image shows Keagal Peapar, a writer. Keagal Peapar was born in a city.
  That city is located in which country?"
* Level 2 obscures every entity: "The writer in the image was born in a city. That city is located in which
  country?" The entity must be recognised from the image (reverse image search, OCR of its caption); the
  question contains none of the names of the walk's entities (`name_leaks`, the acceptance check).

Item: {"uid", "tag": "bcvl", "level", "question", "answer", "answers", "image_url", "image_entity",
"answer_entity", "path" (entity ids, key first), "hops" ([subject, relation, object] triples), "domain" (the
key entity's type)}.

The released files (`browsecomp-vl/bc_vl_level{1,2}.jsonl`): rows `question, image_path, answers, domain`,
`answers` a list stored as a string ("['Paris']", Python or JSON literal). `load_bcvl(path)` reads them
(the level from the file name where it says one), `write_bcvl` writes the builder's items in that form with
their images as PNG files next to them. A bad row is a ValueError naming the file, the line and the field.

Never: import anything of the project outside `envs/`; use global random state; reach the network.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from pathlib import Path

from envs.visual.pictures import WorldImages, png
from envs.world.graph import RELATIONS, World
from envs.world.pages import article

RELEASED_FIELDS = ("question", "image_path", "answers", "domain")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def unique_hops(world: World, entity_id: str, avoid: set[str]) -> list[tuple[str, str, str]]:
    """The triples (entity, relation, object) whose object is the only one of its kind the entity has by
    that relation (so "which <kind>" has one answer), to an entity not in `avoid`."""
    out = []
    for s, r, o in world.triples_of(entity_id):
        if s != entity_id or o in avoid:
            continue
        kind = world.entities[o].kind
        if sum(1 for x in world.objects(s, r) if world.entities[x].kind == kind) == 1:
            out.append((s, r, o))
    return out


def random_walk(world: World, rng: random.Random, hops: int,
                start: str | None = None) -> list[tuple[str, str, str]] | None:
    """`hops` unique-answer hops from `start` (random if None), never revisiting an entity; None if stuck."""
    current = start if start is not None else rng.choice(sorted(world.entities))
    seen, path = {current}, []
    for _ in range(hops):
        options = unique_hops(world, current, seen)
        if not options:
            return None
        hop = rng.choice(options)
        path.append(hop)
        current = hop[2]
        seen.add(current)
    return path


def render_question(world: World, hops: list[tuple[str, str, str]], level: int) -> str:
    """The question of a walk: Level 1 names the key entity, Level 2 refers to it as "the <kind> in the image"."""
    key = world.entity(hops[0][0])
    if level == 1:
        parts, subject = [f"The image shows {key.name}, {article(key.kind)} {key.kind}."], key.name
    elif level == 2:
        parts, subject = [], f"the {key.kind} in the image"
    else:
        raise ValueError(f"BrowseComp-VL level must be 1 or 2, got {level!r}")
    for i, (s, r, o) in enumerate(hops):
        skind, okind = world.entities[s].kind, world.entities[o].kind
        before, after = RELATIONS[r].phrase("forward", skind, okind).split("{other}")
        last = i == len(hops) - 1
        obj = f"which {okind}" if last else f"{article(okind)} {okind}"
        parts.append(_sentence(f"{subject} {before}{obj}{after}{'?' if last else '.'}"))
        subject = f"that {okind}"
    return " ".join(parts)


def name_leaks(world: World, question: str, entity_ids) -> list[str]:
    """The names of `entity_ids` the question contains (whole words, any case)."""
    return [world.entities[e].name for e in entity_ids
            if re.search(rf"(?<!\w){re.escape(world.entities[e].name)}(?!\w)", question, re.I)]


def bcvl_item(world: World, rng: random.Random, images: WorldImages, level: int, hops: int) -> dict | None:
    walk = random_walk(world, rng, hops)
    if walk is None:
        return None
    key, answer_entity = walk[0][0], walk[-1][2]
    path = [key] + [o for _, _, o in walk]
    question = render_question(world, walk, level)
    hidden = path[1:] if level == 1 else path  # level 1 names the key entity only
    if name_leaks(world, question, hidden):
        return None
    answer = world.entities[answer_entity].name
    digest = hashlib.sha1(f"{level}\n{question}\n{answer}".encode()).hexdigest()[:12]
    return {"uid": f"bcvl-{digest}", "tag": "bcvl", "level": level, "question": question, "answer": answer,
            "answers": [answer], "image_url": images.question_image_url(key, rng.randrange(images.variants)),
            "image_entity": key, "answer_entity": answer_entity, "path": path, "hops": [list(h) for h in walk],
            "domain": world.entities[key].type}


def browsecomp_vl(world: World, n: int, seed: int = 0, levels: tuple[int, ...] = (1, 2),
                  hops: tuple[int, int] = (2, 3), images: WorldImages | None = None) -> list[dict]:
    """Up to `n` distinct items (by question), levels in turn, each walk of hops[0]..hops[1] hops;
    deterministic per (world, seed). Fewer than `n` only when the world has fewer walks."""
    if not levels or any(level not in (1, 2) for level in levels):
        raise ValueError(f"browsecomp_vl: levels must be a non-empty subset of (1, 2), got {levels!r}")
    if not 1 <= hops[0] <= hops[1]:
        raise ValueError(f"browsecomp_vl: hops must be (low, high) with 1 <= low <= high, got {hops!r}")
    images = images or WorldImages(world)
    rng = random.Random(f"bcvl:{world.seed}:{world.size}:{seed}")
    out, seen = [], set()
    for _ in range(50 * n):
        if len(out) >= n:
            break
        item = bcvl_item(world, rng, images, levels[len(out) % len(levels)], rng.randint(*hops))
        if item is not None and item["question"] not in seen:
            seen.add(item["question"])
            out.append(item)
    return out


# ----------------------------------------------------------------------------------------------------
# The released format


def parse_answers(value, where: str) -> list[str]:
    """`answers` of a released row: a list stored as a string ("['a', 'b']", Python or JSON), or a list."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"{where}: field 'answers' is not a list literal: {value!r:.120}") from None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(a, (str, int, float)) for a in value):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of strings, got {value!r:.120}")
    return [str(a) for a in value]


def load_bcvl(path: str | Path, check_images: bool = True) -> list[dict]:
    """Tasks from a released BC-VL jsonl: {"uid", "question", "answer" (the list of accepted answers),
    "image_path" (absolute: relative paths are taken from the file's folder), "domain", "level" (1 or 2 from
    the file name, else None)}. ValueError naming the file, line and field for a bad row."""
    path = Path(path)
    level = next((int(m) for m in re.findall(r"level_?([12])", path.name)), None)
    tasks = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {i}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{where}: not a JSON object ({err})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: not a JSON object, got {type(row).__name__}")
        for key in ("question", "image_path", "answers"):
            if key not in row:
                raise ValueError(f"{where}: missing field {key!r} (released fields: {', '.join(RELEASED_FIELDS)})")
        for key in ("question", "image_path"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {row[key]!r:.80}")
        image = Path(row["image_path"])
        image = image if image.is_absolute() else path.parent / image
        if check_images and not image.is_file():
            raise ValueError(f"{where}: field 'image_path': no file at {image}")
        answers = parse_answers(row["answers"], where)
        digest = hashlib.sha1(f"{row['question']}\n{row['image_path']}".encode()).hexdigest()[:12]
        tasks.append({"uid": f"bcvl-{digest}", "question": row["question"], "answer": answers,
                      "image_path": str(image), "domain": str(row.get("domain", "")), "level": level})
    return tasks


def write_bcvl(items: list[dict], folder: str | Path, images: WorldImages) -> list[Path]:
    """The builder's items in the released form: folder/bc_vl_level{L}.jsonl (question, image_path relative
    to the folder, answers as a string, domain) and the question images as folder/images/<id>.png."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    files: dict[int, list[str]] = {}
    for it in items:
        name = it["image_url"].rsplit("/", 1)[-1] + ".png"
        target = folder / "images" / name
        if not target.exists():
            target.write_bytes(png(images.image(it["image_url"])))
        row = {"question": it["question"], "image_path": f"images/{name}", "answers": repr(list(it["answers"])),
               "domain": it["domain"]}
        files.setdefault(it["level"], []).append(json.dumps(row))
    out = []
    for level, rows in sorted(files.items()):
        out.append(folder / f"bc_vl_level{level}.jsonl")
        out[-1].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out
