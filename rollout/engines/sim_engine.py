"""The simulated engine backend (`rollout.backend: sim`): the engine protocol with a GPU engine's timing.

Owns: `SimParams` (the latency model and the scripted policy, `rollout.sim`), `decode_step_seconds` and
`request_seconds` (the latency model, pure functions), and `SimEngine`, which answers `generate` with
token ids and logprobs after the modelled time, scaled by `time_scale` real seconds per simulated second.
It stands in for a policy served by vLLM on one GPU, so that the real controller, dispatcher, async
admission, partial rollout, agent loop, EnvGroup tools, RewardGroup and Arrow batches run at cluster
scale (64-256 engines, 10,000 episodes) on a few cores (benchmarks/scale.py).

The latency model (one request of `new` uncached prompt tokens that generates `gen` tokens, while `b`
sequences with `ctx` context tokens in all decode on the engine; continuous batching):

    seconds = new * prefill_s_per_token
              + gen * (decode_step_s + b * decode_s_per_seq + ctx * decode_s_per_context_token)

evaluated with the engine's load when the request starts and again half-way (a running batch changes).
Defaults: an 8B model in bf16 on one H100 SXM under vLLM: 7 ms per decode step alone (about 140 tokens/s
single-stream: the 16 GB of weights read at 3.35 TB/s plus launch overhead, CUDA graphs), 0.03 ms per
sequence in the batch and the KV cache read (Llama-3-8B: 128 KiB per token / 3.35 TB/s = 0.04 us per context
token), so 256 sequences of 1.5k tokens decode at about 9k tokens/s, in line with published vLLM figures for
Llama-3.1-8B on an H100 (8-12k output tokens/s at high concurrency); prefill at 0.035 ms per token (2 x 8e9
FLOPs at about half of 989 TFLOP/s). Automatic prefix caching: a turn's prompt is cached up to the end of the
episode's previous turn on this engine (and the n samples of a task share their first prompt), so only the
new tokens (the observation) are prefilled. At most `max_num_seqs` requests run at once; the rest queue.

The scripted policy (the ReAct grammar of `rollout/formats/react.py`): each turn is `<think>` + filler
tokens + a tool call, until the episode's drawn number of tool calls (lognormal, median `tool_calls`) is
made, then `<think>` + filler + `<answer>` + eos. Turn lengths are lognormal (median `tokens_per_turn`).
The first tool in `tools` is called with `{"query": [random words]}`; "visit", when listed, follows the
URLs the last search returned (as an agent reads results), each with a random `goal`. A caller that does not
stop at `</tool_call>` (a single-turn task) gets filler and eos. An episode is recognised by the ids of its
last tool call (random words make them unique); its state lives in a bounded LRU (an evicted episode
starts over as new: its prefill is then counted uncached).

Never: run a model, or claim anything about learning (the logprobs are random); sleep unscaled; import Ray.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .base import Generation, SamplingParams, aiter_buckets

#: words of the filler ("thinking") tokens, the search queries and the answers: plain lowercase text, so that
#: random sequences of their ids never decode to a tag of the grammar
WORDS = ("the of and to in is was for on that with as by at from his her which an were are this be has had "
         "city river born founded year company album school war team museum capital director novel river "
         "award painter church league bridge island county mayor series station film region village port "
         "author history church built named first second known early later during after before between "
         "under north south east west central old new great small public national").split()
URL = re.compile(r"\]\((https?://[^)\s]+)\)")


@dataclass(frozen=True)
class SimParams:
    """`rollout.sim`: the latency model (seconds are simulated seconds) and the scripted policy."""

    time_scale: float = 1.0                   # real seconds per simulated second
    prefill_s_per_token: float = 3.5e-5
    decode_step_s: float = 7e-3
    decode_s_per_seq: float = 3e-5
    decode_s_per_context_token: float = 4e-8
    max_num_seqs: int = 256
    tokens_per_turn: float = 256.0            # median generated tokens per turn (lognormal)
    tokens_sigma: float = 0.6
    tool_calls: float = 4.0                   # median tool calls per episode (lognormal; sigma 0: exactly this)
    tool_calls_sigma: float = 0.0
    tools: tuple[str, ...] = ("search", "visit")
    query_words: int = 4
    cache_episodes: int = 65536               # episodes whose state (and prefix cache) an engine keeps
    engines_per_actor: int = 1                # engines one Ray actor process hosts (rl/cluster.py ActorGroup)

    def __post_init__(self):
        for name in ("time_scale", "tokens_per_turn", "max_num_seqs", "query_words", "cache_episodes",
                     "engines_per_actor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"rollout.sim.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("prefill_s_per_token", "decode_step_s", "decode_s_per_seq", "decode_s_per_context_token",
                     "tokens_sigma", "tool_calls", "tool_calls_sigma"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"rollout.sim.{name} must be >= 0, got {getattr(self, name)!r}")
        if isinstance(self.tools, str) or not self.tools or not all(isinstance(t, str) for t in self.tools):
            raise ValueError(f"rollout.sim.tools must be a non-empty list of tool names, got {self.tools!r}")
        object.__setattr__(self, "tools", tuple(self.tools))


def sim_params(options: dict | None) -> SimParams:
    """`SimParams` from the `rollout.sim` mapping; an unknown key is a ValueError naming it and the allowed ones."""
    options = dict(options or {})
    allowed = list(SimParams.__dataclass_fields__)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown rollout.sim key(s) {unknown}; allowed: {allowed}")
    return SimParams(**options)


def decode_step_seconds(p: SimParams, running: int, context_tokens: int) -> float:
    """One decode step of a continuous batch of `running` sequences holding `context_tokens` in all."""
    return p.decode_step_s + running * p.decode_s_per_seq + context_tokens * p.decode_s_per_context_token


def request_seconds(p: SimParams, new_tokens: int, gen_tokens: int, running: int, context_tokens: int) -> float:
    """Simulated seconds of one request: prefill of its uncached tokens, then `gen_tokens` decode steps."""
    return new_tokens * p.prefill_s_per_token + gen_tokens * decode_step_seconds(p, running, context_tokens)


@dataclass
class _Episode:
    calls: int            # tool calls made
    target: int           # tool calls it will make before answering
    length: int           # prompt + generated ids at its last turn (the prefix cached on this engine)
    last: str = ""        # the tool of its last call
    urls: list = field(default_factory=list)  # result URLs of its last search, not visited yet


class SimEngine:
    """A simulated GPU engine (module docstring). `stats()`: busy fraction, tokens, modelled and slept time."""

    def __init__(self, model_path: str, *, seed: int = 0, request_timeout_s: float = 600.0, cpu_threads: int = 0,
                 sleep_mode: bool = False, **params):
        from transformers import AutoTokenizer

        self.params = sim_params(params)
        self.model_path = model_path
        self.tok = AutoTokenizer.from_pretrained(model_path)
        self.eos_id = self.tok.eos_token_id
        self.call_end = self.tok.convert_tokens_to_ids("</tool_call>")
        if self.call_end is None or self.call_end == self.tok.unk_token_id:
            raise ValueError(f"rollout.backend=sim: the tokenizer of {model_path} has no '</tool_call>' token "
                             "(the simulated policy speaks the ReAct grammar)")
        self.filler = np.array(sorted({i for w in WORDS for i in self.tok.encode(" " + w, add_special_tokens=False)}),
                               np.int32)
        self.think = self.tok.encode("<think>\n", add_special_tokens=False)
        self.rng = np.random.default_rng(seed)
        self.policy_version = 0
        self.request_timeout_s = request_timeout_s
        self.episodes: OrderedDict[bytes, _Episode] = OrderedDict()
        self.prompts: OrderedDict[int, None] = OrderedDict()  # first-turn prompts seen (prefix cache)
        self.running = 0
        self.context = 0
        self._slots = None
        self.reset_stats()

    # --- the protocol ------------------------------------------------------------------------

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, request_id: str | None = None,
                       images: list | None = None) -> Generation:
        p = self.params
        agent = self.call_end in sampling.stop_token_ids
        episode, key = self._episode(prompt_ids) if agent else (None, None)
        calls = episode.calls if episode else 0
        rng = np.random.default_rng([sampling.seed, calls]) if sampling.seed is not None else self.rng
        if agent and episode is None:
            target = int(round(p.tool_calls * (rng.lognormal(0.0, p.tool_calls_sigma) if p.tool_calls_sigma else 1)))
            episode = _Episode(0, min(target, 10_000), 0)
        new = len(prompt_ids) - episode.length if episode and episode.length else self._uncached(prompt_ids)
        ids, kind, tool = self._turn(rng, episode, sampling)
        cut = len(ids) > sampling.max_tokens
        ids = ids[:sampling.max_tokens]
        logprobs = (-rng.exponential(0.7, len(ids))).astype(np.float32).tolist()
        try:
            await asyncio.wait_for(self._run(new, len(ids), len(prompt_ids)), self.request_timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"simulated engine {self.model_path}: request {request_id or '(unnamed)'} not done "
                               f"within {self.request_timeout_s}s") from None
        if agent and not cut:
            self.episodes.pop(key, None)
            if kind == "call":
                episode.calls, episode.length, episode.last = episode.calls + 1, len(prompt_ids) + len(ids), tool
                self._remember(prompt_ids, ids, episode)
        self.stats_["requests"] += 1
        self.stats_["generated_tokens"] += len(ids)
        reason = "length" if cut or sampling.ignore_eos else "stop"
        return Generation(ids, logprobs, reason, policy_version=self.policy_version)

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        """Take every bucket of the stream (the transport's real path); the sync's modelled time is the sim
        trainer's (`rl/trainer/sim.py`), spent before it sends."""
        async for _ in aiter_buckets(buckets):
            pass
        self.policy_version = version

    async def sleep(self) -> None:
        pass

    async def wake(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    # --- the model ---------------------------------------------------------------------------

    async def _run(self, new_tokens: int, gen_tokens: int, prompt_len: int) -> None:
        """Queue for a slot, then sleep the modelled time in two halves (the batch changes meanwhile)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.params.max_num_seqs)
        async with self._slots:
            ctx = prompt_len + gen_tokens // 2
            self._enter(ctx)
            try:
                p, half = self.params, gen_tokens // 2
                await self._sleep(request_seconds(p, new_tokens, half, self.running, self.context))
                await self._sleep(request_seconds(p, 0, gen_tokens - half, self.running, self.context))
                self.stats_["prefill_tokens"] += new_tokens
            finally:
                self._leave(ctx)

    async def _sleep(self, seconds: float) -> None:
        want = seconds * self.params.time_scale
        t0 = time.perf_counter()
        await asyncio.sleep(want)
        self.stats_["modelled_s"] += seconds
        self.stats_["slept_s"] += want
        self.stats_["late_s"] += time.perf_counter() - t0 - want

    def _enter(self, ctx: int) -> None:
        if self.running == 0:
            self._busy_since = time.perf_counter()
        self.running += 1
        self.context += ctx
        self.stats_["max_running"] = max(self.stats_["max_running"], self.running)

    def _leave(self, ctx: int) -> None:
        self.running -= 1
        self.context -= ctx
        if self.running == 0:
            self.stats_["busy_s"] += time.perf_counter() - self._busy_since

    def reset_stats(self) -> None:
        self.stats_ = {"requests": 0, "generated_tokens": 0, "prefill_tokens": 0, "modelled_s": 0.0, "slept_s": 0.0,
                       "late_s": 0.0, "busy_s": 0.0, "max_running": self.running}
        self._busy_since = self._since = time.perf_counter()

    def stats(self) -> dict:
        """Counters since `reset_stats`; `busy_fraction`: share of the wall time with a request running;
        `late_fraction`: how much longer the sleeps took than asked (an event loop short of CPU: the
        simulation then runs slower than modelled)."""
        now = time.perf_counter()
        busy = self.stats_["busy_s"] + (now - self._busy_since if self.running else 0.0)
        out = dict(self.stats_, busy_s=busy, wall_s=now - self._since)
        out["busy_fraction"] = busy / out["wall_s"] if out["wall_s"] > 0 else 0.0
        out["late_fraction"] = out["late_s"] / out["slept_s"] if out["slept_s"] > 0 else 0.0
        return out

    # --- the scripted policy -----------------------------------------------------------------

    def _turn(self, rng: np.random.Generator, episode: _Episode | None, sampling: SamplingParams):
        """(ids, "call" | "answer" | "text", tool) of one turn."""
        p = self.params
        n = sampling.max_tokens if sampling.ignore_eos else \
            max(1, int(round(p.tokens_per_turn * (rng.lognormal(0.0, p.tokens_sigma) if p.tokens_sigma else 1))))
        if episode is None or sampling.ignore_eos:
            if sampling.ignore_eos:
                return self._filler(rng, n).tolist(), "text", ""
            return self._filler(rng, n - 1).tolist() + [self.eos_id], "text", ""
        if episode.calls < episode.target:
            if "visit" in p.tools and episode.urls:
                tool, arguments = "visit", {"url": [episode.urls.pop(0)], "goal": self._words(rng, p.query_words)}
            else:
                tool = next((t for t in p.tools if t != "visit"), p.tools[0])
                arguments = {"query": [self._words(rng, p.query_words)]}
            tail = self.tok.encode("\n</think>\n<tool_call>\n" + json.dumps({"name": tool, "arguments": arguments})
                                   + "\n</tool_call>", add_special_tokens=False)
            kind, end = "call", []
        else:
            tool, kind, end = "", "answer", [self.eos_id]
            tail = self.tok.encode(f"\n</think>\n<answer>{self._words(rng, 2)}</answer>", add_special_tokens=False)
        filler = self._filler(rng, max(0, n - len(self.think) - len(tail) - len(end)))
        return self.think + filler.tolist() + tail + end, kind, tool

    def _filler(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.filler[rng.integers(0, len(self.filler), n)]

    def _words(self, rng: np.random.Generator, k: int) -> str:
        return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), k))

    def _episode(self, prompt_ids: list[int]) -> tuple[_Episode | None, bytes | None]:
        """The episode whose last tool call ends at the last `</tool_call>` of the prompt (None: a new one);
        after a search, the URLs its results show."""
        try:
            end = len(prompt_ids) - 1 - prompt_ids[::-1].index(self.call_end)
        except ValueError:
            return None, None
        key = _key(prompt_ids[max(0, end - 63):end + 1])
        episode = self.episodes.get(key)
        if episode is not None and episode.last != "visit" and not episode.urls and "visit" in self.params.tools:
            episode.urls = URL.findall(self.tok.decode(prompt_ids[end + 1:], skip_special_tokens=True))
        return episode, key

    def _remember(self, prompt_ids: list[int], ids: list[int], episode: _Episode) -> None:
        whole = list(prompt_ids[-64:]) + ids
        self.episodes[_key(whole[-64:])] = episode
        while len(self.episodes) > self.params.cache_episodes:
            self.episodes.popitem(last=False)

    def _uncached(self, prompt_ids: list[int]) -> int:
        """A first turn: the n samples of a task share its prompt (prefix cache), so only the first pays."""
        key = hash(tuple(prompt_ids))
        if key in self.prompts:
            self.prompts.move_to_end(key)
            return 0
        self.prompts[key] = None
        while len(self.prompts) > self.params.cache_episodes:
            self.prompts.popitem(last=False)
        return len(prompt_ids)


def _key(ids) -> bytes:
    return np.asarray(ids, np.int32).tobytes()


__all__ = ["SimEngine", "SimParams", "decode_step_seconds", "request_seconds", "sim_params"]
