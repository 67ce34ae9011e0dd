"""The soak test's injections inside the rollout workers (tests/faults/test_soak.py), imported there by name
(`agent.hooks=tests.faults.soak_hooks:hooks`; importing this module registers the grammar "soak_react").

Owns: `SoakReAct` (the grammar "soak_react"): the ReAct grammar with a schedule per episode that replaces the
text of some turns before it is parsed, by `scripted_turn(key, n, turn)` (episode key "uid/sample", n: the
episode's number in this process; choices go round-robin over n, so every class and fault comes up):
    turn 1    the model's own text (a random-init policy writes malformed output anyway)
    turn 2    an adversarial turn of the fuzz harness's classes (tests/fuzz/harness.py), in turn
    turn 3    a search for the question; in one episode of EPISODE_ERROR_EVERY an `InjectedFault` instead (the
              episode ends alone with finish "error")
    turn 4    a visit of the page that search showed, with a goal never asked before (the env server's cache
              would otherwise answer it: the fault schedule's page faults must reach the world's server)
    turn 5 on an answer the stub judge reads: "soak:right" on odd samples, "soak:wrong" on even ones (so a
              group's answers differ and DUPO has groups to train on), and a judge fault marker per group
              (JUDGE_FAULTS: none, or the stub answers 500, hangs, a huge body, a body that is not JSON, a 503
              then a verdict)
One episode in UNTOUCHED_EVERY is left to the model. `hooks()`: the system-prompt hook remembers each task's
question and the observation hook the pages its searches showed, for the turns above.

Never: change a token (the trajectory holds what the model wrote; only the action parsed from it is replaced),
or be used outside a test.
"""

from __future__ import annotations

import itertools
import json
import random

from rollout.agent import EpisodeHooks
from rollout.formats import FORMATS
from rollout.formats.react import Action, ReActFormat
from tests.fuzz.harness import _MAKERS, ReActGrammar

FORMAT = "soak_react"
UNTOUCHED_EVERY = 9
EPISODE_ERROR_EVERY = 6
JUDGE_FAULTS = ("", "soak:judge-500", "soak:judge-hang", "soak:judge-huge", "soak:judge-badjson", "soak:judge-flaky")
ADVERSARIAL = tuple(sorted(_MAKERS))  # the fuzz harness's classes
_REACT = ReActGrammar()
_TASKS: dict[str, dict] = {}  # uid -> {"question", "urls"} seen in this process
_VISITS = itertools.count()
_EPISODES = itertools.count()


class InjectedFault(RuntimeError):
    """The exception the schedule raises inside an episode (counted as rollout/episode_errors/InjectedFault)."""


def call(name: str, arguments: dict) -> str:
    return _REACT.call(json.dumps({"name": name, "arguments": arguments}))


def scripted_turn(key: str, n: int, turn: int) -> str | None:
    """What replaces the model's text of `turn` (1-based) in episode number `n`, key `key` ("uid/sample"); None:
    the model's own text. Raises InjectedFault where the schedule ends the episode with an error."""
    if turn == 1 or n % UNTOUCHED_EVERY == UNTOUCHED_EVERY - 1:
        return None
    uid, _, sample = key.rpartition("/")
    task = _TASKS.get(uid, {})
    if turn == 2:
        return _MAKERS[ADVERSARIAL[n % len(ADVERSARIAL)]](random.Random(f"{key}#{n}"), _REACT)
    if turn == 3:
        if n % EPISODE_ERROR_EVERY == EPISODE_ERROR_EVERY - 1:
            raise InjectedFault(f"soak: injected failure in episode {key} at turn {turn}")
        return call("search", {"query": [task.get("question", "soak")]})
    if turn == 4:
        urls = task.get("urls", [])
        if not urls:
            return call("nosuchtool", {})
        return call("visit", {"url": urls[:1], "goal": f"the answer (visit {next(_VISITS)} of {key})"})
    verdict = "soak:right" if int(sample) % 2 else "soak:wrong"
    return _REACT.answer(f"{verdict} {JUDGE_FAULTS[n // 2 % len(JUDGE_FAULTS)]}".strip())  # the group's (n = 2 a task)


class SoakReAct(ReActFormat):
    """ReAct with the soak's schedule; `for_episode` gives each episode its number and its own turn count."""

    def __init__(self, key: str | None = None, n: int = 0):
        self.key, self.n, self.turn = key, n, 0

    def for_episode(self, key: str) -> SoakReAct:
        return SoakReAct(key, next(_EPISODES))

    def parse(self, text: str) -> Action:
        self.turn += 1
        injected = scripted_turn(self.key, self.n, self.turn) if self.key is not None else None
        return super().parse(text if injected is None else injected)


def _remember_question(task: dict) -> None:
    _TASKS.setdefault(task["uid"], {"question": task.get("question", ""), "urls": []})
    return None  # the run's system prompt stays


def _remember_pages(task: dict, obs):
    urls = obs.metadata.get("urls") or []
    seen = _TASKS.setdefault(task["uid"], {"question": task.get("question", ""), "urls": []})["urls"]
    seen.extend(u for hits in urls for u in (hits if isinstance(hits, list) else [hits]) if u not in seen)
    return obs


def hooks() -> EpisodeHooks:
    return EpisodeHooks(system_prompt=_remember_question, observation=_remember_pages)


FORMATS[FORMAT] = f"{__name__}:SoakReAct"
