"""Scoring finished trajectories: rule rewards, judges, retrieval NDCG, weighted composition.

`base.py` holds the reward-function protocol and registry; `fns.py` (and `rm.py`, the trained reward model)
the registered reward functions on trajectory columns; `worker.py` the RewardWorker that a RewardGroup rank
runs; `rules.py`, `formats.py`, `retrieval.py`, `compose.py` the formulas; `prompts.py`, `judge.py` the LLM
judge; `engine_judge.py` the judge served on the project's own engine.
May import only the trajectory schema (`rollout/trajectory.py`) of the project; the one exception,
`engine_judge.py`, imports `rollout.engines` lazily (see its docstring).
"""

from reward import fns, rm  # noqa: F401  (register the built-in reward functions)
