"""The fuzz harness: adversarial model turns for one action grammar, and the path each takes in the agent loop.

`inputs(grammar, seed)` yields (class, text) pairs: random bytes decoded, random unicode (surrogates, RTL
marks, NUL, controls, combining marks, noncharacters), truncated tags, nested and unclosed tags, deep JSON,
huge numbers, NaN / Infinity, wrong-typed arguments, tags and special tokens inside arguments, the other
grammar mixed in, huge strings, JSON surrogate escapes, and valid actions (so the tools run too). The
counts per class are `COUNTS`; one seed gives the same inputs every run.

`drive(...)` runs one text the way `rollout/agent.py` does a model turn: parse -> (tool call through an
EnvServer with in-process tools | the invalid-action observation) -> the chat template's ids for the
observation, and says which way it went. Any exception escapes to the caller, which counts it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator

from envs.base import Observation, error_observation
from rollout.formats.react import Action

COUNTS = {  # inputs per class and grammar; the huge ones are few (each is ~100k characters to tokenize)
    "random_bytes": 1000, "random_unicode": 1000, "truncated_tags": 900, "nested_tags": 900, "deep_json": 900,
    "huge_numbers": 800, "nan_infinity": 700, "wrong_types": 1000, "tags_in_arguments": 800,
    "mixed_formats": 800, "surrogate_escapes": 800, "huge_strings": 40, "valid": 600,
}
OUTCOMES = ("answer", "tool_call", "invalid", "none")

WORDS = "Zatrea Brenvo population museum founded 1987 city river author film Kyoto percent who when".split()
# code points a tokenizer or a JSON decoder may trip on
_POOLS = [
    (0x0, 0x20),          # NUL and C0 controls
    (0x7F, 0xA0),         # DEL and C1 controls
    (0x300, 0x36F),       # combining marks
    (0x590, 0x6FF),       # Hebrew, Arabic (RTL)
    (0x200B, 0x200F),     # zero-width, LRM / RLM
    (0x202A, 0x202E),     # embeddings and overrides (RLO)
    (0x2066, 0x2069),     # isolates
    (0xD800, 0xDFFF),     # surrogates (lone in a str)
    (0xE000, 0xE0FF),     # private use
    (0xFDD0, 0xFDEF),     # noncharacters
    (0xFFF0, 0xFFFF),     # specials, U+FFFE / U+FFFF
    (0x1F300, 0x1F6FF),   # emoji
    (0x4E00, 0x4EFF),     # CJK
    (0x10FFF0, 0x10FFFF),  # the last plane
    (0x20, 0x7E),         # ASCII
]
_LETTERS = bytes((b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ " * 5)[:256])  # a byte -> a letter
_SPECIALS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<tool_response>", "</tool_response>", "<think>",
             "</think>", "<|vision_start|>", "<|image_pad|>", "\\n", "\\u0000", "\x00", "```json"]


class Grammar:
    """How a grammar writes an action; subclasses: ReAct and VRAG-RL."""

    name: str
    tags: tuple[str, ...]
    other_tags: tuple[str, ...]

    def call(self, payload: str) -> str: ...

    def answer(self, text: str) -> str:
        return f"<think>\nok\n</think>\n\n<answer>{text}</answer>"


class ReActGrammar(Grammar):
    name, tags, other_tags = "react", ("tool_call", "answer", "think", "tool_response"), ("search", "bbox")
    tools = ("search", "visit", "python")

    def call(self, payload: str) -> str:
        return f"<think>\nlook it up\n</think>\n\n<tool_call>\n{payload}\n</tool_call>"

    def payload(self, rng: random.Random, args: object, name: object = None) -> str:
        name = name if name is not None else rng.choice(self.tools + ("nosuchtool",))
        return json.dumps({"name": name, "arguments": args}, ensure_ascii=rng.random() < 0.5)

    def valid_args(self, rng: random.Random, name: str) -> dict:
        words = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
        return {"search": {"query": [words(rng.randint(1, 4)) for _ in range(rng.randint(1, 3))]},
                "visit": {"url": [f"http://w/{rng.choice(WORDS)}"], "goal": words(3)},
                "python": {"code": f"print({rng.randint(0, 99)})"}}.get(name, {"x": words(2)})

    def carry(self, rng: random.Random, value_json: str) -> str:
        """A call whose one argument is `value_json` (raw JSON text)."""
        name = rng.choice(self.tools)
        key = {"search": "query", "visit": "url", "python": "code"}[name]
        return self.call(f'{{"name": "{name}", "arguments": {{"{key}": {value_json}}}}}')


class VRAGGrammar(Grammar):
    name, tags, other_tags = "vrag", ("search", "bbox", "answer", "think"), ("tool_call", "tool_response")

    def call(self, payload: str) -> str:
        return f"<think>\nlook\n</think>\n<search>{payload}</search>"

    def bbox(self, content: str) -> str:
        return f"<think>\nzoom\n</think>\n<bbox>{content}</bbox>"

    def carry(self, rng: random.Random, value_json: str) -> str:
        if rng.random() < 0.5:
            return self.bbox(value_json)
        return self.bbox(f"[{value_json}, 0, 10, 10]" if rng.random() < 0.5 else f"[1, 2, {value_json}, 9]")


def _unicode(rng: random.Random, n: int) -> str:
    out = []
    for _ in range(n):
        lo, hi = rng.choice(_POOLS)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def _deep(rng: random.Random, depth: int) -> str:
    """JSON nested `depth` levels (objects, arrays or a random mix of 64 levels repeated), closed or not."""
    unit = [rng.choice(('{"a": ', "[")) for _ in range(64)] if rng.random() < 0.5 else [rng.choice(('{"a": ', "["))]
    opens = (unit * (depth // len(unit) + 1))[:depth]
    closes = "".join("}" if o.startswith("{") else "]" for o in reversed(opens))
    return "".join(opens) + "1" + (closes if rng.random() < 0.7 else closes[: rng.randint(0, len(closes))])


def _huge_number(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return str(rng.choice([-1, 1]) * rng.randint(10**18, 10**19)) + "0" * rng.randint(0, 5000)
    if kind == 1:
        return f"{rng.randint(1, 9)}e{rng.choice(['', '-', '+'])}{rng.randint(300, 100_000)}"
    if kind == 2:
        return "9" * rng.randint(300, 4400)  # around Python's 4,300-digit int limit
    if kind == 3:
        return f"-0.{'0' * rng.randint(300, 2000)}1"
    return str(2**63 + rng.randint(-2, 2))


def _wrong_value(rng: random.Random) -> str:
    return rng.choice(["1", "-7", "3.5", "true", "false", "null", "{}", "[]", '{"q": "x"}', "[[\"a\"]]", "[1, 2]",
                       '""', '"  "', "[null]", "[true, false, true, false]", '["a", "b", "c", "d", "e", "f"]',
                       '[1, 2, 3]', '[1, 2, 3, 4, 5]', '["1", "2", "3", "4"]', '[[1], [2], [3], [4]]'])


def inputs(grammar: Grammar, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(class, text) pairs, `COUNTS[class]` of each, the same for the same seed."""
    for cls, count in COUNTS.items():
        rng = random.Random(f"{seed}/{grammar.name}/{cls}")
        make = _MAKERS[cls]
        for _ in range(count):
            yield cls, make(rng, grammar)


def _random_bytes(rng, g):
    raw = rng.randbytes(rng.randint(0, 400))
    text = raw.decode("utf-8", errors=rng.choice(["replace", "ignore", "surrogateescape", "backslashreplace"]))
    return rng.choice([text, g.call(text), g.answer(text), f"<{rng.choice(g.tags)}>{text}"])


def _random_unicode(rng, g):
    text = _unicode(rng, rng.randint(0, 300))
    if isinstance(g, ReActGrammar):
        wrapped = [g.call(text), g.call(g.payload(rng, {"query": [text]})),
                   g.call('{"name": "search", "arguments": {"query": ["' + text + '"]}}')]
    else:
        wrapped = [g.call(text), g.bbox(text), f"<search>{text}"]
    return rng.choice([text, g.answer(text)] + wrapped)


def _truncated_tags(rng, g):
    if isinstance(g, ReActGrammar):
        whole = rng.choice([g.call(g.payload(rng, g.valid_args(rng, "search"), "search")), g.answer("Zatrea")])
    else:
        whole = rng.choice([g.call("population of Zatrea"), g.bbox("[10, 20, 110, 220]"), g.answer("136,585")])
    cut = whole[: rng.randint(0, len(whole))]
    partial = rng.choice(g.tags)
    return rng.choice([cut, cut + f"<{partial[: rng.randint(1, len(partial))]}", cut + f"</{partial}",
                       f"<{partial}" + cut])


def _nested_tags(rng, g):
    tags = g.tags + g.other_tags
    if rng.random() < 0.2:  # one tag repeated, never closed (a degenerate policy)
        return f"<{rng.choice(tags)}>" * rng.randint(100, 5000)
    parts = []
    for _ in range(rng.randint(1, 200)):
        tag = rng.choice(tags)
        parts.append(rng.choice([f"<{tag}>", f"</{tag}>", rng.choice(WORDS), f"<{tag}></{tag}>", "{", "}"]))
    return "".join(parts)


def _deep_json(rng, g):
    depth = rng.choice([2, 15, 16, 17, 100, 998, 999, 1000, 1001, 3000, 20_000, 100_000])
    deep = _deep(rng, depth)
    if isinstance(g, ReActGrammar):
        return rng.choice([g.call(deep), g.carry(rng, deep), g.call(g.payload(rng, {"query": ["x"]})[:-1] + ', "z": '
                                                                  + deep + "}")])
    return g.carry(rng, deep)


def _huge_numbers(rng, g):
    number = _huge_number(rng)
    if isinstance(g, ReActGrammar) and rng.random() < 0.2:
        return g.call(f'{{"name": {number}, "arguments": {{}}}}')
    return g.carry(rng, number if rng.random() < 0.7 else f"[{number}]")


def _nan_infinity(rng, g):
    value = rng.choice(["NaN", "Infinity", "-Infinity", "[NaN]", "[Infinity, 1]", '{"v": NaN}', "1e999", "-1e999"])
    return g.carry(rng, value)


def _wrong_types(rng, g):
    if isinstance(g, VRAGGrammar):
        return rng.choice([g.bbox(_wrong_value(rng)), g.bbox(f"[{_wrong_value(rng)}, 1, 2, 3]"), g.call(""),
                           g.call(" " * rng.randint(1, 5)), g.bbox("[1, 2, 3]"), g.bbox('"[1, 2, 3, 4]"')])
    name = rng.choice(g.tools)
    args = dict(g.valid_args(rng, name))
    kind = rng.randrange(6)
    if kind == 0:  # a declared argument of the wrong type
        key = rng.choice(list(args))
        return g.call(json.dumps({"name": name, "arguments": {**args, key: json.loads(_wrong_value(rng))}}))
    if kind == 1:  # a required argument missing
        return g.call(json.dumps({"name": name, "arguments": {}}))
    if kind == 2:  # arguments that are not an object
        return g.call(f'{{"name": "{name}", "arguments": {_wrong_value(rng)}}}')
    if kind == 3:  # a name that is not a string, or no name
        return g.call(rng.choice([f'{{"name": {_wrong_value(rng)}, "arguments": {{}}}}', '{"arguments": {}}']))
    if kind == 4:  # not an object at all
        return g.call(_wrong_value(rng))
    return g.call(json.dumps({"name": name, "arguments": {**args, "extra": json.loads(_wrong_value(rng))}}))


def _tags_in_arguments(rng, g):
    inner = "".join(rng.choice([f"<{t}>", f"</{t}>"]) for t in rng.choices(g.tags + g.other_tags, k=rng.randint(1, 5)))
    inner += rng.choice(_SPECIALS) + rng.choice(WORDS)
    if isinstance(g, ReActGrammar):
        return g.call(g.payload(rng, {"query": [inner], "url": [inner], "goal": inner, "code": inner}))
    return rng.choice([g.call(inner), g.bbox(f'[1, 2, 3, "{inner}"]'), g.answer(inner)])


def _mixed_formats(rng, g):
    react = ReActGrammar().call('{"name": "search", "arguments": {"query": ["Zatrea"]}}')
    vrag = rng.choice(["<search>Zatrea</search>", "<bbox>[1, 2, 30, 40]</bbox>", "<search>Zatrea"])
    other = [react, vrag, '{"name": "search", "arguments": {"query": ["x"]}}', "```json\n{\"tool\": \"search\"}\n```",
             '<function=search>{"query": "x"}</function>', "<answer>x", "</answer><answer>", "<think>" * 3]
    picks = rng.sample(other, rng.randint(2, 4))
    return "\n".join(picks)


def _surrogate_escapes(rng, g):
    esc = rng.choice(["\\ud800", "\\udfff", "\\ud83d", "\\ude00", "\\ud83d\\ude00", "\\udbff\\udfff", "\\ud800\\ud800",
                      "\\u0000", "\\ud800x\\udc00"])
    if isinstance(g, ReActGrammar):
        name = rng.choice(g.tools)
        key = {"search": "query", "visit": "url", "python": "code"}[name]
        value = f'["a{esc}b"]' if key != "code" else f'"a{esc}b"'
        return g.call(rng.choice([f'{{"name": "{name}", "arguments": {{"{key}": {value}}}}}',
                                  f'{{"name": "{name}{esc}", "arguments": {{}}}}',
                                  f'{{"name": "{name}", "arguments": {{"{esc}": 1, "{key}": {value}}}}}']))
    return rng.choice([g.call(f"a{esc}b"), g.bbox(f'[1, 2, 3, "{esc}"]'), g.answer(esc)])


def _huge_strings(rng, g):
    text = rng.randbytes(rng.randint(60_000, 150_000)).translate(_LETTERS).decode()
    if isinstance(g, ReActGrammar):
        return rng.choice([g.call(json.dumps({"name": "search", "arguments": {"query": [text]}})),
                           g.call(json.dumps({"name": "python", "arguments": {"code": text}})), g.answer(text)])
    return rng.choice([g.call(text), g.bbox(text), g.answer(text)])


def _valid(rng, g):
    if isinstance(g, ReActGrammar):
        name = rng.choice(g.tools[:1] * 4 + g.tools)  # search (the real tool) most
        return rng.choice([g.call(g.payload(rng, g.valid_args(rng, name), name)), g.answer(rng.choice(WORDS))])
    return rng.choice([g.call(" ".join(rng.choices(WORDS, k=3))),
                       g.bbox(json.dumps([rng.randint(0, 50), rng.randint(0, 50), rng.randint(60, 300),
                                          rng.uniform(60, 300)])), g.answer(rng.choice(WORDS))])


_MAKERS = {"random_bytes": _random_bytes, "random_unicode": _random_unicode, "truncated_tags": _truncated_tags,
           "nested_tags": _nested_tags, "deep_json": _deep_json, "huge_numbers": _huge_numbers,
           "nan_infinity": _nan_infinity, "wrong_types": _wrong_types, "tags_in_arguments": _tags_in_arguments,
           "mixed_formats": _mixed_formats, "surrogate_escapes": _surrogate_escapes, "huge_strings": _huge_strings,
           "valid": _valid}
assert set(_MAKERS) == set(COUNTS)


async def drive(fmt, env, template, text: str, turn_ids: list[int],
                key: str = "fuzz/0") -> tuple[str, Observation | None]:
    """One model turn the way the agent loop takes it: (the action's kind, the observation the loop appends,
    None after an answer). Checks what every turn must become; raises whatever escapes."""
    action = fmt.parse(text)
    assert isinstance(action, Action) and action.kind in OUTCOMES, action
    if action.kind == "answer":
        assert isinstance(action.answer, str)
        return "answer", None
    if action.kind == "tool_call":
        assert isinstance(action.name, str) and isinstance(action.arguments, dict), action
        obs = await env.call(action.name, action.arguments, key=key)
    else:
        assert isinstance(action.error, str) and action.error, action
        obs = error_observation(action.error)
    assert isinstance(obs, Observation) and isinstance(obs.text, str), obs
    role = getattr(fmt, "observation_role", "tool")
    ids = template.message_ids(role, obs.text, turn_ids)
    assert ids and all(isinstance(i, int) and 0 <= i < len(template.tok) for i in ids)
    return action.kind, obs


class Echo:
    """An in-process tool with a real tool's schema that answers with the arguments it got (so whatever
    passes the argument check reaches the chat template)."""

    def __init__(self, schema: dict):
        self.name, self.schema = schema["name"], schema

    async def call(self, arguments: dict) -> Observation:
        return Observation(json.dumps(arguments, ensure_ascii=False))


async def fuzz_turns(fmt, env, template, grammar: Grammar, seed: int = 0) -> tuple[dict, list]:
    """Every input through `drive`: ({class: Counter of outcomes, observation error types, crashes}, crashes)."""
    counts = {cls: Counter() for cls in COUNTS}
    crashes = []
    turn = template.tok.encode("x", add_special_tokens=False)
    for cls, text in inputs(grammar, seed):
        c = counts[cls]
        c["inputs"] += 1
        try:
            kind, obs = await drive(fmt, env, template, text, turn)
        except Exception as err:  # an escape: counted and shown, the run goes on
            c["crashes"] += 1
            crashes.append((cls, text[:200], f"{type(err).__name__}: {str(err)[:300]}"))
            continue
        c[kind] += 1
        if obs is not None and obs.metadata.get("error_type"):
            c[obs.metadata["error_type"]] += 1
    return counts, crashes


async def fuzz_episodes(fmt, env, template, grammar: Grammar, seed: int = 0, max_turns: int = 25,
                        max_chars: int = 32_768) -> tuple[dict, list]:
    """Every input that fits a model turn (`max_chars`: 8,192 tokens' worth; the longer ones, 100,000-level
    JSON and huge strings, take seconds each to tokenize and go through `fuzz_turns` only), made tokenizable
    (a model's turn is token ids), as one model turn of real agent-loop episodes (`run_episode`, the
    scripted-text engine); an episode takes turns until it answers or reaches `max_turns`. Returns
    ({inputs, skipped_long, episodes, turns, finish_<reason>, observations: Counter}, crashes)."""
    from rollout.agent import AgentConfig, run_episode
    from rollout.chat import tokenizable
    from rollout.engines import SamplingParams
    from rollout.scripted import TextPolicyEngine

    texts = [tokenizable(text) for _, text in inputs(grammar, seed)]
    fits = [t for t in texts if len(t) <= max_chars]
    counts: dict = {"inputs": len(fits), "skipped_long": len(texts) - len(fits), "episodes": 0, "turns": 0,
                    "finish_error": 0, "observations": Counter()}
    config = AgentConfig(max_tool_calls=10**6, max_turns=max_turns, max_tokens_per_turn=10**8,
                         max_context_tokens=10**8)
    texts = iter(fits)
    crashes = []
    first = len(template.initial_messages(""))  # the messages after the question
    more = True
    while more:
        def policy(observation):
            nonlocal more
            text = next(texts, None)
            more = text is not None
            return text if more else grammar.answer("done")

        engine = TextPolicyEngine(policy, template.tok)
        task = {"uid": f"fuzz{counts['episodes']}", "question": "How many people live in Zatrea?"}
        try:
            ep = await run_episode(engine, env, template, task, SamplingParams(max_tokens=10**8), config, fmt)
        except Exception as err:  # an escape: counted and shown, the run goes on
            crashes.append(("episode", task["uid"], f"{type(err).__name__}: {str(err)[:300]}"))
            continue
        r = ep.record
        counts["episodes"] += 1
        counts["turns"] += r.num_turns
        counts[f"finish_{r.finish}"] = counts.get(f"finish_{r.finish}", 0) + 1
        if r.finish == "error" or "error" in ep.metrics:
            crashes.append(("episode", task["uid"], ep.metrics.get("error_message")))
        if not len(r.response_ids) == len(r.loss_mask) == len(r.rollout_logprobs):
            crashes.append(("episode", task["uid"], "ragged row"))
        counts["observations"].update(m["content"] if len(m["content"]) < 1000 else "(long)"
                                      for m in ep.messages[first:] if m["role"] != "assistant")
    return counts, crashes


def report(title: str, counts: dict, crashes: list) -> None:
    """Print the counts (`pytest -s` shows them; the README's reliability section quotes them)."""
    print(f"\n{title}: {len(crashes)} crash(es)")
    for cls, c in counts.items():
        if isinstance(c, Counter) and "inputs" in c:
            print(f"  {cls:18s} " + " ".join(f"{k}={v}" for k, v in sorted(c.items())))
        elif not isinstance(c, Counter):
            print(f"  {cls}: {c}")
