"""The tool protocol: what an agent can act on, and the client through which it acts (DESIGN section 3).

Owns: `Observation` (what a tool returns: text and/or images, metadata, an error flag), `Tool` (a
name, a JSON schema, `async call(arguments)`), `EnvClient` (how the agent loop reaches tools),
and `LocalEnv`, the in-process client: per-call timeout, unknown tools and exceptions turned into
error observations.

Never: import anything of the project; raise into the agent loop. Errors are observations.
"""

from __future__ import annotations

import asyncio
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
        tool = self.tools.get(name)
        if tool is None:
            return self._error(name, f"Error: unknown tool {name!r}; available tools: {sorted(self.tools)}")
        self.calls[name] = self.calls.get(name, 0) + 1
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
