"""The records of search: a `Hit` (one search result) and a `Passage` (one corpus entry). Their own module so
that corpora (envs/wiki.py) and the search backends (envs/search_backends.py, which re-exports both) share them
without importing each other. Also `utf8_text`: a data file's text, or an error naming the file and the line
(the task files of rl/data.py and the RAMP corpora of envs/world/ramp.py).

Never: import anything of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def utf8_text(path: Path, unit: str = "line") -> str:
    """The file's text (UTF-8; a byte-order mark is fine), or a ValueError naming the file and the `unit` (line,
    row) where it stops being UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        at = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}: {unit} {at} is not UTF-8 text ({err.reason} at byte {err.start}); save the file "
                         "as UTF-8") from None
