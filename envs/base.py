"""The tool protocol: what an agent can act on, and the client through which it acts (DESIGN section 3).

Owns: `Observation` (what a tool returns: text and/or images, metadata, an error flag), `Tool` (a
name, a JSON schema, `async call(arguments)`), `EnvClient` (how the agent loop reaches tools),
`check_arguments` (are a call's arguments what the tool's schema says?), and `LocalEnv`, the
in-process client: per-call timeout, unknown tools, bad arguments and exceptions turned into error
observations.

Arguments come from a model and can be anything JSON decodes to. `check_arguments` refuses, naming the
tool and the argument: what is not an object; what the schema's `parameters` refuse (type, required,
enum, items, minItems / maxItems, minLength / maxLength, nested properties; the one widening: a single
value where an array of such values is asked, as WebSailor's tools take a query or a list of queries);
and, whatever the schema, strings with lone surrogates (a JSON "\\ud800" decodes to one) or over
`MAX_ARGUMENT_CHARS`, NaN, infinities and integers past 64 bits, nesting past `MAX_ARGUMENT_DEPTH` and
more than `MAX_ARGUMENT_VALUES` values.

Never: import anything of the project; raise into the agent loop. Errors are observations.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Observation:
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    error: bool = False


def error_observation(message: str, **metadata) -> Observation:
    return Observation(text=message, metadata=metadata, error=True)


MAX_ARGUMENT_DEPTH = 16  # arrays / objects inside each other
MAX_ARGUMENT_CHARS = 65_536  # one string (a query, a URL, a program)
MAX_ARGUMENT_VALUES = 10_000  # values in all, containers included

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


def check_arguments(tool: str, schema: dict, arguments: Any) -> str | None:
    """None if `arguments` are what `schema` (the tool's {"name", "parameters": JSON schema}) asks, else the
    text of the error observation, naming the tool and the argument (module docstring: what is refused)."""
    if not isinstance(arguments, dict):
        return f"Error: tool {tool!r}: arguments must be a JSON object, got {_json_type(arguments)}"
    why = _check_values(arguments)
    if why is None:
        params = schema.get("parameters") if isinstance(schema, dict) else None
        try:
            why = _check_schema(arguments, params if isinstance(params, dict) else {}, "")
        except (TypeError, ValueError):  # a schema this check cannot read (e.g. "maxItems": "4"): the tool judges
            why = None
    if why is None:
        return None
    path, reason = why
    return f"Error: tool {tool!r}: argument {_shown(path)} {reason}" if path else f"Error: tool {tool!r}: {reason}"


def _check_values(arguments: dict) -> tuple[str, str] | None:
    """(path, why) of the first value no tool should get, whatever its schema; iterative (any depth)."""
    stack: list[tuple[str, Any, int]] = [("", arguments, 0)]
    seen = 0
    while stack:
        path, value, depth = stack.pop()
        seen += 1
        if seen > MAX_ARGUMENT_VALUES:
            return "", f"arguments hold more than {MAX_ARGUMENT_VALUES} values"
        if isinstance(value, (dict, list)):
            if depth >= MAX_ARGUMENT_DEPTH:
                return path, f"nests deeper than {MAX_ARGUMENT_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(value, dict):
                    if not isinstance(key, str) or _bad_text(key):
                        return path, f"has a key that is not text: {_shown(key)}"
                    stack.append((f"{path}.{key}" if path else key, item, depth + 1))
                else:
                    stack.append((f"{path}[{key}]", item, depth + 1))
        elif isinstance(value, str):
            if len(value) > MAX_ARGUMENT_CHARS:
                return path, f"is a string of {len(value)} characters; at most {MAX_ARGUMENT_CHARS}"
            if _bad_text(value):
                return path, "holds a lone surrogate (e.g. a JSON \\ud800 escape), not text"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return path, f"is {value}: numbers must be finite"
        elif isinstance(value, int) and not isinstance(value, bool):
            if not -2**63 <= value < 2**63:
                return path, "is an integer past 64 bits"
        elif not (value is None or isinstance(value, bool)):
            return path, f"is a {type(value).__name__}, not a JSON value"
    return None


def _check_schema(value: Any, spec: dict, path: str) -> tuple[str, str] | None:
    """(path, why) where `value` breaks the JSON schema `spec` (the keywords of the module docstring)."""
    types = spec.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, t) for t in types):
            wrong = (path, f"must be {' or '.join(map(str, types))}, got {_json_type(value)}")
            if "array" not in types or _check_schema([value], spec, path) is not None:
                return wrong
            return None  # one value for an array of such values
    if "enum" in spec and isinstance(spec["enum"], list) and value not in spec["enum"]:
        return path, f"must be one of {spec['enum']}, got {_shown(value)}"
    if isinstance(value, str):
        why = _length(len(value), spec.get("minLength", 0), spec.get("maxLength"), "characters")
        if why:
            return path, why
    elif isinstance(value, list):
        why = _length(len(value), spec.get("minItems", 0), spec.get("maxItems"), "items")
        if why:
            return path, why
        items = spec.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                why = _check_schema(item, items, f"{path}[{i}]")
                if why is not None:
                    return why
    elif isinstance(value, dict):
        for key in spec.get("required") or ():
            if key not in value:
                return (f"{path}.{key}" if path else key), "is required"
        properties = spec.get("properties")
        if isinstance(properties, dict):
            for key, sub in properties.items():
                if key in value and isinstance(sub, dict):
                    why = _check_schema(value[key], sub, f"{path}.{key}" if path else key)
                    if why is not None:
                        return why
    return None


def _length(n: int, lo: int, hi: int | None, what: str) -> str | None:
    if lo <= n and (hi is None or n <= hi):
        return None
    want = f"exactly {lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
    return f"must have {want} {what}, got {n}"


def _is(value: Any, json_type: str) -> bool:
    if json_type == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type in ("string", "boolean", "array", "object", "null"):
        return _json_type(value) == json_type
    return True  # a type this check does not know: the tool judges


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _bad_text(text: str) -> bool:
    """Not UTF-8 encodable: a lone surrogate."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _shown(value: Any) -> str:
    """`value` for an error text: repr (lone surrogates escaped), at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@runtime_checkable
class Tool(Protocol):
    name: str
    #: OpenAI-style function schema: {"name", "description", "parameters": JSON schema}
    schema: dict

    async def call(self, arguments: dict) -> Observation: ...


@runtime_checkable
class EnvClient(Protocol):
    def tool_schemas(self) -> list[dict]: ...

    async def call(self, name: str, arguments: dict, key: str | None = None) -> Observation:
        """`key` names the episode: a remote client sends an episode's calls to one server."""


class LocalEnv:
    """Tools in this process. The same agent loop runs with remote EnvServer actors in a job."""

    def __init__(self, tools: list[Tool], timeout_s: float = 60.0):
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ValueError(f"duplicate tool names in {[t.name for t in tools]}")
        self.timeout_s = timeout_s
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def tool_schemas(self) -> list[dict]:
        return [{"type": "function", "function": t.schema} for t in self.tools.values()]

    async def call(self, name: str, arguments: dict, key: str | None = None) -> Observation:
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return self._error(str(name)[:80],
                               f"Error: unknown tool {name!r:.80}; available tools: {sorted(self.tools)}")
        self.calls[name] = self.calls.get(name, 0) + 1
        why = check_arguments(name, tool.schema, arguments)
        if why is not None:
            return self._error(name, why)
        t0 = time.perf_counter()
        try:
            obs = await asyncio.wait_for(tool.call(arguments), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            return self._error(name, f"Error: tool {name!r} did not answer within {self.timeout_s:g}s")
        except Exception as err:  # a tool's bug is the episode's observation, not the loop's crash
            return self._error(name, f"Error: tool {name!r} failed: {type(err).__name__}: {err}")
        if not isinstance(obs, Observation):
            return self._error(name, f"Error: tool {name!r} returned {type(obs).__name__}, not an Observation")
        obs.metadata.setdefault("latency_s", time.perf_counter() - t0)
        return obs

    def _error(self, name: str, message: str) -> Observation:
        self.errors[name] = self.errors.get(name, 0) + 1
        return error_observation(message, tool=name)
