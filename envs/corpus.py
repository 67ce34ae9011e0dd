"""The records of search: a `Hit` (one search result) and a `Passage` (one corpus entry). Their own module so
that corpora (envs/wiki.py) and the search backends (envs/search_backends.py, which re-exports both) share them
without importing each other.

Never: import anything of the project.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    """One search result. `id` and `text` (the whole passage) are set by corpus backends, `date` and `source`
    by web search (rendered as WebSailor's "Date published:" and "Source:" lines)."""

    url: str
    title: str
    snippet: str
    score: float = 0.0
    id: str = ""
    text: str = ""
    date: str = ""
    source: str = ""


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    url: str
