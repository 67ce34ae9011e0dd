"""SFT / RFT data: trajectories written by the rollout side, filtered for rejection-sampling
fine-tuning, served as fixed-size shuffled batches that resume exactly.

Owns: writing and reading trajectory files (parquet, or Arrow IPC: `.arrow`, `.feather`, `.ipc`) with
the schema of `rollout/trajectory.py`, validated with errors that name the file, the row and the column;
the RFT filter (SEEDS 3.3 (i)-(iii) for WebSailor's cold start, 6.1 step 2 for EvolveSearch) with the
count left after each stage; and `SFTBatches`, the epoch / shuffle / batch iterator whose
`state_dict` makes a resumed run see exactly the batches an uninterrupted one would.

Never: compute a loss (the trainer's `sft_step` does: next-token NLL where loss_mask is 1, SEEDS 3.4),
tokenize, or decide which rollouts to harvest when (the recipes do).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollout.trajectory import CORE_FIELDS, REWARD_PART_PREFIX, ragged_numpy, scalar_numpy, validate

#: file suffix -> format
FORMATS = {".parquet": "parquet", ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc"}

#: what an SFT step reads of a trajectory (observations are in response_ids with loss_mask 0)
SFT_COLUMNS = ("prompt_ids", "response_ids", "loss_mask")

#: the RFT rules of the papers, as `rft_select` keyword arguments
RFT_PRESETS = {
    # SEEDS 3.3 filters [P: 4.1]: (i) final answer correct, (ii) no more than 32k tokens, (iii) more than 5
    # tool calls. "32k" read as 32,768 tokens of the whole trajectory (prompt, generations, observations).
    "websailor": dict(correct_parts=("answer",), threshold=1.0, max_tokens=32_768, min_tool_calls=6, dedup=False),
    # SEEDS 6.1 step 2 [S][M]: format-correct AND answer-correct, de-duplicated; no length or tool rule.
    "evolvesearch": dict(correct_parts=("format", "answer"), threshold=1.0, max_tokens=None, min_tool_calls=0,
                         dedup=True),
}


# --- files ------------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    try:
        return FORMATS[path.suffix]
    except KeyError:
        raise ValueError(f"{path}: trajectory files end in {sorted(FORMATS)}, not {path.suffix!r}") from None


def write_trajectories(path: str | os.PathLike, batch: pa.RecordBatch) -> Path:
    """Write `batch` (validated first) to `path`, parquet or Arrow IPC by suffix; the file appears
    complete or not at all (temporary name, then rename). Returns the path."""
    path = Path(path)
    fmt = _format_of(path)
    check_rows(validate(batch), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_batches([batch]), tmp)
        else:
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
                writer.write_batch(batch)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def trajectory_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files named: a file, a folder (its trajectory files, sorted by name) or a list of either."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in FORMATS and not f.name.startswith("."))
        elif p.exists():
            _format_of(p)
            out.append(p)
        else:
            raise FileNotFoundError(f"no trajectory file or folder at {p}")
    return out


def _read_one(path: Path) -> pa.Table:
    try:
        if _format_of(path) == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:  # a stream rather than a file
                source.seek(0)
                return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable {_format_of(path)} file: {err}") from err


def read_trajectories(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> pa.RecordBatch:
    """Every row of the trajectory files named (see `trajectory_files`), as one RecordBatch.

    Each file is checked against the schema (core columns present, types, ragged columns agreeing
    row by row, no nulls in required columns, 0/1 loss masks, non-empty prompts); an error names the
    file, the row and the column. Files may carry different extra columns (e.g. reward parts): a
    column missing from a file is null in its rows.
    """
    files = trajectory_files(paths)
    if not files:
        raise ValueError(f"no trajectory files (suffixes {sorted(FORMATS)}) in {paths}")
    tables = []
    for f in files:
        table = _read_one(f)
        missing = [c.name for c in CORE_FIELDS if c.name not in table.schema.names and not c.nullable]
        if missing:
            raise ValueError(f"{f}: missing trajectory column(s) {missing}; it has {table.schema.names}")
        batch = table.combine_chunks().to_batches()[0] if table.num_rows else \
            pa.RecordBatch.from_pylist([], schema=table.schema)
        try:
            check_rows(validate(batch), str(f))
        except (TypeError, KeyError) as err:
            raise type(err)(f"{f}: {err.args[0] if err.args else err}") from None
        except ValueError as err:
            raise ValueError(f"{err}" if str(err).startswith(str(f)) else f"{f}: {err}") from None
        tables.append(pa.Table.from_batches([batch]))
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist(
        [], schema=table.schema)


def check_rows(batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
    """Row-level checks `validate` leaves out: no nulls in required columns, loss_mask in {0, 1},
    a prompt in every row. Errors name `where` (a file), the row, its uid and the column."""
    def fail(row: int, message: str):
        uid = batch.column("uid")[row].as_py() if "uid" in batch.schema.names else None
        raise ValueError(f"{where}: trajectory row {row} (uid={uid!r}): {message}")

    for f in CORE_FIELDS:
        if not f.nullable and f.name in batch.schema.names and batch.column(f.name).null_count:
            fail(int(np.flatnonzero(batch.column(f.name).is_null().to_numpy(zero_copy_only=False))[0]),
                 f"column {f.name!r} is null")
    if batch.num_rows and "loss_mask" in batch.schema.names:
        values, offsets = ragged_numpy(batch, "loss_mask")
        bad = np.flatnonzero(values > 1)
        if len(bad):
            row = int(np.searchsorted(offsets, bad[0], side="right") - 1)
            fail(row, f"loss_mask holds {int(values[bad[0]])}; it must be 0 (observation) or 1 (generated)")
    if batch.num_rows and "prompt_ids" in batch.schema.names:
        empty = np.flatnonzero(batch.column("prompt_ids").value_lengths().to_numpy(zero_copy_only=False) == 0)
        if len(empty):
            fail(int(empty[0]), "prompt_ids is empty")
    return batch


# --- the RFT filter -------------------------------------------------------------------------------


def rft_select(batch: pa.RecordBatch, *, correct_parts: Sequence[str] = ("answer",), threshold: float = 1.0,
               max_tokens: int | None = 32_768, min_tool_calls: int = 0, dedup: bool = False,
               correct: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The rows a rejection-sampling fine-tune keeps, and the count left after each stage.

    Stages, in order (SEEDS 3.3, 5.2 "counts after each stage"):
      correct     the episode ended with an answer (finish == "answer") and it is correct: `correct`
                  (a boolean per row) where given, else a `correct` column where the batch has one,
                  else every `reward_<part>` of `correct_parts` >= threshold (NaN counts as wrong);
                  with no parts, the `reward` column >= threshold;
      length      prompt + response tokens (observations included) <= max_tokens (None: no bound);
      tool_calls  num_tool_calls >= min_tool_calls ("more than 5" is min_tool_calls=6);
      dedup       the first of rows with identical prompt and response token ids (DUPO copies included).
    Presets of the papers: `RFT_PRESETS`.
    """
    n = batch.num_rows
    finished = pc.equal(batch.column("finish"), "answer").to_numpy(zero_copy_only=False).astype(bool)
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        if correct.shape != (n,):
            raise ValueError(f"rft_select: correct has shape {correct.shape} for {n} rows")
    elif "correct" in batch.schema.names:
        correct = np.nan_to_num(scalar_numpy(batch, "correct").astype(np.float64)) > 0
    else:
        columns = [REWARD_PART_PREFIX + p for p in correct_parts] or ["reward"]
        missing = [c for c in columns if c not in batch.schema.names]
        if missing:
            have = [c for c in batch.schema.names if c == "reward" or c.startswith(REWARD_PART_PREFIX)]
            raise KeyError(f"rft_select: no column(s) {missing} to judge correctness; reward columns here: {have}")
        correct = np.ones(n, dtype=bool)
        for c in columns:
            values = scalar_numpy(batch, c).astype(np.float64)
            correct &= np.nan_to_num(values, nan=-np.inf) >= threshold
    keep = finished & correct
    stats = {"rft/input": n, "rft/correct": int(keep.sum())}
    if max_tokens is not None:
        lengths = sum(batch.column(c).value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
                      for c in ("prompt_ids", "response_ids"))
        keep &= lengths <= max_tokens
    stats["rft/length"] = int(keep.sum())
    keep &= scalar_numpy(batch, "num_tool_calls") >= min_tool_calls
    stats["rft/tool_calls"] = int(keep.sum())
    if dedup:
        p_vals, p_off = ragged_numpy(batch, "prompt_ids")
        r_vals, r_off = ragged_numpy(batch, "response_ids")
        seen = set()
        for i in np.flatnonzero(keep):
            key = hashlib.sha1(p_vals[p_off[i]:p_off[i + 1]].tobytes() + b"|" +
                               r_vals[r_off[i]:r_off[i + 1]].tobytes()).digest()
            if key in seen:
                keep[i] = False
            seen.add(key)
        stats["rft/dedup"] = int(keep.sum())
    stats["rft/kept"] = int(keep.sum())
    return np.flatnonzero(keep), stats


def rft_filter(batch: pa.RecordBatch, **rule) -> tuple[pa.RecordBatch, dict]:
    """`batch` restricted to the rows `rft_select(batch, **rule)` keeps, and its stage counts."""
    rows, stats = rft_select(batch, **rule)
    return batch.take(pa.array(rows, pa.int64())), stats


# --- batches --------------------------------------------------------------------------------------


class SFTBatches:
    """Fixed-size batches of a trajectory set for `epochs` epochs.

    Epoch e visits the rows in the order of a permutation drawn from (seed, e); the rows that do
    not fill a last batch are left out of that epoch (every batch has exactly `batch_size` rows; they
    come first in another epoch's order). Iterating yields RecordBatches of `columns`; `state_dict()`
    names the next batch, and a new SFTBatches over the same data with `load_state_dict(state)`
    yields exactly the batches that were still to come.
    """

    def __init__(self, data: pa.RecordBatch, batch_size: int, *, seed: int = 0, epochs: int = 1,
                 columns: Sequence[str] = SFT_COLUMNS):
        if batch_size < 1 or epochs < 1:
            raise ValueError(f"SFTBatches: batch_size and epochs must be >= 1, got {batch_size}, {epochs}")
        if data.num_rows < batch_size:
            raise ValueError(f"SFTBatches: {data.num_rows} trajectories cannot fill one batch of {batch_size}")
        missing = [c for c in columns if c not in data.schema.names]
        if missing:
            raise KeyError(f"SFTBatches: the data has no column(s) {missing}; it has {data.schema.names}")
        self.data = data.select(list(columns))
        self.batch_size, self.seed, self.epochs = batch_size, seed, epochs
        self.per_epoch = data.num_rows // batch_size
        self.fingerprint = _fingerprint(self.data)
        self.epoch = self.position = 0  # the next batch: number `position` of epoch `epoch`

    def __len__(self) -> int:
        """Batches still to come."""
        return (self.epochs - self.epoch) * self.per_epoch - self.position

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.data.num_rows)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while self.epoch < self.epochs:
            order = self.order(self.epoch)
            while self.position < self.per_epoch:
                rows = order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
                self.position += 1
                yield self.data.take(pa.array(rows, pa.int64()))
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "epochs": self.epochs, "num_rows": self.data.num_rows, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "batch_size", "num_rows", "fingerprint"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(f"SFTBatches.load_state_dict: the saved state has {key}={state[key]!r} but these "
                                 f"batches have {mine!r}: resume over the same data with the same settings")
        self.epochs, self.epoch, self.position = state["epochs"], state["epoch"], state["position"]


def _fingerprint(batch: pa.RecordBatch) -> str:
    """A digest of the token ids: the same data set gives the same value, a changed one another."""
    h = hashlib.sha1()
    for c in batch.schema.names:
        col = batch.column(c)
        if pa.types.is_list(col.type) and pa.types.is_binary(col.type.value_type):  # images: their bytes
            for row in col.to_pylist():
                for data in row or ():
                    h.update(hashlib.sha1(data).digest())
        elif pa.types.is_list(col.type):
            values, offsets = ragged_numpy(batch, c)
            h.update(offsets.tobytes())
            h.update(values.tobytes())
    return h.hexdigest()
