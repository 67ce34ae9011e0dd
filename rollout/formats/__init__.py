"""Action grammars of the agent loop: parse one assistant turn into an action.

`make_format(name)`: "react" (WebSailor / WebDancer), "react_parallel" (WebWatcher: several tool calls a turn)
or "vrag" (VRAG-RL, imported lazily).
"""

import importlib

from .react import INVALID_TOOL_CALL, Action, ReActFormat

FORMATS = {"react": "rollout.formats.react:ReActFormat", "vrag": "rollout.formats.vrag:VRAGFormat",
           "react_parallel": "rollout.formats.react:ParallelReActFormat"}  # WebWatcher: several calls a turn


def make_format(name: str, **kwargs):
    if name not in FORMATS:
        raise ValueError(f"unknown action format {name!r}; known: {sorted(FORMATS)}")
    module, _, cls = FORMATS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def __getattr__(name):  # VRAGFormat and INVALID_ACTION without importing the VRAG grammar eagerly
    if name in ("VRAGFormat", "INVALID_ACTION", "VRAGAction"):
        from rollout.formats import vrag

        return getattr(vrag, name)
    raise AttributeError(name)


__all__ = ["Action", "FORMATS", "ReActFormat", "INVALID_TOOL_CALL", "INVALID_ACTION", "VRAGFormat", "make_format"]
