"""Per-token log-probabilities where the loss needs them, with memory bounded by a chunk.

Owns: the logprob kernels of the trainer.
- `selective_logprobs`: log pi(target | h) = z_target - logsumexp(z), z = (h W^T + b) / T, for N chosen
  hidden states only, computed in chunks of rows so that the largest temporary is [chunk, V] whatever N and
  V are; the backward recomputes each chunk's logits instead of storing them (the fused linear +
  cross-entropy idea of Liger-Kernel / Cut-Cross-Entropy, in plain torch). The entropy
  H = logsumexp(z) - sum_v p_v z_v comes from the same chunk when asked for (with or without its gradient).
- `install_logprob_head` / `grid_logprobs`: the policy's output layer computes these instead of logits while
  a request is set, inside the model's own forward (so FSDP2 / ZeRO-3 have gathered the head's weight, and
  gradients reach it through the usual hooks). Only the positions asked for are computed: the response
  tokens of the loss, never the prompt.
- `reference_token_logprobs`: the plain full-vocabulary log-softmax over every position, the reference the
  tests compare against and the path for output layers this module cannot take over (logit soft-capping,
  logit scaling).

Memory (per micro-batch, the logprob part): chunk_rows x V x 4 bytes x 3 (logits, probabilities, their
gradient) instead of B x L x V x 4 x (2-3) for the full log-softmax. `chunk_rows_for(budget, V)` sizes it.

Never: decide which positions matter (the caller passes a mask) or hold a [N, V] tensor.
"""

from __future__ import annotations

import contextlib

import torch

from rl import algos

#: bytes the [chunk, V] temporaries of one chunk may take (logits, probabilities and their gradient)
DEFAULT_CHUNK_BYTES = 64 << 20


def chunk_rows_for(chunk_bytes: int, vocab_size: int) -> int:
    """Rows per chunk so that three fp32 [rows, V] temporaries fit in `chunk_bytes`."""
    return max(1, int(chunk_bytes) // (vocab_size * 4 * 3))


def logprob_memory_bytes(*, vocab: int, tokens: int, hidden: int, chunked: bool = True,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES, param_bytes: int = 2) -> int:
    """Bytes the logprob part of one micro-batch of `tokens` positions needs at its peak (forward + backward).

    Full log-softmax: the logits in the parameter dtype, their fp32 copy, the log-softmax and the logits'
    gradient in fp32, each [tokens, V]: tokens x V x (param_bytes + 12). Chunked: one chunk's temporaries, the
    selected hidden states and their gradient ([tokens, H] each) and four fp32 values per token."""
    if not chunked:
        return tokens * vocab * (param_bytes + 12)
    return chunk_bytes + 2 * tokens * hidden * param_bytes + 16 * tokens


class _SelectiveLogprob(torch.autograd.Function):
    """(h [N, H], W [V, H], b [V] | None) -> (logp [N], entropy [N]) in chunks; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale: float, chunk: int, with_entropy: bool,
                entropy_grad: bool):
        n, acc = hidden.shape[0], _acc_dtype(hidden)
        logp = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        ent = hidden.new_zeros(n, dtype=acc)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            z = _logits(hidden[s:e], weight, bias, scale)
            lse[s:e] = torch.logsumexp(z, -1)
            logp[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lse[s:e]
            if with_entropy:
                p = torch.exp(z - lse[s:e, None])
                ent[s:e] = lse[s:e] - (p * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.scale, ctx.chunk, ctx.entropy_grad = scale, chunk, with_entropy and entropy_grad
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        d_hidden = torch.zeros_like(hidden) if want_h else None
        acc = lse.dtype  # gradients of the head accumulate over chunks in fp32 (fp64 for fp64 inputs)
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        d_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_b and bias is not None else None
        g_logp = g_logp.to(acc) if g_logp is not None else torch.zeros_like(lse)
        use_ent = ctx.entropy_grad and g_ent is not None
        for s in range(0, hidden.shape[0], chunk):
            e = min(hidden.shape[0], s + chunk)
            z = _logits(hidden[s:e], weight, bias, scale)
            p = torch.exp(z - lse[s:e, None])
            # d logp / d z = onehot(target) - p
            dz = p * (-g_logp[s:e, None])
            dz.scatter_add_(-1, targets[s:e, None], g_logp[s:e, None])
            if use_ent:  # d H / d z_v = -p_v (z_v - logsumexp(z) + H)
                dz -= g_ent[s:e, None].to(acc) * p * (z - lse[s:e, None] + ent[s:e, None])
            dz = dz * scale  # z = scale * (h W^T + b)
            if d_hidden is not None:
                d_hidden[s:e] = (dz.to(weight.dtype) @ weight).to(hidden.dtype)
            if d_weight is not None:
                d_weight.addmm_(dz.t(), hidden[s:e].to(acc))
            if d_bias is not None:
                d_bias += dz.sum(0)
        return (d_hidden, d_weight.to(weight.dtype) if d_weight is not None else None,
                d_bias.to(bias.dtype) if d_bias is not None else None, None, None, None, None, None)


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Softmax arithmetic in fp32 for fp32/bf16/fp16 inputs (verl's logits.float()), fp64 for fp64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    z = torch.nn.functional.linear(h, weight, bias).to(_acc_dtype(h))
    return z * scale if scale != 1.0 else z


def selective_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                       bias: torch.Tensor | None = None, temperature: float = 1.0, with_entropy: bool = False,
                       entropy_grad: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """log softmax((h W^T + b) / T)[target] for each of the N rows of `hidden` [N, H] (fp32 [N]), and the
    entropy of that distribution (zeros unless `with_entropy`; it carries a gradient only with
    `entropy_grad`). Peak extra memory: about `chunk_bytes`."""
    chunk = chunk_rows_for(chunk_bytes, weight.shape[0])
    return _SelectiveLogprob.apply(hidden, weight, bias, targets.long(), 1.0 / temperature, chunk,
                                   with_entropy, entropy_grad)


# --- the policy's output layer ---------------------------------------------------------------

def output_layer(model) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    return base.get_output_embeddings()


def head_supported(model) -> str | None:
    """None when the output layer is a plain `h W^T (+ b)` this module can take over; else why not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base.config, "text_config", base.config)
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return f"config.{key}={getattr(cfg, key)} changes the logits after the output layer"
    head = output_layer(model)
    if not isinstance(head, torch.nn.Linear):
        return f"the output layer is a {type(head).__name__}, not a Linear"
    return None


def install_logprob_head(model) -> bool:
    """Let the output layer answer a logprob request (`grid_logprobs`) instead of computing logits.
    Returns False (and changes nothing) where `head_supported` says no."""
    if head_supported(model) is not None:
        return False
    head = output_layer(model)
    if getattr(head, "_windward_request", False) is not False:
        return True
    plain = head.forward
    head._windward_request = None

    def forward(hidden):
        req = head._windward_request
        if req is None:
            return plain(hidden)
        index, targets, temperature, with_entropy, entropy_grad, chunk_bytes = req
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)
        logp, ent = selective_logprobs(h, head.weight, targets, bias=head.bias, temperature=temperature,
                                       with_entropy=with_entropy, entropy_grad=entropy_grad,
                                       chunk_bytes=chunk_bytes)
        return torch.stack([logp, ent], -1)

    head.forward = forward
    return True


@contextlib.contextmanager
def _request(model, req):
    head = output_layer(model)
    head._windward_request = req
    try:
        yield
    finally:
        head._windward_request = None


def grid_logprobs(model, input_ids: torch.Tensor, want: torch.Tensor, *, attention_mask=None, position_ids=None,
                  flat_index: torch.Tensor | None = None, temperature: float = 1.0, with_entropy: bool = False,
                  entropy_grad: bool = False, chunk_bytes: int = DEFAULT_CHUNK_BYTES, **model_inputs):
    """Logprobs (and entropies) on the next-token grid [B, L-1] at the positions `want` [B, L-1] (bool) only;
    0 elsewhere. Padded input: `input_ids` [B, L], grid (i, t) predicts input_ids[i, t+1]. Packed input:
    `input_ids` [1, T] and `flat_index` [B, L-1], the position on the flat axis whose logits predict grid
    (i, t). The model must have `install_logprob_head` applied."""
    if flat_index is None:
        b, length = input_ids.shape
        pos = torch.arange(length - 1, device=input_ids.device)
        flat = (torch.arange(b, device=input_ids.device)[:, None] * length + pos[None, :])[want]
        targets = input_ids[:, 1:][want]
    else:
        flat = flat_index[want]
        targets = input_ids[0].index_select(0, flat + 1)
    if position_ids is not None:
        model_inputs["position_ids"] = position_ids
    req = (flat, targets, temperature, with_entropy, entropy_grad, chunk_bytes)
    with _request(model, req):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_inputs).logits
    lp = out.new_zeros(want.shape).masked_scatter(want, out[:, 0])
    ent = out.new_zeros(want.shape).masked_scatter(want, out[:, 1]) if with_entropy else None
    return lp, ent


def reference_token_logprobs(model, input_ids, attention_mask, temperature: float = 1.0, with_entropy: bool = False,
                             entropy_grad: bool = False, position_ids=None, **model_inputs):
    """log pi(x_{t+1} | x_{<=t}) on the whole next-token grid [B, L-1] through the full-vocabulary
    log-softmax (and the entropy there, detached unless `entropy_grad`). Memory: B x L x V floats, several
    times: the reference for tests, and the path for output layers `install_logprob_head` refuses."""
    if position_ids is not None:
        model_inputs["position_ids"] = position_ids
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **model_inputs).logits[:, :-1]
    logits = logits.to(_acc_dtype(logits))
    if temperature != 1.0:
        logits = logits / temperature
    logp = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    ent = None
    if with_entropy:
        with torch.enable_grad() if entropy_grad else torch.no_grad():
            ent = algos.entropy_from_logits(logits)
    return logp, ent
