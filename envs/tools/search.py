"""`search(query: list[str])`: top-k results per query in WebSailor's rendering (SEEDS 3.6, 14 item 14).

Owns: the tool and its factory `make_search_tool` (schema, argument checks, error observations), and the
rendering of hits. Backends (world, bm25, dense, serper, retrieval) live in `envs/search_backends.py`: anything
with `search(query, k) -> list of hits with url, title, snippet` (optionally `date`, `source`), run in a
thread, or an async `asearch(query, k)`, awaited (the HTTP backends).

Rendering of one query (WebSailor `tool_search.py`); several queries are joined by "\\n=======\\n":

    A Google search for '<q>' found N results:

    ## Web Results
    1. [title](link)
    Date published: <date>          (when the backend gives one)
    Source: <source>                (idem)

    <snippet>

    2. ...

Never: raise on bad arguments or a failing backend (they become an error observation naming the tool, the
backend and the problem; one failed query of several is an error block among the results).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from envs.base import Observation, error_observation
from envs.search_backends import check_backend, make_backend

SEPARATOR = "\n=======\n"  # between the results of several queries


class SearchBackend(Protocol):
    def search(self, query: str, k: int = 10) -> list: ...


def _render_hit(i: int, h: Any) -> str:
    date, source, snippet = getattr(h, "date", ""), getattr(h, "source", ""), getattr(h, "snippet", "")
    return (f"{i}. [{h.title}]({h.url})" + (f"\nDate published: {date}" if date else "")
            + (f"\nSource: {source}" if source else "") + "\n" + (f"\n{snippet}" if snippet else ""))


def render_results(query: str, hits: list) -> str:
    """One query's block (module docstring); no hits: "No results found for '<q>'. ..." """
    if not hits:
        return f"No results found for '{query}'. Try with a more general query."
    return (f"A Google search for '{query}' found {len(hits)} results:\n\n## Web Results\n"
            + "\n\n".join(_render_hit(i, h) for i, h in enumerate(hits, 1)))


class SearchTool:
    name = "search"
    schema = {
        "name": "search",
        "description": "Search the web: give an array 'query' of one or more queries; the top results of "
                       "each are returned in one call.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "array", "items": {"type": "string"},
                                     "description": "Query strings; several complementary queries may "
                                                    "be given in one call."}},
            "required": ["query"],
        },
    }

    def __init__(self, backend: SearchBackend, top_k: int = 10, max_queries: int = 5):
        if top_k < 1 or max_queries < 1:
            raise ValueError(f"search: top_k ({top_k}) and max_queries ({max_queries}) must be >= 1")
        self.backend, self.top_k, self.max_queries = backend, top_k, max_queries
        self.backend_name = getattr(backend, "name", None) or type(backend).__name__

    async def _one(self, query: str) -> tuple[list | None, str | None]:
        try:
            if hasattr(self.backend, "asearch"):
                return list(await self.backend.asearch(query, self.top_k)), None
            return list(await asyncio.to_thread(self.backend.search, query, self.top_k)), None
        except Exception as err:  # a backend's failure is this query's observation
            return None, (f"Error: search backend {self.backend_name!r} failed for '{query}': "
                          f"{type(err).__name__}: {err}")

    async def call(self, arguments: dict) -> Observation:
        queries = arguments.get("query")
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            return error_observation("Error: search needs 'query': a non-empty list of non-empty strings, "
                                     f"got {queries!r}", tool=self.name)
        queries = queries[: self.max_queries]
        results = await asyncio.gather(*(self._one(q) for q in queries))
        blocks = [render_results(q, hits) if error is None else error for q, (hits, error) in zip(queries, results)]
        errors = sum(error is not None for _, error in results)
        return Observation(SEPARATOR.join(blocks),
                           metadata={"tool": self.name, "backend": self.backend_name, "queries": queries,
                                     "errors": errors,
                                     "urls": [[h.url for h in hits or []] for hits, _ in results]},
                           error=errors == len(queries))


def make_search_tool(context: dict, backend: str | SearchBackend = "world", top_k: int = 10, max_queries: int = 5,
                     **backend_kwargs) -> SearchTool:
    """The `search` tool of a spec (`envs/registry.py`): `backend` names one of `envs.search_backends.BACKENDS`
    (its settings are the other keys; "world" takes the index from `context["index"]`), or is a backend."""
    if isinstance(backend, str):
        backend = make_backend(backend, context, **backend_kwargs)
    elif backend_kwargs:
        raise ValueError(f"search: settings {sorted(backend_kwargs)} given with a backend object")
    return SearchTool(backend, top_k=top_k, max_queries=max_queries)


def check_search_arguments(arguments: dict) -> None:
    """The backend's name and keys, checked without building it (`envs.registry.validate_tools`)."""
    backend = arguments.get("backend", "world")
    if isinstance(backend, str):
        try:
            check_backend(backend, {k: v for k, v in arguments.items() if k not in ("backend", "top_k", "max_queries")})
        except ValueError as err:
            raise ValueError(f"{err} (and the search tool's own: backend, top_k, max_queries)") from None


make_search_tool.check = check_search_arguments
