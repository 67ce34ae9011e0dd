"""One multi-turn, tool-using agent episode, token-in / token-out (SEEDS 3.6, 13 item 1).

    generate to the end of a tool call or of the turn -> parse the action -> call the tool through
    the env client -> append the observation ids (loss_mask 0) -> repeat,
    until an answer, the tool-call limit, or the context budget (then the forced-final-answer
    message is injected once and the model answers one last time).

Owns: `AgentConfig` (limits), `run_episode`, and the episode hooks (system prompt, observation,
filter). Many episodes run concurrently against one engine: each is an independent async task and
each engine request is independent (vLLM's continuous batching batches them).

Images (a vision-language policy and image tools, e.g. VRAG-RL): an observation's images are framed into
the ids by the template (`rollout/chat.py`), kept in order in the episode, sent with every later engine
request (the engine needs the pixels of every image its prompt shows) and stored on the trajectory
(`images`) for the trainer. A format names the role its observations take (`observation_role`: "tool"
for ReAct, "user" for VRAG-RL) and may word the first user message (`format_prompt`).

Several tool calls in one turn (`Action.calls`, the WebWatcher grammar) run concurrently (`call_tools`) and
come back as one observation, in the calls' order (`merge_observations`); each counts against max_tool_calls.

Failures: model output and tool failures are observations (the grammar never raises; the env client
answers errors as observations); anything that still raises inside an episode (a hook, templating, the
env client, the engine) ends that episode alone with finish "error", its tokens so far kept and the
exception's class in `Episode.metrics["error"]`. Only cancellation (an abort) leaves `run_episode`.

Never: re-tokenize history (ids only grow; the template pieces come from `rollout/chat.py`), raise
on model output or tool failures (they become observations), or import Ray.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from envs.base import EnvClient, Observation, error_observation
from rollout.chat import ChatTemplate, tokenizable
from rollout.engines.base import SamplingParams
from rollout.formats.react import ReActFormat
from rollout.trajectory import TrajectoryRecord

log = logging.getLogger("windward.rollout.agent")

# SEEDS 3.6: what the harness says when the context budget is reached
FORCED_ANSWER = ("You have now reached the maximum context length you can handle. You should stop making tool "
                 "calls and, based on all the information above, think again and provide what you consider the "
                 "most likely answer in the following format:<think>your final thinking</think>\n"
                 "<answer>your answer</answer>")


@dataclass
class AgentConfig:
    max_tool_calls: int = 40                 # WebSailor MAX_LLM_CALL_PER_RUN
    max_turns: int | None = None             # model turns (LLM calls) at most, valid or not; None: no bound
    max_context_tokens: int = 31 * 1024 - 500
    max_tokens_per_turn: int = 2048
    forced_answer_message: str = FORCED_ANSWER


@dataclass
class EpisodeHooks:
    """Recipe hooks. system_prompt(task) -> str | None (replaces the system prompt); memory(task) -> str | None,
    or a coroutine of it (text appended to the system prompt, e.g. retrieved procedural memory,
    rl/memory_group.py); observation(task, obs) -> Observation (truncation, summaries); accept(record) ->
    bool (False rejects the episode)."""

    system_prompt: Callable[[dict], str | None] | None = None
    memory: Callable[[dict], str | None | Awaitable[str | None]] | None = None
    observation: Callable[[dict, Observation], Observation] | None = None
    accept: Callable[[TrajectoryRecord], bool] | None = None


def hooks_factory(spec: str) -> Callable[[], EpisodeHooks]:
    """The function "package.module:function" names, imported and checked callable but not called (the
    configuration's dry run of `load_hooks`); ValueError naming the spec otherwise."""
    import importlib

    module, _, name = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not module or not name:
        raise ValueError(f"agent.hooks must be 'module:function', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), name)
    except Exception as err:  # ImportError, AttributeError, or whatever the module raises on import
        raise ValueError(f"agent.hooks {spec!r}: cannot import it ({type(err).__name__}: {err})") from None
    if not callable(factory):
        raise ValueError(f"agent.hooks {spec!r} is a {type(factory).__name__}, not a function returning "
                         "rollout.agent.EpisodeHooks")
    return factory


def load_hooks(spec: str | None) -> EpisodeHooks:
    """EpisodeHooks from "package.module:function" (the function takes no arguments and returns them);
    None gives no hooks. How a recipe's hooks reach remote rollout workers: by name, imported there."""
    if not spec:
        return EpisodeHooks()
    hooks = hooks_factory(spec)()
    if not isinstance(hooks, EpisodeHooks):
        raise ValueError(f"agent.hooks {spec!r} returned {type(hooks).__name__}, not rollout.agent.EpisodeHooks")
    return hooks


@dataclass
class Episode:
    record: TrajectoryRecord
    messages: list[dict]                     # the conversation as text (for logs, SFT data, judges)
    accepted: bool = True
    metrics: dict = field(default_factory=dict)


def stop_token_ids(tok, stop_tokens) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The format's stop tokens as ids where the vocabulary has each as one token (Qwen's </tool_call>), and as
    stop strings where it does not (SmolLM2 spells it in pieces; its unknown-token id would stop on the wrong
    token). The ids the engine returns still hold the matched text, so the parser sees the closing tag."""
    ids, texts = [], []
    for t in stop_tokens:
        tid = tok.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tok.unk_token_id and tok.convert_ids_to_tokens(tid) == t:
            ids.append(tid)
        else:
            texts.append(t)
    return tuple(ids), tuple(texts)


async def run_episode(engine, env: EnvClient, template: ChatTemplate, task: dict, sampling: SamplingParams,
                      config: AgentConfig = AgentConfig(), fmt: ReActFormat = ReActFormat(),
                      hooks: EpisodeHooks = EpisodeHooks(), sample: int = 0,
                      on_turn: Callable[[], Awaitable[None]] | None = None) -> Episode:
    """Run one episode of `task` ({"uid", "group", "question"}); returns its trajectory row.

    Raises only on cancellation (an abort at a weight sync). Any other exception in the episode (the
    grammar, templating, the env client, a hook, the engine) ends it with finish "error": the tokens so
    far are kept (loss mask as usual), `metrics["error"]` names the exception's class and the other
    episodes of the group go on."""
    episode_key = f"{task['uid']}/{sample}"  # keeps an episode's calls on one env server, scopes its state
    messages: list[dict] = []  # the conversation as text
    prompt: list[int] = []
    response: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    versions: list[int] = []
    tool_calls, turns, forced, finish, answer = 0, 0, False, None, None
    errors = 0
    error: Exception | None = None
    retrieved: list[str] = []  # page / image ids the tools showed, in order (VRAG-RL NDCG)
    images: list = []  # images shown to the model, in order (encoded bytes)

    def append(ids, is_model, lps=None):  # all three or none: the row stays consistent whatever fails
        lps = [0.0] * len(ids) if lps is None else list(lps)
        if len(lps) != len(ids):
            raise ValueError(f"the engine returned {len(ids)} token ids but {len(lps)} logprobs")
        response.extend(ids)
        mask.extend([1 if is_model else 0] * len(ids))
        logprobs.extend(lps)

    try:
        if hasattr(fmt, "for_episode"):  # e.g. VRAG-RL: per-episode de-duplication of shown images
            fmt = fmt.for_episode(episode_key)
        system = hooks.system_prompt(task) if hooks.system_prompt else None
        if hooks.memory:
            extra = hooks.memory(task)
            extra = await extra if inspect.isawaitable(extra) else extra
            if extra:
                base = system if system is not None else template.system
                system = f"{base}\n\n{extra}" if base else extra
        question = fmt.format_prompt(task["question"]) if hasattr(fmt, "format_prompt") else task["question"]
        messages = template.initial_messages(question, system)
        obs_role_of_tools = getattr(fmt, "observation_role", "tool")
        prompt = template.prompt_ids(messages)
        stop_ids, stop_texts = stop_token_ids(template.tok, fmt.stop_tokens)

        while finish is None:
            if on_turn is not None:  # e.g. wait while weights are being synced
                await on_turn()
            budget = config.max_context_tokens - len(prompt) - len(response)
            if budget <= 0:
                finish = "max_tokens"
                break
            # each turn its own seed under the sample's (SamplingParams.derive); no seed: the engine's stream
            sp = dataclasses.replace(sampling.derive("turn", turns), max_tokens=min(config.max_tokens_per_turn, budget),
                                     stop=tuple(sampling.stop) + tuple(getattr(fmt, "stop_strings", ())) + stop_texts,
                                     stop_token_ids=tuple(sampling.stop_token_ids) + stop_ids,
                                     include_stop_str=getattr(fmt, "include_stop_strings", sampling.include_stop_str))
            gen = await (engine.generate(prompt + response, sp, images=list(images)) if images
                         else engine.generate(prompt + response, sp))
            turns += 1
            versions.append(gen.policy_version)
            append(gen.token_ids, True, gen.logprobs)
            text = template.decode(gen.token_ids)
            ended = bool(gen.token_ids) and gen.token_ids[-1] == template.eos_id
            messages.append({"role": "assistant", "content": text[: -len(template.eos_text)] if ended else text})
            action = fmt.parse(text)
            if action.kind == "answer":
                finish, answer = "answer", tokenizable(action.answer)  # a grammar may return lone surrogates
                break
            if forced:  # the one forced last turn did not answer either
                finish = "max_tokens"
                break
            if config.max_turns is not None and turns >= config.max_turns:
                finish = "max_turns"
                break
            if gen.finish_reason == "length" and len(prompt) + len(response) >= config.max_context_tokens:
                obs_role, obs = "user", None  # out of room: force the answer below
            elif action.kind == "tool_call":
                if tool_calls >= config.max_tool_calls:
                    finish = "max_turns"
                    break
                if action.calls:  # several calls in one turn (WebWatcher): concurrently, results in the calls' order
                    room = config.max_tool_calls - tool_calls
                    tool_calls += min(len(action.calls), room)
                    obs = merge_observations(action.calls, await call_tools(env, action.calls, episode_key, room))
                else:
                    tool_calls += 1
                    obs = await env.call(action.name, action.arguments, key=episode_key)
                obs_role = obs_role_of_tools
                retrieved.extend(str(r) for r in obs.metadata.get("retrieved") or ())
            else:  # invalid call or no action: the fixed error observation, the episode goes on
                errors += 1
                obs_role, obs = obs_role_of_tools, error_observation(action.error)
            if obs is not None and hooks.observation:
                obs = hooks.observation(task, obs)
            shown = list(obs.images or ()) if obs is not None and template.vision is not None else []
            obs_text = tokenizable(obs.text) if obs is not None else ""  # a tool may echo a lone surrogate
            if obs is not None and hasattr(fmt, "wrap_observation"):  # WebWatcher: <tool_response> in a user turn
                obs_text = fmt.wrap_observation(obs_text)
            ids = template.message_ids(obs_role, obs_text, gen.token_ids, shown) if obs is not None else []
            if obs is None or len(prompt) + len(response) + len(ids) + 1 >= config.max_context_tokens:
                # SEEDS 3.6: at the budget, inject the forced-final-answer message once
                ids = template.message_ids("user", config.forced_answer_message, gen.token_ids)
                forced, obs_role = True, "user"
                messages.append({"role": "user", "content": config.forced_answer_message})
                if len(prompt) + len(response) + len(ids) >= config.max_context_tokens:
                    finish = "max_tokens"
                    break
            else:
                messages.append(template.message(obs_role, obs_text, shown))
                images.extend(shown)
            append(ids, False)
    except Exception as err:  # CancelledError is a BaseException: an abort still cancels the episode
        finish, answer, error = "error", None, err
        log.warning("episode %s ended with an error after %d turn(s): %s: %s", episode_key, turns,
                    type(err).__name__, str(err)[:500])
        if not prompt:  # it failed before its prompt existed; a row needs one (the trainer refuses none)
            prompt = _bare_prompt(template, task)

    record = TrajectoryRecord(
        uid=task["uid"], group=task.get("group", 0), sample=sample, prompt_ids=prompt, response_ids=response,
        loss_mask=mask, rollout_logprobs=logprobs, policy_version=min(versions) if versions else 0,
        num_turns=turns, finish=finish, answer_text=answer, num_tool_calls=tool_calls, retrieved=retrieved,
        images=images)
    accepted = True
    if hooks.accept:
        try:
            accepted = bool(hooks.accept(record))
        except Exception as err:  # the filter hook failed: the row stays, as an error
            record.finish, record.answer_text, error = "error", None, err
            log.warning("episode %s: the accept hook failed: %s: %s", episode_key, type(err).__name__, str(err)[:500])
    metrics = {"invalid_actions": errors, "forced_answer": int(forced), "policy_versions": sorted(set(versions))}
    if error is not None:
        metrics["error"] = type(error).__name__
        metrics["error_message"] = str(error)[:500]
    return Episode(record, messages, accepted, metrics)


MAX_PARALLEL_CALLS = 128  # WebWatcher runs a turn's tool calls in a pool of 128 workers (SEEDS 9.1)
RESULT_SEPARATOR = "\n=======\n"  # between the results of one turn's calls (WebSailor's query separator)


async def call_tools(env: EnvClient, calls: list, key: str | None = None, allowed: int | None = None,
                     max_concurrency: int = MAX_PARALLEL_CALLS) -> list[Observation]:
    """The observations of a turn's tool calls (actions of kind "tool_call" or "invalid"), in the calls'
    order, whatever order they finish in (SEEDS 14 item 19). At most `max_concurrency` run at once; calls past
    `allowed` (the episode's remaining tool-call budget) are not run. A failure is that call's observation
    (an invalid call, a tool's error, an exception of the env client); the other calls go on."""
    limit = asyncio.Semaphore(max_concurrency)

    async def one(i: int, action) -> Observation:
        if action.kind != "tool_call":
            return error_observation(action.error or "Error: not a tool call", tool=None)
        if allowed is not None and i >= allowed:
            return error_observation(f"Error: tool {action.name!r} was not called: the episode's tool-call limit "
                                     "is reached", tool=action.name)
        async with limit:
            try:
                return await env.call(action.name, action.arguments, key=key)
            except Exception as err:  # this call's failure; CancelledError (an abort) still propagates
                return error_observation(f"Error: tool {action.name!r} failed: {type(err).__name__}: {err}",
                                         tool=action.name)

    return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(calls))))


def merge_observations(calls: list, observations: list[Observation]) -> Observation:
    """One observation message for a turn's calls: each result under its number and tool, in order,
    separated by RESULT_SEPARATOR; the images in the same order; `retrieved` concatenated."""
    blocks = [f"[{i}] {a.name if a.kind == 'tool_call' else 'invalid call'}:\n{o.text}"
              for i, (a, o) in enumerate(zip(calls, observations), 1)]
    retrieved = [r for o in observations for r in o.metadata.get("retrieved") or ()]
    return Observation(RESULT_SEPARATOR.join(blocks), images=[im for o in observations for im in o.images],
                       metadata={"tool": "parallel", "calls": [a.name for a in calls], "retrieved": retrieved,
                                 "errors": sum(o.error for o in observations)},
                       error=all(o.error for o in observations))


def _bare_prompt(template: ChatTemplate, task: dict) -> list[int]:
    """The prompt of the question alone (no hook, no format wording): the row of an episode that failed
    before its own prompt existed (a hook raised) has no tokens of its own, but still needs a prompt."""
    try:
        return template.prompt_ids(template.initial_messages(str(task.get("question", ""))))
    except Exception:
        return []
