"""A run's tasks and how they are scored: `data.task` -> task rows (rl/data.py builds them) and the
reward functions, composition and judge that score them (the task's default unless `reward.fns` says).

Never: roll out, score or start anything; it only decides what will.
"""

from __future__ import annotations

from rl.config import Config
from rl.data import file_tasks, target_token_tasks, visual_qa_tasks, world_qa_tasks


def load_tasks(cfg: Config, tokenizer) -> tuple[list[dict], dict]:
    """The tasks of `cfg.data.task` and how they are scored: {"rewards", "composition", "judge"}
    (the task's default unless cfg.reward.fns is given)."""
    d = cfg.data
    if d.task == "target_token":
        tasks, token_id = target_token_tasks(tokenizer, d.target_token, d.num_tasks)
        default = {"rewards": {"target_token": {"token_id": token_id}}, "composition": None, "judge": None}
    else:
        default = DEFAULT_QA_SCORING
        if d.task == "world_qa":
            tasks = world_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed,
                                   nodes=d.qa_nodes, anchor_rate=d.qa_anchor_rate,
                                   one_page=d.qa_one_page)
        elif d.task == "visual_qa":
            tasks = visual_qa_tasks(cfg.env.world_seed, cfg.env.world_size, d.num_tasks, seed=cfg.run.seed)
            default = DEFAULT_VRAG_SCORING
        else:
            tasks = file_tasks(d.path, d.num_tasks)
    if cfg.reward.fns is None:
        return tasks, default
    return tasks, {"rewards": cfg.reward.fns, "composition": cfg.reward.composition, "judge": cfg.reward.judge}


#: question-answering tasks: WebSailor's 0.1 format + 0.9 answer, the answer by a rule judge on the
#: task's gold answers (an LLM judge by configuration: reward.judge={backend: openai | engine, ...})
DEFAULT_QA_SCORING = {"rewards": {"format": {"style": "websailor"}, "judge": {"kind": "gaia"}},
                      "composition": "websailor", "judge": {"backend": "rule"}}
#: visual questions (VRAG-RL, SEEDS 4.3): 0.7 answer + 0.1 pattern + 0.2 NDCG of the retrieved pages,
#: gated by the pattern; the answer by a rule judge on the gold answers (an LLM judge by configuration)
DEFAULT_VRAG_SCORING = {"rewards": {"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}},
                        "composition": "vrag", "judge": {"backend": "rule"}}
