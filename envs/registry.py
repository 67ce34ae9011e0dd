"""Tools by configuration: a tool spec (name -> kind and arguments) -> Tool objects.

Owns: the table of tool kinds and `build_tools`. A spec looks like

    {"search": {"kind": "search", "backend": "world", "top_k": 10},
     "visit":  {"kind": "visit", "summary": null},
     "python": {"kind": "python", "timeout_s": 10}}

`kind` defaults to the tool's name. Each kind is a factory `make(context, **arguments) -> Tool`
found by dotted path (imported lazily, so a spec without visual tools never imports PIL). The
`context` carries what several tools share in one EnvServer: the synthetic world, its base URL,
its search index, the hosts the fetch guard allows.

Never: import anything of the project outside `envs/`; raise anything but a ValueError naming
the tool and the key when a spec is wrong.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from envs.base import Tool

#: kind -> "module:factory"; a factory is `make(context: dict, **arguments) -> Tool`
TOOL_KINDS: dict[str, str] = {
    "search": "envs.tools.search:make_search_tool",
    "visit": "envs.tools.visit:make_visit_tool",
    "python": "envs.tools.python:make_python_tool",
    "image_search": "envs.visual.tools:make_image_search_tool",
    "crop": "envs.visual.tools:make_crop_tool",
}


def register_tool_kind(kind: str, target: str) -> None:
    """Add a tool kind ("package.module:factory"); a user's own tools plug in this way."""
    if kind in TOOL_KINDS and TOOL_KINDS[kind] != target:
        raise ValueError(f"tool kind {kind!r} is already registered as {TOOL_KINDS[kind]!r}")
    TOOL_KINDS[kind] = target


def _factory(kind: str, tool: str):
    if kind not in TOOL_KINDS:
        raise ValueError(f"tool {tool!r}: unknown kind {kind!r}; known kinds: {sorted(TOOL_KINDS)}")
    module, _, name = TOOL_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def build_tools(spec: dict[str, dict], context: dict[str, Any] | None = None) -> list[Tool]:
    """One Tool per spec entry, in order. Unknown kinds and unknown arguments name the tool."""
    context = context or {}
    tools = []
    for tool, arguments in spec.items():
        arguments = dict(arguments or {})
        kind = arguments.pop("kind", tool)
        make = _factory(kind, tool)
        params = inspect.signature(make).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            allowed = [p for p in params if p != "context"]
            unknown = sorted(set(arguments) - set(allowed))
            if unknown:
                raise ValueError(f"tool {tool!r} (kind {kind!r}): unknown key(s) {unknown}; allowed: {allowed}")
        made = make(context, **arguments)
        if getattr(made, "name", None) != tool:
            made.name = tool  # the spec's name is what the model calls
            made.schema = dict(made.schema, name=tool)
        tools.append(made)
    return tools
