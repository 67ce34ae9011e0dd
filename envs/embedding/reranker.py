"""The Qwen3-Reranker scorer (SEEDS 11.3) and the optional rerank stage after first-stage search.

    prompt = PREFIX + "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {doc}" + SUFFIX
    score  = exp(z_yes) / (exp(z_yes) + exp(z_no)) = sigmoid(z_yes - z_no)

z_yes, z_no: the causal LM's logits of the tokens "yes" and "no" at the last position. The body is truncated
(the document's tokens) so that the whole prompt fits max_length; left padding.

Owns: `Qwen3Reranker`, `format_pair`, `yes_no_score`, `RerankBackend` (first-stage hits -> the top_n reranked).
Never: import anything of the project outside `envs/`; download a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from envs.embedding.base import local_folder

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
          "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_pair(instruction: str, query: str, doc: str) -> str:
    """SEEDS 11.3's body (between PREFIX and SUFFIX)."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def yes_no_score(z_yes, z_no):
    """p(yes) of the softmax restricted to the two tokens: sigmoid(z_yes - z_no) (SEEDS 11.3)."""
    import torch

    return torch.softmax(torch.stack([z_no, z_yes], dim=-1).float(), dim=-1)[..., 1]


def _single_token(tokenizer, word: str, path: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"reranker: {word!r} is {len(ids)} tokens in the tokenizer of {path}; the yes/no score "
                         "needs it to be one token (Qwen3's tokenizer has both)")
    return ids[0]


class Qwen3Reranker:
    """Scores (query, document) pairs with a Qwen3-Reranker-style causal LM from a local folder."""

    def __init__(self, path: str, *, instruction: str = DEFAULT_INSTRUCTION, max_length: int = 8192,
                 batch_size: int = 8, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = local_folder(path, "reranker")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        self.yes_id = _single_token(self.tokenizer, "yes", path)
        self.no_id = _single_token(self.tokenizer, "no", path)
        self.prefix = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if max_length <= len(self.prefix) + len(self.suffix) + 8 or batch_size < 1:
            raise ValueError(f"reranker: max_length={max_length} leaves no room for the query and document "
                             f"(the template alone is {len(self.prefix) + len(self.suffix)} tokens), or batch_size < 1")
        self.instruction, self.max_length, self.batch_size, self.device = instruction, max_length, batch_size, device

    def logits(self, query: str, docs: Sequence[str]):
        """(z_yes, z_no) at the last position, one per document [n] each."""
        import torch

        room = self.max_length - len(self.prefix) - len(self.suffix)
        rows = [self.prefix + self.tokenizer.encode(format_pair(self.instruction, query, d),
                                                    add_special_tokens=False)[:room] + self.suffix for d in docs]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):  # left padding: the last position is every row's last token
            ids[b, width - len(r):], mask[b, width - len(r):] = torch.tensor(r), 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            last = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                              position_ids=positions.to(self.device), logits_to_keep=1).logits[:, -1].float()
        return last[:, self.yes_id], last[:, self.no_id]

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        """p(yes) per document, in (0, 1)."""
        out: list[float] = []
        for i in range(0, len(docs), self.batch_size):
            z_yes, z_no = self.logits(query, docs[i:i + self.batch_size])
            out.extend(yes_no_score(z_yes, z_no).tolist())
        return out


class RerankBackend:
    """A first-stage backend, then the reranker over its `top_n` hits (whole passage text where the backend
    gives it, else title + snippet); returns the best `k` by p(yes), the score in `Hit.score`."""

    def __init__(self, first_stage, reranker, top_n: int = 50):
        if top_n < 1:
            raise ValueError(f"search.rerank: top_n={top_n} must be >= 1")
        self.first_stage, self.reranker, self.top_n = first_stage, reranker, top_n
        self.name = f"{getattr(first_stage, 'name', 'search')}+rerank"

    def _rerank(self, query: str, hits: list, k: int) -> list:
        if not hits:
            return []
        scores = self.reranker.score(query, [f"{h.title}\n{getattr(h, 'text', '') or h.snippet}" for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])[:k]
        return [replace(hits[i], score=float(scores[i])) for i in order]

    def search(self, query: str, k: int = 10) -> list:
        return self._rerank(query, self.first_stage.search(query, max(k, self.top_n)), k)

    async def asearch(self, query: str, k: int = 10) -> list:
        import asyncio

        if hasattr(self.first_stage, "asearch"):
            hits = await self.first_stage.asearch(query, max(k, self.top_n))
        else:
            hits = await asyncio.to_thread(self.first_stage.search, query, max(k, self.top_n))
        return await asyncio.to_thread(self._rerank, query, hits, k)
