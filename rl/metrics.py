"""Per-step metrics: one JSON object per step in `<run dir>/metrics.jsonl`, and a progress bar.

Owns: the metrics file (appended and flushed every step, so a crash loses nothing logged), batch
statistics (reward, lengths, finish reasons), and the live progress bar.

Never: compute anything that changes training.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, progress: bool = True, initial: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a")
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, "time": time.time()}
        row |= {k: _plain(v) for k, v in metrics.items()}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
                                 v=metrics.get("policy_version"))

    def close(self) -> None:
        self._f.close()
        if self.bar is not None:
            self.bar.close()


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class StageTimer:
    """`with timer("generate"): ...` accumulates seconds per stage as `time/<stage>`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{stage}"] = self.seconds.get(f"time/{stage}", 0.0) + time.perf_counter() - t0


def batch_metrics(batch: pa.RecordBatch) -> dict:
    reward = batch.column("reward").to_numpy(zero_copy_only=False)
    resp_len = batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False)
    out = {
        "reward/mean": float(reward.mean()),
        "reward/std": float(reward.std()),
        "response_length/mean": float(resp_len.mean()),
        "response_length/max": int(resp_len.max()),
        "num_trajectories": batch.num_rows,
    }
    for name in batch.schema.names:
        if name.startswith("reward_"):
            values = batch.column(name).to_numpy(zero_copy_only=False)
            # gated parts hold NaN where the gate was closed: their mean is over the scored rows
            out[f"reward/{name[7:]}"] = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
    finish = batch.column("finish").to_pylist()
    for reason in sorted(set(finish)):
        out[f"finish/{reason}"] = finish.count(reason) / len(finish)
    return out
