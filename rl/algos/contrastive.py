"""Qwen3-Embedding's improved InfoNCE (SEEDS 11.4): in-batch q-q, d-d and q-d terms, hard negatives, the
false-negative mask with its +0.1 margin, temperature tau. Pure tensor math (no Ray, no other part).

    L   = -(1/N) sum_i log( exp(s(q_i, d_i+)/tau) / Z_i )
    Z_i = exp(s(q_i,d_i+)/tau) + sum_k m_ik exp(s(q_i,d_ik-)/tau) + sum_{j!=i} m_ij exp(s(q_i,q_j)/tau)
          + sum_{j!=i} m_ij exp(s(d_i+,d_j)/tau) + sum_{j!=i} m_ij exp(s(q_i,d_j)/tau)
    m_ij = 0 if s_ij > s(q_i,d_i+) + 0.1 or d_j == d_i+ (false-negative mask), else 1

`d_j` is the in-batch positive of row j. "d_j == d_i+" is decided by document ids where given (two questions
with the same gold page; a mined negative that is the gold page itself), else never; q_j of a row whose
positive is d_i+ is masked with it (it asks for the same page). Inputs are unit vectors, so s = dot product.

Never: import Ray, torch.distributed, a model, or any other part of the project (vectors in, a loss out).
"""

from __future__ import annotations

import torch

__all__ = ["improved_infonce", "FALSE_NEGATIVE_MARGIN"]

FALSE_NEGATIVE_MARGIN = 0.1  # SEEDS 11.4: INFONCE_MASK_FAKE_NEGATIVE


def improved_infonce(q: torch.Tensor, d_pos: torch.Tensor, d_neg: torch.Tensor | None = None, *,
                     temperature: float = 0.01, margin: float = FALSE_NEGATIVE_MARGIN,
                     pos_ids: torch.Tensor | None = None, neg_ids: torch.Tensor | None = None,
                     neg_valid: torch.Tensor | None = None, in_batch: bool = True,
                     batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, dict]:
    """q, d_pos [N, D] and d_neg [N, K, D] unit vectors -> (loss, metrics).

    pos_ids [N] / neg_ids [N, K]: document ids (equal ids = the same document, masked as false negatives);
    neg_valid [N, K]: 0 for padding negatives (a row with fewer than K mined). `in_batch=False` keeps only the
    hard negatives (plain InfoNCE). `margin=None` turns the similarity part of the mask off.

    `batch` = (q_all [M, D], d_all [M, D], pos_ids_all [M] or None, rows [N]): data parallel, where q, d_pos
    are this rank's N rows of a batch of M gathered from every rank and `rows` says where they sit in it; the
    in-batch terms run over all M, the loss is the mean over the N local rows (so the ranks' mean is the
    one-process loss of the whole batch). None: the batch is q, d_pos themselves."""
    if temperature <= 0:
        raise ValueError(f"improved_infonce: temperature={temperature} must be > 0")
    n = q.shape[0]
    s_pos = (q * d_pos).sum(-1)  # [N]
    threshold = s_pos + (margin if margin is not None else float("inf"))

    def masked(scores: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (scores <= threshold.unsqueeze(1)) & ~same
        return scores.masked_fill(~keep, float("-inf")), keep

    terms = [(s_pos / temperature).unsqueeze(1)]
    kept = {}
    if d_neg is not None and d_neg.shape[1] > 0:
        s_neg = torch.einsum("nd,nkd->nk", q, d_neg)
        same = (neg_ids == pos_ids.unsqueeze(1)) if (neg_ids is not None and pos_ids is not None) \
            else torch.zeros_like(s_neg, dtype=torch.bool)
        if neg_valid is not None:
            same = same | ~neg_valid.bool()
        scores, keep = masked(s_neg, same)
        terms.append(scores / temperature)
        kept["hard"] = keep
    q_all, d_all, ids_all, rows = batch if batch is not None else (q, d_pos, pos_ids, torch.arange(n))
    if in_batch and q_all.shape[0] > 1:
        same = torch.zeros(n, q_all.shape[0], dtype=torch.bool, device=q.device)
        same[torch.arange(n), rows.to(q.device)] = True  # each row with itself
        if pos_ids is not None and ids_all is not None:
            same = same | (pos_ids.unsqueeze(1) == ids_all.unsqueeze(0))
        for name, scores in (("qq", q @ q_all.T), ("dd", d_pos @ d_all.T), ("qd", q @ d_all.T)):
            scores, keep = masked(scores, same)
            terms.append(scores / temperature)
            kept[name] = keep
    logits = torch.cat(terms, dim=1)  # column 0: the positive
    loss = -(logits[:, 0] - torch.logsumexp(logits, dim=1)).mean()
    metrics = {"loss": float(loss.detach()), "s_pos": float(s_pos.detach().mean())}
    for name, keep in kept.items():
        metrics[f"masked_{name}"] = float(1.0 - keep.float().mean()) if keep.numel() else 0.0
    return loss, metrics
