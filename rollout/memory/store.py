"""The procedural memory library M and its update rules (SEEDS 12.1-12.2, Memp's ProcedureMem/memory.py).

A record is {query, trajectory, script, facts, hit, success}. After a batch of finished tasks (SEEDS 12.2):

    for each memory a trajectory retrieved:  hit += 1;  success += 1 if that trajectory succeeded
    deprecate every memory with  hit >= 3  and  success / hit < 0.5
    vanilla:    add a memory built from every new task
    validation: add memories of successful tasks only
    reflect:    as validation; for a failed task, rewrite the workflow it retrieved, in place

A task has several trajectories in RL (G samples): each counts as one use of what it retrieved; a task adds at
most one memory (its first successful trajectory; vanilla: else its first) and is failed when none of its
trajectories succeeded. What each task retrieved is logged under its key (the task uid) at retrieval and
consumed by the update, so reflect rewrites exactly the memories that task saw.

`MemoryStore` is a plain class (the Ray actor that all rollout workers share wraps it in rl/memory_group.py),
saved to and loaded from one JSON file.

Never: add a failed trajectory under validation or reflect; import Ray or anything of `rl/`.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rollout.memory.build import RuleBuilder, extract_facts
from rollout.memory.retrieve import RETRIEVERS, retrieve

BUILDS = ("trajectory", "script", "proceduralization")
UPDATES = ("vanilla", "validation", "reflect")
FORMAT_VERSION = 1
HEADER = ("Procedures from similar tasks solved before (procedural memory). Follow one that fits this task; "
          "the names and values in it belong to the old task.")


@dataclass
class MemoryRecord:
    id: int
    query: str
    trajectory: str = ""
    script: str = ""
    facts: dict = field(default_factory=dict)
    hit: int = 0
    success: int = 0
    source: str = "online"

    def text(self) -> str:
        parts = [f"Task: {self.query}"]
        if self.script:
            parts.append("Workflow:\n" + self.script)
        if self.trajectory:
            parts.append("Trajectory:\n" + self.trajectory.split("\n", 1)[-1])  # its first line is the task
        return "\n".join(parts)


@dataclass
class Outcome:
    """One finished trajectory: its task's key (uid) and question, its decoded text, reward and success."""
    key: str
    query: str
    text: str
    reward: float
    success: bool


def deprecated(hit: int, success: int, min_hits: int = 3, min_rate: float = 0.5) -> bool:
    """SEEDS 12.2: a memory used at least 3 times that helped fewer than half of them goes."""
    return hit >= min_hits and success / hit < min_rate


class MemoryStore:
    def __init__(self, build: str = "proceduralization", retrieve: str = "query", update: str = "vanilla",
                 top_k: int = 10, threshold: float | None = None, embedder="hashing", builder=None, seed: int = 0,
                 max_prompt_chars: int = 4000, log_size: int = 100_000):
        from envs.search_backends import make_embedder

        for name, value, allowed in (("build", build, BUILDS), ("retrieve", retrieve, RETRIEVERS),
                                     ("update", update, UPDATES)):
            if value not in allowed:
                raise ValueError(f"memory.{name}: {value!r} is not one of {', '.join(allowed)}")
        if update == "reflect" and build == "trajectory":
            raise ValueError("memory.update=reflect rewrites a memory's workflow: it needs build script or "
                             "proceduralization, not trajectory")
        if top_k < 1:
            raise ValueError(f"memory.top_k: {top_k} must be >= 1")
        self.build, self.method, self.rule, self.k, self.threshold = build, retrieve, update, top_k, threshold
        self.embedder = make_embedder(embedder)
        self.builder = builder or RuleBuilder()
        self.seed, self.max_prompt_chars, self.log_size = seed, max_prompt_chars, log_size
        self.records: dict[int, MemoryRecord] = {}
        self.next_id = 0
        self.retrieved: dict[str, list[int]] = {}  # task key -> ids it was shown (consumed by update)
        self._vectors: dict[int, dict] = {}
        self._query_cache: dict[str, dict] = {}

    # --- build ---------------------------------------------------------------------------------------

    def add(self, query: str, text: str, source: str = "online") -> MemoryRecord:
        """Build a memory from one trajectory (its decoded text) and add it."""
        traj = self.builder.trajectory(query, text) if self.build in ("trajectory", "proceduralization") else ""
        script = self.builder.script(query, text) if self.build in ("script", "proceduralization") else ""
        record = MemoryRecord(self.next_id, query, traj, script, extract_facts(query), source=source)
        self.records[record.id] = record
        self.next_id += 1
        return record

    # --- retrieve ------------------------------------------------------------------------------------

    def _embed(self, text_query: str, facts: dict, cache: dict | None) -> dict:
        if cache is not None and text_query in cache:
            return cache[text_query]
        keys = [k for k, v in facts.items() if v]
        texts = [text_query, " ; ".join(f"{k}: {facts[k]}" for k in keys)] + [facts[k] for k in keys]
        vecs = self.embedder.embed_queries(texts)
        out = {"query": vecs[0], "facts": vecs[1], "keys": dict(zip(keys, vecs[2:]))}
        if cache is not None:
            if len(cache) >= 10_000:
                cache.clear()
            cache[text_query] = out
        return out

    def _vector(self, r: MemoryRecord) -> dict:
        if r.id not in self._vectors:
            self._vectors[r.id] = self._embed(r.query, r.facts, None)
        return self._vectors[r.id]

    def retrieve(self, query: str, key: str | None = None) -> list[MemoryRecord]:
        """The memories `self.method` gives `query`, best first; logged under `key` for the next update."""
        records = list(self.records.values())
        if not records:
            found = []
        elif self.method == "random":
            seed = zlib.crc32(f"{self.seed}/{key or query}".encode())
            found = retrieve("random", self.k, None, num=len(records), seed=seed)
        else:
            q = self._embed(query, extract_facts(query), self._query_cache)
            mem = [self._vector(r) for r in records]
            found = retrieve(self.method, self.k, self.threshold, num=len(records),
                             query=q["facts" if self.method == "facts" else "query"],
                             matrix=np.stack([m["facts" if self.method == "facts" else "query"] for m in mem]),
                             query_facts=q["keys"], memory_facts=[m["keys"] for m in mem])
        chosen = [records[i] for i, _ in found]
        if key is not None:
            if len(self.retrieved) >= self.log_size and key not in self.retrieved:
                self.retrieved.pop(next(iter(self.retrieved)))  # the oldest entry (e.g. an evaluation's)
            self.retrieved[key] = [r.id for r in chosen]
        return chosen

    def prompt(self, records: list[MemoryRecord]) -> str | None:
        """The text injected into the agent's system prompt (None with no memory), at most max_prompt_chars."""
        if not records:
            return None
        text = HEADER + "".join(f"\n\n[Memory {i}]\n{r.text()}" for i, r in enumerate(records, 1))
        return text[:self.max_prompt_chars]

    # --- update --------------------------------------------------------------------------------------

    def update(self, outcomes: list[Outcome]) -> dict:
        """M <- Update(M, Build(tau, r)) for a batch of finished trajectories; returns counts."""
        counts = {"used": 0, "deprecated": 0, "added": 0, "reflected": 0}
        by_key: dict[str, list[Outcome]] = {}
        for o in outcomes:
            by_key.setdefault(o.key, []).append(o)
        seen = {key: list(self.retrieved.pop(key, [])) for key in by_key}
        for o in outcomes:  # every trajectory is one use of what its task retrieved
            for mid in seen[o.key]:
                if mid in self.records:
                    self.records[mid].hit += 1
                    self.records[mid].success += int(bool(o.success))
                    counts["used"] += 1
        for mid in [m for m, r in self.records.items() if deprecated(r.hit, r.success)]:
            del self.records[mid]
            self._vectors.pop(mid, None)
            counts["deprecated"] += 1
        for key, group in by_key.items():
            wins = [o for o in group if o.success]
            if wins or self.rule == "vanilla":
                first = (wins or group)[0]
                self.add(first.query, first.text)
                counts["added"] += 1
            elif self.rule == "reflect":  # a failed task: rewrite the workflows it retrieved, in place
                worst = group[0]
                for mid in seen[key]:
                    if mid in self.records:
                        r = self.records[mid]
                        r.script = self.builder.reflect(r.script, worst.reward, worst.query, worst.text)
                        counts["reflected"] += 1
        counts["size"] = len(self.records)
        return counts

    # --- persistence ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "next_id": self.next_id,
                "settings": {"build": self.build, "retrieve": self.method, "update": self.rule},
                "records": [asdict(r) for r in self.records.values()], "retrieved": self.retrieved}

    def load_state_dict(self, state: dict, where: str = "memory state") -> None:
        if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where}: not a memory file of format version {FORMAT_VERSION}")
        records = {}
        for i, row in enumerate(state.get("records") or []):
            try:
                r = MemoryRecord(**row)
            except TypeError as err:
                raise ValueError(f"{where}: record {i} is malformed ({err})") from None
            records[r.id] = r
        self.records, self.next_id = records, int(state["next_id"])
        self.retrieved = {str(k): [int(x) for x in v] for k, v in (state.get("retrieved") or {}).items()}
        self._vectors.clear()

    def save(self, path: str | Path) -> Path:
        """Atomically: written beside, then renamed into place."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state_dict(), ensure_ascii=False))
        os.replace(tmp, path)
        return path

    def load(self, path: str | Path) -> int:
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"memory file {str(path)!r}: cannot be read ({err})") from None
        self.load_state_dict(state, f"memory file {str(path)!r}")
        return len(self.records)

    def clear(self) -> None:
        self.records.clear()
        self.retrieved.clear()
        self._vectors.clear()
