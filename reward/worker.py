"""RewardWorker: scores trajectory batches (one per RewardGroup rank).

Owns: running the configured reward functions on a batch and combining their parts into the `reward` column
with a `reward.compose.Composition` (weights and gates); the judge the functions share (`reward.judge.SyncJudge`:
an OpenAI-compatible endpoint, a judge model served here on the project's engine, or the rule judge); the judge
and reward-function metrics. Returns only the new columns (`reward`, `reward_<part>`), which the controller
attaches to the batch it kept.

Never: import Ray (rl/cluster.py makes it an actor) or see columns it does not need; start a judge engine or load
a reward model before the first `score` (or `start`): building a worker to read its `columns` is free.

    RewardWorker(rewards={"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}},
                 composition="vrag",
                 judge={"backend": "engine", "engine": "vllm", "model_path": "/models/judge"})

`rewards` maps a registered name (`reward.base.REWARD_FNS`; the built-ins are in `reward/fns.py` and
`reward/rm.py`) to its keyword arguments; "name:label" runs a second instance of the same function, e.g.
{"judge": {"kind": "gaia"}, "judge:bc": {"kind": "browsecomp", "part": "answer_bc"}}. Every part is returned
as its own `reward_<part>` column. With a gate in the composition, the gateable functions (judges, reward
model) score only the rows where the gate part is non-zero (VRAG: no judge call without the pattern) and hold
NaN elsewhere: average such columns with a NaN-aware mean.

Scaling out: every rank builds its own judge. With judge={"backend": "engine", ...} each rank serves its own
copy of the judge model; ranks that should share one judge server point at it with {"backend": "openai", ...}.
"""

from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa

from envs.registry import check_arguments
from reward.base import REWARD_FNS, make_reward
from reward.compose import Composition, RewardTerm, get_composition
from reward.judge import SyncJudge
from rollout.trajectory import REWARD_PART_PREFIX


class RewardWorker:
    def __init__(self, rewards: dict[str, dict], composition: dict | str | None = None,
                 judge: dict | None = None):
        """rewards: reward name (or "name:label") -> constructor kwargs (see `reward.base.REWARD_FNS`).
        composition: a preset name of `reward.compose.COMPOSITIONS` ("websailor", "vrag", ...) or a
        `Composition` as a dict (terms, gate, scale); default: every part with weight 1.
        judge: the judge for reward functions that need one (`reward.judge.make_judge` configuration)."""
        if not rewards:
            raise ValueError("RewardWorker needs at least one reward function")
        self.judge = SyncJudge(judge) if judge else None
        self.fns = {}
        for key, kwargs in rewards.items():
            name = key.split(":", 1)[0]
            kwargs = dict(kwargs or {})
            if name in REWARD_FNS:  # each option of the type its constructor names, said here (at load), not mid-run
                init = getattr(REWARD_FNS[name], "__init__", None)
                if callable(init) and init is not object.__init__:
                    check_arguments(init, kwargs, f"reward {key!r}", skip=("self", "judge"))
                options_of = getattr(REWARD_FNS[name], "options_of", None)  # where its **options go (format: the style)
                if options_of is not None:
                    fn, options, data = options_of(kwargs)
                    check_arguments(fn, options, f"reward {key!r}", skip=data)
            if getattr(REWARD_FNS.get(name), "needs_judge", False):
                kwargs["judge"] = self.judge
            self.fns[key] = make_reward(name, **kwargs)
        produced: dict[str, str] = {}
        for key, fn in self.fns.items():
            for part in getattr(fn, "parts", ()):
                if part in produced:
                    raise ValueError(f"rewards {produced[part]!r} and {key!r} both produce the part {part!r}; "
                                     f"give one of them another name with part=...")
                produced[part] = key
        if isinstance(composition, str):
            self.composition: Composition | None = get_composition(composition)
        else:
            self.composition = msgspec.convert(composition, Composition) if composition else None
        declared = all(hasattr(fn, "parts") for fn in self.fns.values())
        if self.composition is not None and declared:
            missing = [p for p in self.composition.part_names if p not in produced]
            if missing:
                raise KeyError(f"the composition needs part(s) {missing} that no reward produces; the rewards "
                               f"produce {sorted(produced)} (set part=... on a reward, or change the composition)")
        gate = self.composition.gate if self.composition else None
        if gate is not None and gate in produced and getattr(self.fns[produced[gate]], "gateable", False):
            raise ValueError(f"the gate part {gate!r} comes from {produced[gate]!r}, which is itself gated; a gate "
                             "must be a cheap part (format, pattern) computed on every row")

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for fn in self.fns.values() for c in fn.columns))

    def start(self) -> None:
        """Start the judge (an engine judge loads its model here) and load reward models now, not on the first
        `score` (a benchmark or a warm-up does this)."""
        if self.judge is not None:
            self.judge.start()
        for fn in self.fns.values():
            model = getattr(fn, "model", None)
            if model is not None and hasattr(model, "load"):
                model.load()

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        parts: dict[str, np.ndarray] = {}
        gate = self.composition.gate if self.composition else None
        ungated = [(k, fn) for k, fn in self.fns.items() if not getattr(fn, "gateable", False)]
        gated = [(k, fn) for k, fn in self.fns.items() if getattr(fn, "gateable", False)]
        for key, fn in ungated:
            self._collect(parts, key, fn.score(batch), batch.num_rows)
        active = parts[gate] != 0 if gate is not None and gate in parts else None
        for key, fn in gated:
            self._collect(parts, key, fn.score(batch, active=active), batch.num_rows)
        composition = self.composition or Composition(terms=tuple(RewardTerm(p, 1.0) for p in parts))
        total = composition.combine(parts)
        cols = {"reward": pa.array(total.astype(np.float32))}
        cols |= {REWARD_PART_PREFIX + p: pa.array(v.astype(np.float32)) for p, v in parts.items()}
        return pa.RecordBatch.from_pydict(cols)

    @staticmethod
    def _collect(parts: dict[str, np.ndarray], key: str, out: dict, rows: int) -> None:
        for part, values in out.items():
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (rows,):
                raise ValueError(f"reward {key!r} part {part!r} returned shape {values.shape} for {rows} rows")
            if part in parts:
                raise ValueError(f"reward {key!r} returned the part {part!r}, which another reward already "
                                 "produced; set part=... on one of them")
            parts[part] = values

    def metrics(self, reset: bool = False) -> dict[str, float]:
        """Judge counters as "judge/<name>" (items, requests, cache_hits, retries, failures, latency, cache_size,
        and the rates cache_hit_rate = cache_hits / items and failure_rate = failures / items), and the
        reward functions' own counters as "<reward>/<name>" (e.g. format violations by kind). With `reset`,
        counters restart from zero afterwards."""
        out: dict[str, float] = {}
        if self.judge is not None and self.judge.started:
            m = self.judge.metrics()
            out |= {f"judge/{k}": v for k, v in m.items()}
            items = m.get("items", 0)
            out["judge/cache_hit_rate"] = m.get("cache_hits", 0) / items if items else 0.0
            out["judge/failure_rate"] = m.get("failures", 0) / items if items else 0.0
            if reset:
                self.judge.reset_metrics()
        for key, fn in self.fns.items():
            if hasattr(fn, "metrics"):
                out |= {f"{key}/{k}": v for k, v in fn.metrics().items()}
                if reset:
                    fn.reset_metrics()
        return out

    def clear_cache(self) -> None:
        """Forget the judge's cached verdicts (a benchmark measuring requests does this)."""
        if self.judge is not None:
            self.judge.clear_cache()

    def close(self) -> None:
        """Shut the judge down (an engine it serves included). The worker can start again on the next score."""
        if self.judge is not None:
            self.judge.close()
