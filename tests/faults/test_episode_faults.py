"""One model turn cannot abort a run (issue 16): deep JSON in a tool call, a lone surrogate escape in a tool
argument, a bbox past float range, a grammar or env client or hook that raises. Each case goes through the
real agent loop (`run_episode`, the scripted-text engine `rollout.scripted.TextPolicyEngine`) and, where it
reached the dispatcher before, through `RolloutWorker.run_group` on the HF engine: the episode ends alone
(an invalid-action or tool-error observation, or finish "error" with its tokens kept and counted), never
its group; cancellation still cancels."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import AutoTokenizer

from envs.base import LocalEnv, Observation
from envs.search_backends import BM25Backend, Passage
from envs.tools.search import SearchTool
from reward.worker import RewardWorker
from rollout.agent import AgentConfig, EpisodeHooks, run_episode
from rollout.chat import ChatTemplate
from rollout.engines import SamplingParams
from rollout.formats import FORMATS, VRAGFormat
from rollout.formats.react import INVALID_TOOL_CALL, ReActFormat
from rollout.scripted import TextPolicyEngine
from rollout.worker import RolloutWorker

DEEP = "<tool_call>\n" + '{"a": ' * 100_000 + "\n</tool_call>"  # the issue's tool call: 100,000 levels
SURROGATE = '<tool_call>\n{"name": "search", "arguments": {"query": ["\\ud800"]}}\n</tool_call>'  # ASCII text
ANSWER = "<think>\ndone\n</think>\n\n<answer>42</answer>"
ROOMY = AgentConfig(max_tool_calls=5, max_turns=6, max_tokens_per_turn=10**7, max_context_tokens=10**7)
SAMPLING = SamplingParams(max_tokens=10**7)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def search_env() -> LocalEnv:
    passages = [Passage("p1", "Zatrea", "Zatrea is a city of 136,585 people.", "http://w/Zatrea"),
                Passage("p2", "Brenvo", "Brenvo founded the museum in 1987.", "http://w/Brenvo")]
    return LocalEnv([SearchTool(BM25Backend(passages))])


def scripted(tok, turns):
    """The engine of a scripted policy: `turns` is the list of its texts, or the policy itself."""
    if callable(turns):
        return TextPolicyEngine(turns, tok)
    it = iter(turns)
    return TextPolicyEngine(lambda observation: next(it), tok)


def episode(tok, turns, env=None, fmt=ReActFormat(), hooks=EpisodeHooks(), config=ROOMY):
    return asyncio.run(run_episode(scripted(tok, turns), env or search_env(), ChatTemplate(tok),
                                   {"uid": "q", "question": "How many people live in Zatrea?"}, SAMPLING,
                                   config, fmt, hooks))


# --- the "Why" items, one episode each -----------------------------------------------------------------


def test_deep_json_tool_call_is_an_invalid_action():
    action = ReActFormat().parse(DEEP)  # was: RecursionError out of json.loads
    assert action.kind == "invalid" and action.error == INVALID_TOOL_CALL


def test_deep_json_tool_call_is_an_observation_and_the_episode_goes_on(tok):
    ep = episode(tok, [DEEP, ANSWER])
    assert ep.record.finish == "answer" and ep.record.answer_text == "42"
    assert ep.metrics["invalid_actions"] == 1 and "error" not in ep.metrics
    assert {"role": "tool", "content": INVALID_TOOL_CALL} in ep.messages


def test_lone_surrogate_in_a_tool_argument_is_the_tools_error_observation(tok):
    ep = episode(tok, [SURROGATE, ANSWER])  # was: TypeError tokenizing the search tool's echo of the query
    assert ep.record.finish == "answer" and "error" not in ep.metrics
    obs = [m["content"] for m in ep.messages if m["role"] == "tool"]
    assert len(obs) == 1 and "'search'" in obs[0] and "'query[0]'" in obs[0] and "surrogate" in obs[0]
    assert all(0xD800 > ord(c) or ord(c) > 0xDFFF for m in ep.messages for c in m["content"])


def test_an_observation_with_a_lone_surrogate_is_still_templated(tok):
    """A tool that echoes a surrogate some other way: the template makes it U+FFFD, never raises."""
    template = ChatTemplate(tok)
    turn = tok.encode("x", add_special_tokens=False)
    assert template.message_ids("tool", "a\ud800b", turn) == template.message_ids("tool", "a\ufffdb", turn)

    class Echo:
        name = "echo"
        schema = {"name": "echo", "parameters": {"type": "object", "properties": {}}}

        async def call(self, arguments):
            return Observation("page text \udfff end")

    call = '<tool_call>\n{"name": "echo", "arguments": {}}\n</tool_call>'
    ep = episode(tok, [call, ANSWER], env=LocalEnv([Echo()]))
    assert ep.record.finish == "answer"
    assert {"role": "tool", "content": "page text \ufffd end"} in ep.messages


def test_bbox_past_float_range_is_an_invalid_action():
    action = VRAGFormat().parse("<bbox>[" + "9" * 400 + ", 0, 10, 10]</bbox>")  # was: OverflowError
    assert action.kind == "invalid" and "finite" in action.reason


def test_unclosed_tags_parse_in_linear_time():
    """A degenerate turn (a policy repeating one tag) used to take seconds per parse (a quadratic regex)."""
    import time

    for fmt, text in ((ReActFormat(), "<answer>" * 50_000), (VRAGFormat(), "<search><answer>" * 50_000)):
        t0 = time.perf_counter()
        fmt.parse(text)
        assert time.perf_counter() - t0 < 0.5


# --- anything else that raises ends the episode alone, as finish "error" ---------------------------------


class Raises(ReActFormat):
    """A user grammar with a bug: raises on the second turn."""

    def __init__(self):
        self.turn = 0

    def parse(self, text):
        self.turn += 1
        if self.turn == 2:
            raise KeyError("grammar bug")
        return super().parse(text)


def test_an_exception_in_the_episode_ends_it_with_finish_error_and_keeps_its_tokens(tok):
    call = '<tool_call>\n{"name": "search", "arguments": {"query": ["Zatrea"]}}\n</tool_call>'
    ep = episode(tok, [call, call, ANSWER], fmt=Raises())
    r = ep.record
    assert r.finish == "error" and r.answer_text is None and r.num_turns == 2 and r.num_tool_calls == 1
    assert ep.metrics["error"] == "KeyError" and "grammar bug" in ep.metrics["error_message"]
    mask = np.asarray(r.loss_mask)
    assert len(r.response_ids) == len(mask) == len(r.rollout_logprobs)
    # turn 1, its observation, turn 2: both model turns are kept with loss mask 1
    model = [t for t, m in zip(r.response_ids, mask) if m == 1]
    assert tok.decode(model).count("<tool_call>") == 2 and (mask == 0).sum() > 0


@pytest.mark.parametrize("where", ["env", "system_prompt", "observation", "accept", "engine"])
def test_a_failing_env_client_hook_or_engine_ends_the_episode_as_error(tok, where):
    class Broken(LocalEnv):
        async def call(self, name, arguments, key=None):
            raise ConnectionError("env actor died")

    def boom(*_):
        raise RuntimeError(f"{where} hook failed")

    hooks = EpisodeHooks(**{where: boom}) if where in ("system_prompt", "observation", "accept") else EpisodeHooks()
    env = Broken([]) if where == "env" else search_env()
    call = '<tool_call>\n{"name": "search", "arguments": {"query": ["Zatrea"]}}\n</tool_call>'
    turns = boom if where == "engine" else [call, ANSWER]  # the engine: its policy raises
    ep = episode(tok, turns, env=env, hooks=hooks)
    assert ep.record.finish == "error" and ep.accepted
    assert ep.metrics["error"] == ("ConnectionError" if where == "env" else "RuntimeError")
    assert len(ep.record.prompt_ids) > 0  # a row the trainer takes, even when no prompt was built


def test_cancellation_still_cancels_the_episode(tok):
    class Hangs:
        policy_version = 0

        async def generate(self, prompt_ids, sampling, request_id=None, images=None):
            await asyncio.sleep(60)

    async def scenario():
        task = asyncio.create_task(run_episode(Hangs(), search_env(), ChatTemplate(tok), {"uid": "q", "question": "?"},
                                               SAMPLING, ROOMY))
        await asyncio.sleep(0.1)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())


# --- through RolloutWorker.run_group (where these reached the dispatcher) -----------------------------------


class DeepCall(ReActFormat):
    """Every model turn is the issue's deep tool call (a random policy writes none)."""

    def parse(self, text):
        return super().parse(DEEP)


class SurrogateCall(ReActFormat):
    def parse(self, text):
        return super().parse(SURROGATE)


class AlwaysRaises(ReActFormat):
    def parse(self, text):
        raise ValueError("grammar bug")


for _cls in (DeepCall, SurrogateCall, AlwaysRaises):
    FORMATS[f"faults_{_cls.__name__}"] = f"{__name__}:{_cls.__name__}"


def worker(tiny_model, fmt):
    return RolloutWorker("hf", tiny_model, {"dtype": "float32"}, env=search_env(),
                         agent={"format": f"faults_{fmt}", "max_turns": 3, "max_tokens_per_turn": 4,
                                "max_context_tokens": 4096})


@pytest.mark.parametrize("fmt", ["DeepCall", "SurrogateCall"])
def test_run_group_survives_the_why_items(tiny_model, fmt):
    w = worker(tiny_model, fmt)
    batch = asyncio.run(w.run_group({"uid": "q", "group": 0, "question": "Q?", "answer": "42"}, 2,
                                    {"max_tokens": 4, "temperature": 1.0}))
    assert batch.num_rows == 2 and batch.column("finish").to_pylist() == ["max_turns"] * 2
    assert w.stats["episode_errors"] == 0
    text = batch.column("response_text").to_pylist()[0]
    assert (INVALID_TOOL_CALL in text) if fmt == "DeepCall" else ("'query[0]'" in text)


def test_run_group_keeps_an_episode_that_raised_as_an_error_row_with_a_no_answer_reward(tiny_model):
    w = worker(tiny_model, "AlwaysRaises")
    batch = asyncio.run(w.run_group({"uid": "q", "group": 0, "question": "Q?", "answer": "42"}, 3,
                                    {"max_tokens": 4, "temperature": 1.0}))
    assert batch.num_rows == 3 and batch.column("finish").to_pylist() == ["error"] * 3
    assert w.stats["episode_errors"] == 3 and w.stats["episode_errors/ValueError"] == 3
    assert asyncio.run(w.metrics())["episode_errors"] == 3
    for mask in batch.column("loss_mask").to_pylist():  # the model's one turn is kept, to train on
        assert 0 < sum(mask) == len(mask)
    scored = RewardWorker({"format": {"style": "websailor"}, "exact_match": {}}, composition="websailor").score(batch)
    assert scored.column("reward").to_pylist() == [0.0] * 3  # what a row without an answer gets


# --- the tool layer: arguments that are not what the schema says are that tool's error observation ---------


class Probe:
    """A tool with crop's schema (an array of 4 numbers, an optional string) that counts its calls."""

    name = "probe"
    schema = {"name": "probe", "parameters": {
        "type": "object", "required": ["bbox"],
        "properties": {"bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                       "image": {"type": "string"}, "mode": {"type": "string", "enum": ["fit", "fill"]},
                       "opts": {"type": "object", "properties": {"k": {"type": "integer"}}}}}}

    def __init__(self):
        self.calls = 0

    async def call(self, arguments):
        self.calls += 1
        return Observation(f"ok {sorted(arguments)}")


BAD_ARGUMENTS = [  # (arguments, the argument the observation names, what it says)
    ([1, 2, 3, 4], None, "must be a JSON object"),
    ({}, "'bbox'", "is required"),
    ({"bbox": "1, 2, 3, 4"}, "'bbox'", "must be array, got string"),
    ({"bbox": [1, 2, 3]}, "'bbox'", "must have exactly 4 items, got 3"),
    ({"bbox": [1, 2, 3, True]}, "'bbox[3]'", "must be number, got boolean"),
    ({"bbox": [1, 2, 3, float("nan")]}, "'bbox[3]'", "must be finite"),
    ({"bbox": [1, 2, 3, float("-inf")]}, "'bbox[3]'", "must be finite"),
    ({"bbox": [1, 2, 3, 10**400]}, "'bbox[3]'", "past 64 bits"),
    ({"bbox": [1, 2, 3, 4], "image": "a\ud800"}, "'image'", "lone surrogate"),
    ({"bbox": [1, 2, 3, 4], "image": "x" * 70_000}, "'image'", "70000 characters"),
    ({"bbox": [1, 2, 3, 4], "image": ["p1"]}, "'image'", "must be string, got array"),
    ({"bbox": [1, 2, 3, 4], "mode": "stretch"}, "'mode'", "must be one of ['fit', 'fill']"),
    ({"bbox": [1, 2, 3, 4], "opts": {"k": 1.5}}, "'opts.k'", "must be integer, got number"),
    ({"bbox": [1, 2, 3, 4], "extra": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, "'extra", "nests deeper than 16"),
    ({"bbox": [1, 2, 3, 4], "x\udfff": 1}, None, "a key that is not text"),
    ({"bbox": [1, 2, 3, 4], "extra": list(range(20_000))}, None, "more than 10000 values"),
    ({"bbox": [1, 2, 3, 4], "extra": b"bytes"}, "'extra'", "not a JSON value"),
]


@pytest.mark.parametrize("arguments,names,says", BAD_ARGUMENTS, ids=[s for _, _, s in BAD_ARGUMENTS])
@pytest.mark.parametrize("client", ["EnvServer", "LocalEnv"])
def test_bad_arguments_are_the_tools_error_observation(client, arguments, names, says):
    from envs.server import EnvServer

    probe = Probe()
    env = EnvServer([probe]) if client == "EnvServer" else LocalEnv([probe])
    obs = asyncio.run(env.call("probe", arguments))
    assert obs.error and probe.calls == 0
    assert obs.text.startswith("Error: tool 'probe': ") and says in obs.text
    assert names is None or f"argument {names}" in obs.text
    assert obs.text.encode("utf-8") and len(obs.text) < 400  # tokenizable and short, whatever the argument
    if client == "EnvServer":
        assert obs.metadata["error_type"] == "bad_arguments" and env.metrics()["probe"]["bad_arguments"] == 1
        assert env.metrics()["probe"]["errors"] == 1 and not env._cache


@pytest.mark.parametrize("arguments", [
    {"bbox": [1, 2.5, 3, 4]}, {"bbox": [0, 0, 1e9, 4], "image": "p1", "mode": "fit", "opts": {"k": 2.0}},
    {"bbox": [1, 2, 3, 4], "episode_id": "q/0", "unknown": {"nested": ["ok"]}},  # keys the schema does not name
])
def test_arguments_the_schema_allows_reach_the_tool(arguments):
    probe = Probe()
    obs = asyncio.run(LocalEnv([probe]).call("probe", arguments))
    assert not obs.error and probe.calls == 1


def test_one_value_for_an_array_of_values_is_allowed_as_the_tools_take_it():
    """WebSailor's search takes a query or a list of queries; the schema says an array of strings."""
    from envs.base import check_arguments

    assert check_arguments("search", SearchTool.schema, {"query": "population of Zatrea"}) is None
    assert "query[0]" in check_arguments("search", SearchTool.schema, {"query": [["nested"]]})
    assert "'query'" in check_arguments("search", SearchTool.schema, {"query": 5})
