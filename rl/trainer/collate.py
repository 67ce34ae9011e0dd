"""Arrow trajectory rows -> training tensors. The one place tensors are built from a batch.

Owns: `padded_microbatch`, which lays rows out as `prompt + response` sequences, right-padded,
and `packed_microbatch`, which concatenates them into ONE row without padding (position_ids
restart at 0 for every sequence; transformers then keeps attention inside each sequence: a
block-diagonal causal mask under SDPA/eager, flash-attention's varlen kernel under
flash_attention_2). Either way every per-token quantity (loss mask, rollout logprobs) is placed
on the same per-row "next-token grid": position t of a [B, L-1] tensor holds the value for token
t+1 of row i, the token predicted by the logits at position t. Prompt and padding positions have
mask 0. A packed micro-batch also carries `grid_index` / `grid_valid` to scatter its flat
logprobs back onto that grid, so losses (per-row aggregation, GSPO's sequence ratio) never see
the layout.

Never: talk to other ranks or know about losses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from rollout.trajectory import ragged_numpy

# what the trainer reads of a trajectory batch (`finish` for overlong filtering; `dup_of` is added per shard)
TRAIN_COLUMNS = ("prompt_ids", "response_ids", "loss_mask", "rollout_logprobs", "advantage", "finish")


def row_lengths(batch: pa.RecordBatch) -> np.ndarray:
    """Tokens per row (prompt + response), int64: what micro-batch planning and rank balancing count."""
    return (batch.column("prompt_ids").value_lengths().to_numpy(zero_copy_only=False)
            + batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False)).astype(np.int64)


def padded_microbatch(batch: pa.RecordBatch, rows: np.ndarray | list[int], pad_id: int = 0) -> dict:
    """Tensors for `rows` of `batch`:

    input_ids [B, L] int64, attention_mask [B, L] int64, loss_mask [B, L-1] float32,
    rollout_logprobs [B, L-1] float32, advantage [B] float32 (if the column exists),
    response_start [B] (index on the grid of the first response token), num_tokens (masked count).
    """
    return _microbatch(batch, rows, pad_id, packed=False)


def packed_microbatch(batch: pa.RecordBatch, rows: np.ndarray | list[int], pad_id: int = 0) -> dict:
    """Like `padded_microbatch`, but the model input is the rows concatenated, without padding:

    input_ids [1, T] and position_ids [1, T] (0, 1, ... restarting per sequence; T = sum of lengths),
    no attention_mask; grid_index [B, L-1] int64 (where on the flat next-token axis [T-1] the grid
    value of row i, position t comes from) and grid_valid [B, L-1] bool (False past a row's end).
    loss_mask, rollout_logprobs, advantage, response_start, response_len and num_tokens are exactly
    those of `padded_microbatch` for the same rows.
    """
    return _microbatch(batch, rows, pad_id, packed=True)


def _microbatch(batch: pa.RecordBatch, rows, pad_id: int, packed: bool) -> dict:
    rows = np.asarray(rows, dtype=np.int64)
    p_vals, p_off = ragged_numpy(batch, "prompt_ids")
    r_vals, r_off = ragged_numpy(batch, "response_ids")
    m_vals, _ = ragged_numpy(batch, "loss_mask")
    has_lp = "rollout_logprobs" in batch.schema.names
    if has_lp:
        l_vals, _ = ragged_numpy(batch, "rollout_logprobs")
    p_len = (p_off[rows + 1] - p_off[rows]).astype(np.int64)
    r_len = (r_off[rows + 1] - r_off[rows]).astype(np.int64)
    if (p_len < 1).any():
        raise ValueError(f"rows {rows[p_len < 1].tolist()} have an empty prompt")
    lengths = p_len + r_len
    L = int(lengths.max())
    B = len(rows)
    if packed:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        ids = np.empty((1, int(lengths.sum())), dtype=np.int64)
        pos = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])[None]
        # grid (i, t) -> flat next-token index starts[i] + t, valid while t < len_i - 1
        t = np.arange(L - 1, dtype=np.int64)
        valid = t[None, :] < (lengths - 1)[:, None]
        index = np.where(valid, starts[:, None] + t[None, :], 0)
    else:
        ids = np.full((B, L), pad_id, dtype=np.int64)
        attn = np.zeros((B, L), dtype=np.int64)
    mask = np.zeros((B, L - 1), dtype=np.float32)
    rlp = np.zeros((B, L - 1), dtype=np.float32)
    for i, row in enumerate(rows):
        pl, rl = p_len[i], r_len[i]
        if packed:
            s0 = starts[i]
            ids[0, s0:s0 + pl] = p_vals[p_off[row]:p_off[row + 1]]
            ids[0, s0 + pl:s0 + pl + rl] = r_vals[r_off[row]:r_off[row + 1]]
        else:
            ids[i, :pl] = p_vals[p_off[row]:p_off[row + 1]]
            ids[i, pl:pl + rl] = r_vals[r_off[row]:r_off[row + 1]]
            attn[i, :pl + rl] = 1
        # response token j sits at sequence position pl + j and is predicted at grid index pl + j - 1
        mask[i, pl - 1:pl - 1 + rl] = m_vals[r_off[row]:r_off[row + 1]]
        if has_lp:
            rlp[i, pl - 1:pl - 1 + rl] = l_vals[r_off[row]:r_off[row + 1]]
    out = {"input_ids": torch.from_numpy(ids)}
    if packed:
        out |= {"position_ids": torch.from_numpy(pos), "grid_index": torch.from_numpy(index),
                "grid_valid": torch.from_numpy(valid)}
    else:
        out["attention_mask"] = torch.from_numpy(attn)
    out |= {
        "loss_mask": torch.from_numpy(mask),
        "rollout_logprobs": torch.from_numpy(rlp),
        "response_start": torch.from_numpy(p_len - 1),
        "response_len": torch.from_numpy(r_len),
        "num_tokens": float(mask.sum()),
    }
    if "advantage" in batch.schema.names:
        adv = batch.column("advantage").to_numpy(zero_copy_only=False)[rows]
        out["advantage"] = torch.from_numpy(np.ascontiguousarray(adv, dtype=np.float32))
    return out
