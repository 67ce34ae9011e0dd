"""Tools by configuration: a tool spec (name -> kind and arguments) -> Tool objects.

Owns: the table of tool kinds and `build_tools`. A spec looks like

    {"search": {"kind": "search", "backend": "world", "top_k": 10},
     "visit":  {"kind": "visit", "summary": null},
     "python": {"kind": "python", "timeout_s": 10}}

`kind` defaults to the tool's name. Each kind is a factory `make(context, **arguments) -> Tool`
found by dotted path (imported lazily, so a spec without visual tools never imports PIL). The
`context` carries what several tools share in one EnvServer: the synthetic world, its base URL,
its search index, the hosts the fetch guard allows.

`validate_tools(spec)` is the dry run of `build_tools`: kinds, argument names, required arguments and
argument types (against the factory's signature), and whatever the factory's own `check(arguments)`
attribute says of settings its signature cannot (e.g. the search backend's keys); it builds nothing.

Never: import anything of the project outside `envs/`; raise anything but a ValueError naming
the tool and the key when a spec is wrong.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any

import msgspec

from envs.base import Tool

#: kind -> "module:factory"; a factory is `make(context: dict, **arguments) -> Tool`
TOOL_KINDS: dict[str, str] = {
    "search": "envs.tools.search:make_search_tool",
    "visit": "envs.tools.visit:make_visit_tool",
    "python": "envs.tools.python:make_python_tool",
    "image_search": "envs.visual.tools:make_image_search_tool",
    "crop": "envs.visual.tools:make_crop_tool",
    # WebWatcher (SEEDS 9.1): envs/visual/webwatcher.py
    "web_search": "envs.visual.webwatcher:make_web_search_tool",
    "vl_search_image": "envs.visual.webwatcher:make_vl_search_image_tool",
    "code_interpreter": "envs.visual.webwatcher:make_code_interpreter_tool",
    "ocr": "envs.visual.webwatcher:make_ocr_tool",
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


def _resolve(tool: str, arguments: dict | None):
    """(kind, factory, arguments without `kind`) of one spec entry; unknown kinds and argument names name the tool."""
    if arguments is not None and not isinstance(arguments, dict):
        raise ValueError(f"tool {tool!r}: expected a mapping of arguments, got {type(arguments).__name__}")
    arguments = dict(arguments or {})
    kind = arguments.pop("kind", tool)
    if not isinstance(kind, str):
        raise ValueError(f"tool {tool!r}: kind must be a string, got {kind!r}; known kinds: {sorted(TOOL_KINDS)}")
    make = _factory(kind, tool)
    params = inspect.signature(make).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [p for p in params if p != "context"]
        unknown = sorted(set(arguments) - set(allowed))
        if unknown:
            raise ValueError(f"tool {tool!r} (kind {kind!r}): unknown key(s) {unknown}; allowed: {allowed}")
    return kind, make, arguments


def build_tools(spec: dict[str, dict], context: dict[str, Any] | None = None) -> list[Tool]:
    """One Tool per spec entry, in order. Unknown kinds and unknown arguments name the tool."""
    context = context or {}
    tools = []
    for tool, arguments in spec.items():
        kind, make, arguments = _resolve(tool, arguments)
        made = make(context, **arguments)
        if getattr(made, "name", None) != tool:
            made.name = tool  # the spec's name is what the model calls
            made.schema = dict(made.schema, name=tool)
        tools.append(made)
    return tools


def validate_tools(spec: dict[str, dict]) -> None:
    """What `build_tools(spec)` would refuse, found without building a tool (module docstring): ValueError
    naming the tool, the key and what is allowed."""
    for tool, arguments in spec.items():
        kind, make, arguments = _resolve(tool, arguments)
        check_arguments(make, arguments, f"tool {tool!r} (kind {kind!r})", skip=("context",))
        check = getattr(make, "check", None)
        if check is not None:
            check(arguments)


def check_arguments(fn, arguments: dict, what: str, skip: tuple[str, ...] = ()) -> None:
    """`fn(**arguments)` would bind: no missing required argument, and each value of the type its annotation
    names (where msgspec can check that type; ints pass for floats). ValueError naming `what` and the key."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in skip}
    missing = [n for n, p in params.items() if p.default is p.empty and n not in arguments
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve here: names were checked, types cannot be
        return
    for key, value in arguments.items():
        if key in hints:
            problem = _type_problem(value, hints[key])
            if problem:
                raise ValueError(f"{what}: bad value for {key!r}: {problem} (given {value!r})")


def _type_problem(value: Any, hint: Any) -> str | None:
    """None when `value` fits `hint`, else what is wrong. A type msgspec does not know is accepted, except a
    Protocol (an object interface, e.g. a search backend object), which plain configuration data never is."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    problems = []
    for member in members:
        try:
            msgspec.convert(value, member, strict=True)
            return None
        except msgspec.ValidationError as err:
            problems.append(str(err))
        except TypeError:
            if not (getattr(member, "_is_protocol", False) and isinstance(value, (str, int, float, bool, list, dict,
                                                                                     type(None)))):
                return None
            problems.append(f"Expected a {member.__name__} object, got `{type(value).__name__}`")
    return "; ".join(dict.fromkeys(problems))
