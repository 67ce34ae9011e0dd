"""Memp procedural memory (SEEDS 12): records, builders, retrievers, update rules and the store.

    pi_mp(a_t | s_t, m),  m = Retrieve(M, task);   after a task with trajectory tau and reward r:
    M <- Update(M, Build(tau, r))                                                 (SEEDS 12.1)

`build.py` turns a trajectory into a memory (trajectory, script or both; a deterministic rule builder offline
and an LLM builder over an OpenAI-compatible client), `retrieve.py` scores memories against a task (random,
query cosine, facts, AveFact), `store.py` holds them (`MemoryStore`: a plain class, saved to and loaded from a
JSON file) and applies the update rules (vanilla, validation, reflect, with the deprecation rule).

Never: import Ray or anything of `rl/` (the store's actor lives in `rl/memory_group.py`).
"""

from rollout.memory.build import LLMBuilder, RuleBuilder, extract_facts, parse_steps
from rollout.memory.retrieve import RETRIEVERS, retrieve
from rollout.memory.store import MemoryRecord, MemoryStore, Outcome

__all__ = ["LLMBuilder", "RuleBuilder", "extract_facts", "parse_steps", "RETRIEVERS", "retrieve", "MemoryRecord",
           "MemoryStore", "Outcome"]
