"""A run's tasks and how they are scored: `data.task` -> task rows (rl/data.py builds them) and the
reward functions, composition and judge that score them (`scoring`: the task's default unless `reward.fns`
says; `reward.judge` alone replaces the default's judge).

Also the dry runs the configuration edge (rl/config.py) makes of both before anything starts:
`check_scoring` builds the reward functions, composition and judge as a RewardWorker would (no judge engine
starts, no reward model loads, no request is sent), `check_task_file` reads `data.path` as the run will.

Never: roll out, score or start anything; it only decides what will.
"""

from __future__ import annotations

import inspect

from rl.data import file_tasks, target_token_tasks, visual_qa_tasks, world_qa_tasks

#: `cfg` below is an `rl.config.Config`; not imported, since rl/config.py runs this module's checks at load
Config = "rl.config.Config"


def load_tasks(cfg: Config, tokenizer) -> tuple[list[dict], dict]:
    """The tasks of `cfg.data.task` and how they are scored: {"rewards", "composition", "judge"}."""
    d = cfg.data
    token_id = None
    if d.task == "target_token":
        tasks, token_id = target_token_tasks(tokenizer, d.target_token, d.num_tasks)
    elif d.task == "world_qa":
        tasks = world_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed,
                               nodes=d.qa_nodes, anchor_rate=d.qa_anchor_rate, one_page=d.qa_one_page)
    elif d.task == "visual_qa":
        tasks = visual_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed)
    else:
        tasks = file_tasks(d.path, d.num_tasks)
    return tasks, scoring(cfg, token_id)


def scoring(cfg: Config, token_id: int | None = None) -> dict:
    """How the tasks of `cfg` are scored: {"rewards", "composition", "judge"} for `reward.worker.RewardWorker`.
    reward.fns given: they, with reward.composition and reward.judge. Otherwise the task's default (target_token:
    the fraction of `token_id`; questions: DEFAULT_QA_SCORING or DEFAULT_VRAG_SCORING), with reward.judge in
    place of the default's rule judge when it is given (an LLM judge by configuration alone)."""
    r = cfg.reward
    if r.fns is not None:
        return {"rewards": r.fns, "composition": r.composition, "judge": r.judge}
    if cfg.data.task == "target_token":
        default = {"rewards": {"target_token": {"token_id": token_id}}, "composition": None, "judge": None}
    elif cfg.data.task == "visual_qa":
        default = DEFAULT_VRAG_SCORING
    else:
        default = DEFAULT_QA_SCORING
    return dict(default, judge=r.judge) if r.judge is not None else dict(default)


#: question-answering tasks: WebSailor's 0.1 format + 0.9 answer, the answer by a rule judge on the
#: task's gold answers (an LLM judge by configuration: reward.judge={backend: openai | engine, ...})
DEFAULT_QA_SCORING = {"rewards": {"format": {"style": "websailor"}, "judge": {"kind": "gaia"}},
                      "composition": "websailor", "judge": {"backend": "rule"}}
#: visual questions (VRAG-RL, SEEDS 4.3): 0.7 answer + 0.1 pattern + 0.2 NDCG of the retrieved pages,
#: gated by the pattern; the answer by a rule judge on the gold answers (an LLM judge by configuration)
DEFAULT_VRAG_SCORING = {"rewards": {"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}},
                        "composition": "vrag", "judge": {"backend": "rule"}}


# --- dry runs for the configuration edge -----------------------------------------------------------------


def check_judge(config: dict) -> None:
    """A judge configuration (reward/judge.py make_judge) checked without starting it. Rule and openai judges
    are built (nothing connects before their first batch); an engine judge's keys are bound to
    `start_engine_judge` and its batching settings' values checked, and its model is not loaded."""
    from reward.judge import BatchedJudge, make_judge

    if config.get("backend") != "engine":
        make_judge(config)  # rule | openai, or make_judge's error naming the backends
        return
    from reward.engine_judge import EngineJudge, start_engine_judge

    try:
        start = inspect.signature(start_engine_judge).bind(**{k: v for k, v in config.items() if k != "backend"})
        own = inspect.signature(EngineJudge.__init__).bind(None, None, None, **start.arguments.get("settings", {}))
        BatchedJudge(max_concurrency=own.arguments.get("max_concurrency", 1), **own.arguments.get("settings", {}))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"judge backend 'engine': {exc}") from None


def check_scoring(cfg: Config):
    """The RewardWorker the run's `scoring` makes, built as the RewardGroup will build it (its reward functions,
    composition and judge are checked at construction; nothing starts). The target_token reward gets a stand-in
    token id (the real one comes from the tokenizer). ValueError / KeyError / TypeError say what is wrong."""
    from reward.worker import RewardWorker

    plan = scoring(cfg, token_id=0)
    if plan["judge"] is not None:
        check_judge(plan["judge"])
    return RewardWorker(plan["rewards"], plan["composition"], plan["judge"])


def check_task_file(path: str) -> str:
    """`data.path` read as the run will read it -> "tasks" (rows of {uid, question, answer[, gold_ids]},
    rl/data.py file_tasks) or "corpus" (rows of {title, text} and no question: a RAMP corpus for MaskSearch,
    envs/world/ramp.py corpus_pages; the first row decides). ValueError / OSError naming the file and the row."""
    keys = _first_row_keys(path)
    if {"title", "text"} <= keys and "question" not in keys:
        from envs.world.ramp import corpus_pages

        corpus_pages(path)
        return "corpus"
    file_tasks(path)
    return "tasks"


def _first_row_keys(path: str) -> set[str]:
    """The keys of a jsonl file's first row or a parquet file's columns; empty when that cannot be read (the
    reader then says why)."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(p).names)
        with p.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return set(row) if isinstance(row, dict) else set()
    except Exception:  # the reader that follows reports the file's problem with its row
        return set()
    return set()
