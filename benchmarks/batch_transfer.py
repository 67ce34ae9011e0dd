"""Move a 256 x 2048-token trajectory batch between two Ray actors: Arrow vs pickled Python lists.

What is timed (median of the repeats), in the sending actor: hand the batch to the receiving
actor and wait until the receiver holds its token columns as flat torch tensors, ready to train:
  arrow  - a RecordBatch with the trajectory schema; the receiver takes zero-copy views
           (rollout/trajectory.py ragged_torch) of prompt_ids, response_ids, loss_mask, logprobs;
  pickle - the same data as a dict of Python lists (what a naive system ships); the receiver
           builds the same tensors with torch.tensor.
Both receivers return the same checksums, compared before any timing counts.

    python benchmarks/batch_transfer.py [--quick]      last line: arrow_vs_pickle=<ratio>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from rl.cluster import wait  # noqa: E402

ROWS, TOKENS, PROMPT = 256, 2048, 256


def make_records(seed: int = 0):
    from rollout.trajectory import TrajectoryRecord

    rng = np.random.default_rng(seed)
    out = []
    for i in range(ROWS):
        n = TOKENS - PROMPT
        out.append(TrajectoryRecord(
            uid=f"t{i // 8}", group=i // 8, sample=i % 8,
            prompt_ids=rng.integers(0, 150_000, PROMPT).tolist(),
            response_ids=rng.integers(0, 150_000, n).tolist(),
            loss_mask=(rng.random(n) < 0.7).astype(int).tolist(),
            rollout_logprobs=(-rng.random(n)).astype(np.float32).tolist(),
            policy_version=3, num_turns=4, finish="answer", answer_text="x"))
    return out


class Receiver:
    def arrow(self, batch):
        from rollout.trajectory import ragged_torch

        cols = [ragged_torch(batch, c)[0] for c in ("prompt_ids", "response_ids", "loss_mask", "rollout_logprobs")]
        return [float(c.sum()) for c in cols]

    def pickle(self, batch: dict):
        import torch

        cols = [torch.tensor([t for row in batch[c] for t in row]) for c in
                ("prompt_ids", "response_ids", "loss_mask", "rollout_logprobs")]
        return [float(c.sum()) for c in cols]


class Sender:
    def __init__(self, receiver):
        from rollout.trajectory import build_batch

        self.arrow_batch = build_batch(make_records())
        self.receiver = receiver

    def run(self, kind: str, repeats: int) -> tuple[list[float], list[float]]:
        # Each side holds only its own payload: millions of live Python ints would slow the
        # other side's timings through the garbage collector.
        if kind == "arrow":
            payload = self.arrow_batch
        else:
            recs = make_records()
            payload = {k: [getattr(r, k) for r in recs] for k in
                       ("uid", "group", "sample", "prompt_ids", "response_ids", "loss_mask", "rollout_logprobs",
                        "policy_version", "num_turns", "finish", "answer_text")}
            del recs
        method = getattr(self.receiver, kind)
        times, result = [], None
        for _ in range(repeats + 1):  # the first call warms up and is not timed
            t0 = time.perf_counter()
            result = wait(method.remote(payload), 300, f"the receiver's {kind} of the batch")
            times.append(time.perf_counter() - t0)
        return times[1:], result

    def nbytes(self) -> int:
        return self.arrow_batch.nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    args = p.parse_args()
    repeats = 3 if args.quick else 10
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        recv = ray.remote(Receiver).remote()
        send = ray.remote(Sender).remote(recv)
        mib = wait(send.nbytes.remote(), 300, "the sender's batch size") / 2**20
        arrow_t, arrow_sum = wait(send.run.remote("arrow", repeats), 600, f"{repeats + 1} Arrow transfers")
        pickle_t, pickle_sum = wait(send.run.remote("pickle", repeats), 600, f"{repeats + 1} pickle transfers")
        if not np.allclose(arrow_sum, pickle_sum, rtol=1e-6):
            raise SystemExit(f"receivers disagree: arrow {arrow_sum} vs pickle {pickle_sum}")
        a, b = statistics.median(arrow_t), statistics.median(pickle_t)
        print(f"batch: {ROWS} rows x {TOKENS} tokens, Arrow size {mib:.1f} MiB, {repeats} repeats (median)")
        print(f"arrow  (RecordBatch, zero-copy torch views): {a * 1e3:8.1f} ms")
        print(f"pickle (dict of Python lists -> torch):      {b * 1e3:8.1f} ms")
        print(f"arrow_vs_pickle={b / a:.1f}")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
