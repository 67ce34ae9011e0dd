"""Training tokens/s for padded vs packed micro-batches on a long-tailed length distribution.

What: one rank (gloo, CPU or the GPU if there is one) of the FSDP2 trainer, a random-init Qwen3
(hidden 128, 2 layers, vocabulary 16,384: the output layer dominates, as with a real tokenizer),
rows of a 32-token prompt and a lognormal response (median 100 tokens, sigma 1.1, capped so no
row exceeds 1,024 tokens): most rows short, a few near the cap. The same rows and advantages
train in three layouts, each timed over full `train_step`s (old-logprob pass, forward, backward,
AdamW; the fastest of 2, or 3 without --quick, after a warm-up step on 8 rows; one CPU thread):

    padded   micro_batch_size rows in arrival order, right-padded to the longest (the old layout)
    sorted   token budget, rows sorted by length so similar lengths share a micro-batch, padded
    packed   token budget, rows concatenated without padding (positions restart per sequence)

tokens/s counts real (unpadded) tokens. Prints `packing_speedup=<packed / padded>` last.
`packing_benchmark()` / `measure()` are importable (benchmarks/trainer.py calls the first).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 16384


def _model_folder(root: Path) -> str:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                      tie_word_embeddings=True, pad_token_id=0)
    Qwen3ForCausalLM(cfg).save_pretrained(root)
    return str(root)


def long_tailed_batch(num_rows: int, seed: int = 0, prompt_len: int = 32, max_len: int = 1024,
                      median: float = 100.0, sigma: float = 1.1, vocab: int = VOCAB):
    """Trajectory rows with lognormal response lengths (groups of 8), advantages ~ N(0, 1)."""
    from rollout.trajectory import TrajectoryRecord, build_batch, with_columns

    rng = np.random.default_rng(seed)
    resp = np.clip(rng.lognormal(np.log(median), sigma, num_rows).astype(int), 1, max_len - prompt_len)
    recs = [TrajectoryRecord(uid=f"t{i // 8}", group=i // 8, sample=i % 8,
                             prompt_ids=rng.integers(1, vocab, prompt_len).tolist(),
                             response_ids=rng.integers(1, vocab, n).tolist(), loss_mask=[1] * int(n),
                             rollout_logprobs=[-8.0] * int(n)) for i, n in enumerate(resp)]
    return with_columns(build_batch(recs), {"advantage": rng.normal(size=num_rows).astype(np.float32)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_layout(model: str, batch, steps: int, **layout) -> float:
    """Seconds per train_step (the fastest of `steps`, after a warm-up on 8 rows: on a shared machine
    the minimum is the least disturbed) for one micro-batch layout."""
    from rl.trainer.fsdp import FSDPTrainer

    t = FSDPTrainer(model, rank=0, world_size=1, lr=1e-5, grad_clip=1.0, algo={"loss_agg_mode": "token-mean"},
                    **layout)
    t.init_distributed("127.0.0.1", _free_port())
    try:
        t.train_step(batch.slice(0, 8))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            t.train_step(batch)
            times.append(time.perf_counter() - start)
    finally:
        t.shutdown()
    return float(np.min(times))


def measure(quick: bool = False, token_budget: int = 1024, micro_batch_size: int = 8) -> dict:
    """tokens/s of the three layouts and packing_speedup = packed / padded."""
    from rl.trainer.collate import row_lengths

    import torch

    rows, steps = (32, 2) if quick else (64, 3)
    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # one core per rank, as on a busy machine; OpenMP spinning distorts timings
    batch = long_tailed_batch(rows)
    lengths = row_lengths(batch)
    tokens = int(lengths.sum())
    padded_tokens = sum(len(c) * int(c.max()) for c in np.array_split(lengths, range(micro_batch_size, rows,
                                                                                    micro_batch_size)))
    with tempfile.TemporaryDirectory() as tmp:
        model = _model_folder(Path(tmp))
        layouts = {"padded": {"micro_batch_size": micro_batch_size},
                   "sorted": {"token_budget": token_budget},
                   "packed": {"token_budget": token_budget, "packing": True}}
        seconds = {}
        for name, kw in layouts.items():
            seconds[name] = time_layout(model, batch, steps, **kw)
            print(f"{name}: {seconds[name]:.2f} s/step, {tokens / seconds[name]:.0f} tokens/s", flush=True)
    out = {"rows": rows, "tokens": tokens, "padding_fraction": 1 - tokens / padded_tokens,
           "length_p50": int(np.median(lengths)), "length_max": int(lengths.max())}
    out |= {f"{name}_tokens_per_s": tokens / s for name, s in seconds.items()}
    out["packing_speedup"] = seconds["padded"] / seconds["packed"]
    return out


def packing_benchmark(quick: bool = False, token_budget: int = 1024) -> float:
    """Run `measure`, print its numbers, return packing_speedup (for benchmarks/trainer.py)."""
    result = measure(quick, token_budget)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=1), flush=True)
    return result["packing_speedup"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 rows, 2 timed steps per layout (else 64 rows, 3)")
    ap.add_argument("--token-budget", type=int, default=1024)
    args = ap.parse_args()
    print(f"packing_speedup={packing_benchmark(args.quick, args.token_budget):.2f}")


if __name__ == "__main__":
    main()
