"""Tasks and the sampler that feeds the controller (DESIGN section 2, first box).

Owns: task rows (uid, prompt_ids, and whatever the reward needs), the built-in learnable task
of the spine, and `TaskSampler`, which walks the tasks in seeded epochs, a batch at a time, and can
save and restore its position.

Never: roll out or score.
"""

from __future__ import annotations

import numpy as np


def target_token_tasks(tokenizer, word: str, num_tasks: int) -> tuple[list[dict], int]:
    """The spine's built-in task: prompts asking for a word; the reward counts one token.

    Returns (tasks, token_id). The word must be a single token of the tokenizer (with or without
    a leading space), else ValueError naming it and what it encodes to.
    """
    token_id = None
    for form in (word, " " + word):
        ids = tokenizer.encode(form, add_special_tokens=False)
        if len(ids) == 1:
            token_id = ids[0]
            break
    if token_id is None:
        raise ValueError(f"data.target_token {word!r} is not one token of this tokenizer "
                         f"(it encodes to {tokenizer.encode(word, add_special_tokens=False)}); pick another word")
    tasks = []
    for i in range(num_tasks):
        messages = [{"role": "user", "content": f"Task {i}: write the word '{word}' as often as you can."}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
        tasks.append({"uid": f"target-{i}", "prompt_ids": [int(t) for t in prompt_ids]})
    return tasks, token_id


def world_qa_tasks(world_seed: int, world_size: str, num_tasks: int, seed: int = 0, nodes: tuple[int, int] = (3, 6),
                   anchor_rate: float = 0.0, one_page: bool = False) -> list[dict]:
    """SailorFog-QA questions on the synthetic world (multi-turn: the policy answers with tools).
    The same (world_seed, world_size) must be served by the EnvGroup."""
    from envs.world import generate_world, sailorfog_qa

    world = generate_world(seed=world_seed, size=world_size)
    items = sailorfog_qa(world, n=num_tasks, seed=seed, nodes=tuple(nodes), anchor_rate=anchor_rate,
                         one_page=one_page)
    if not items:
        raise ValueError(f"the {world_size} world (seed {world_seed}) yielded no SailorFog questions")
    return [{"uid": it["uid"], "question": it["question"], "answer": it["answer"]} for it in items]


def visual_qa_tasks(world_seed: int, world_size: str, num_tasks: int, seed: int = 0) -> list[dict]:
    """Visual questions on the world's rendered pages (VRAG-RL, SEEDS 4): each answer is read off one page
    image (a document, a table or a chart), whose id is the task's gold_ids. The EnvGroup must serve the
    same world (its image_search tool renders the same pages)."""
    from envs.visual import render_pages, visual_qa
    from envs.world import generate_world

    world = generate_world(seed=world_seed, size=world_size)
    items = visual_qa(world, render_pages(world), n=num_tasks, seed=seed)
    if not items:
        raise ValueError(f"the {world_size} world (seed {world_seed}) yielded no visual questions")
    return [{"uid": it["uid"], "question": it["question"], "answer": it["answer"], "gold_ids": it["gold_ids"]}
            for it in items]


def read_rows(path, what: str = "task file") -> list[tuple[str, dict]]:
    """(where, row) for every row of a .jsonl, .json (a list of rows), .csv or .parquet file; `where` names the
    file and its line (jsonl) or row. A missing file, text that is not UTF-8 and a line that is not JSON are
    ValueErrors (FileNotFoundError for the file) naming `what`, the file and the line."""
    import csv
    import io
    import json
    from pathlib import Path

    from envs.corpus import utf8_text

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{p}: row {i + 1}", row) for i, row in enumerate(pq.read_table(p).to_pylist())]
    text = utf8_text(p)
    if suffix == ".csv":
        return [(f"{p}: row {i + 1}", dict(r)) for i, r in enumerate(csv.DictReader(io.StringIO(text, newline="")))]
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{p}: a .json task file holds a list of rows, not a {type(data).__name__}")
        return [(f"{p}: row {i + 1}", r) for i, r in enumerate(data)]
    rows = []
    for i, line in enumerate(text.split("\n")):  # not splitlines: U+2028 and the like may stand inside a row
        if line.strip():
            try:
                rows.append((f"{p}: line {i + 1}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}: line {i + 1} is not valid JSON ({err})") from None
    return rows


def file_tasks(path: str, limit: int | None = None) -> list[dict]:
    """Tasks from a jsonl or parquet file of {uid, question, answer[, gold_ids]}.

    `question`: a non-empty string; `answer`: a non-empty string, or a non-empty list of them (several
    acceptable answers); `uid`: a string (default `<file stem>-<index>`), unique; `gold_ids`: a list of
    strings. Other keys are ignored. A row that breaks this is a ValueError naming the file, the line
    (jsonl) or row (parquet) and the field; nothing is converted (a number answer is written "1987").
    """
    from pathlib import Path

    p = Path(path)
    rows = read_rows(p, what="data.path")
    tasks, seen = [], set()
    for i, (where, row) in enumerate(rows[:limit] if limit else rows):
        task = _task_row(row, where, default_uid=f"{p.stem}-{i}")
        if task["uid"] in seen:
            raise ValueError(f"{where} repeats uid {task['uid']!r}")
        seen.add(task["uid"])
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{p}: no tasks")
    return tasks


def _task_row(row, where: str, default_uid: str) -> dict:
    """One checked task from a file row (see `file_tasks`); `where` names the file and row."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object with uid, question, answer")
    missing = [k for k in ("question", "answer") if row.get(k) in (None, "", [])]
    if missing:
        raise ValueError(f"{where} has no {missing} (each row needs uid, question, answer)")

    def wrong(field: str, want: str):
        value = row[field]
        return ValueError(f"{where}: field {field!r} is {type(value).__name__} {value!r:.80}, expected {want}")

    def strings(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) and v for v in value)

    if not isinstance(row["question"], str) or not row["question"].strip():
        raise wrong("question", "a non-empty string")
    answer = row["answer"]
    if not (isinstance(answer, str) or (strings(answer) and answer)):
        raise wrong("answer", 'a string (write a number as "1987") or a list of strings (several acceptable answers)')
    from reward.rules import normalize_answer

    for a in [answer] if isinstance(answer, str) else answer:
        if not normalize_answer(a):  # it would match an empty reply: every rollout scores as correct
            raise ValueError(f"{where}: answer {a!r:.80} is empty once normalised (case, punctuation, articles and "
                             "spaces removed, as the rule judge compares): give the answer's text")
    uid = row.get("uid")
    if uid is None:
        uid = default_uid
    elif not isinstance(uid, str) or not uid:
        raise wrong("uid", 'a non-empty string (write a number as "17")')
    task = {"uid": uid, "question": row["question"], "answer": answer}
    gold_ids = row.get("gold_ids")
    if gold_ids is not None and not strings(gold_ids):
        raise wrong("gold_ids", "a list of non-empty strings (page or document ids)")
    if gold_ids:
        task["gold_ids"] = gold_ids
    return task


class TaskSampler:
    """Seeded epochs over a list of tasks; `next_batch` numbers the tasks of a step 0..B-1 (`group`)."""

    def __init__(self, tasks: list[dict], batch_size: int, seed: int = 0):
        if not tasks:
            raise ValueError("TaskSampler: no tasks")
        if batch_size > len(tasks):
            raise ValueError(f"data.batch_size {batch_size} exceeds the {len(tasks)} tasks available")
        self.tasks, self.batch_size, self.seed = tasks, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._order = self._perm()

    def _perm(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.tasks))

    def next_batch(self) -> list[dict]:
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._perm()
        idx = self._order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return [dict(self.tasks[i], group=g) for g, i in enumerate(idx)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.seed = state["epoch"], state["pos"], state["seed"]
        self._order = self._perm()
