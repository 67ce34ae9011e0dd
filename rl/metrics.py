"""Per-step metrics: one JSON object per step in `<run dir>/metrics.jsonl`, and a progress bar.

Owns: the metrics file (appended and flushed every step, so a crash loses nothing logged; a line cut
by a crash mid-write is skipped with a warning by `read_metrics` and closed off before appending), the optional
sinks that mirror it (`run.loggers`: TensorBoard, Weights & Biases, MLflow), batch statistics (reward,
lengths, finish reasons), and the live progress bar.

Sinks get the numeric values of each row. The jsonl file stays the record: a sink that fails mid-run
(a full disk, a network error) is reported once on stderr and dropped, never stopping training. Each sink
runs behind its own thread, so the training loop never waits on one: a sink that has not answered one
step within `SINK_TIMEOUT_S` (a tracking server that accepts and never replies, or retries for minutes) is
dropped the same way, naming the logger and the step; one that does not start within it is an error at
construction, as is one whose package is missing (naming the logger and the pip command). Closing waits
for each sink at most `SINK_TIMEOUT_S` and says what it left unsent.

Never: compute anything that changes training.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

#: logger name -> (the module it needs, the command that installs it)
LOGGERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install wandb"),
    "mlflow": ("mlflow", "pip install mlflow-skinny  (or mlflow)"),
}
#: seconds a sink may take to start or to answer one step's log call before it is given up (the jsonl file goes on)
SINK_TIMEOUT_S = 60.0
#: where a sink's remote end is set, for its messages
SINK_ENDPOINT = {"wandb": "$WANDB_BASE_URL, or WANDB_MODE=offline", "mlflow": "$MLFLOW_TRACKING_URI"}


class MissingLoggerError(ImportError):
    """A configured logger whose package is not installed."""


class MetricsLogger:
    """jsonl always; `loggers` adds sinks by name: "tensorboard" (`<run dir>/tensorboard/`, event files),
    "wandb" (project $WANDB_PROJECT or "windward", files under `<run dir>/wandb/`; WANDB_MODE=offline
    works without a network) and "mlflow" (tracking URI $MLFLOW_TRACKING_URI, else the file store
    `file:<run dir>/mlruns` (MLFLOW_ALLOW_FILE_STORE=true is set for MLflow >= 3.7); experiment $MLFLOW_EXPERIMENT_NAME or "windward"). `name` names the run in
    W&B and MLflow (default: the run folder's name); `config` (a plain dict) is recorded there as its
    parameters."""

    def __init__(self, run_dir: Path, total_steps: int, progress: bool = True, initial: int = 0,
                 loggers: Iterable[str] = (), name: str | None = None, config: dict | None = None,
                 sink_timeout_s: float = SINK_TIMEOUT_S):
        run_dir = Path(run_dir)
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sink_timeout_s = sink_timeout_s
        self.sinks: list[_Behind] = []
        try:
            for logger in _check_loggers(loggers):
                _require(logger)  # a missing package is said at once, not from the sink's thread
                self.add_sink(lambda cls=_SINKS[logger]: cls(run_dir, name or run_dir.name, config), logger)
        except BaseException:
            self._close_sinks()
            raise
        self._f = self.path.open("a")
        if self._f.tell() and not _ends_with_newline(self.path):  # a row cut by a crash: keep it on its own line
            self._f.write("\n")
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial, desc="train", unit="step", file=sys.stderr,
                            dynamic_ncols=True)

    def add_sink(self, make, name: str) -> None:
        """Start a sink (`make()` builds it, on the sink's own thread) behind its thread; TimeoutError naming it if
        it has not started within the sink timeout, or the error it raised."""
        self.sinks.append(_Behind(make, name, self.sink_timeout_s))

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, "time": time.time()}
        row |= {k: _plain(v) for k, v in metrics.items()}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.sinks:
            scalars = {k: float(v) for k, v in row.items()
                       if k not in ("step", "time") and isinstance(v, (int, float)) and v is not None}
            for sink in list(self.sinks):
                problem = sink.problem()
                if problem:  # the jsonl file is the record; a broken or hung sink must not stop training
                    print(f"metrics: {problem}; it is dropped, {self.path} goes on", file=sys.stderr, flush=True)
                    self.sinks.remove(sink)
                    sink.stop()
                else:
                    sink.queue.put((step, scalars))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
                                 v=metrics.get("policy_version"))

    def close(self) -> None:
        self._f.close()
        self._close_sinks()
        if self.bar is not None:
            self.bar.close()

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            sink.stop()
        deadline = time.monotonic() + self.sink_timeout_s
        for sink in self.sinks:
            sink.thread.join(max(0.0, deadline - time.monotonic()))
            problem = sink.problem(closing=True)
            if problem:
                print(f"metrics: {problem}; {self.path} holds every row", file=sys.stderr, flush=True)
        self.sinks = []


class _Behind:
    """One sink on its own daemon thread: built there, then fed (step, scalars) through `queue`, closed there.
    The training loop only puts rows and asks `problem()`: the sink failed, or has been on one step longer than
    `timeout_s`."""

    def __init__(self, make, name: str, timeout_s: float):
        self.name, self.timeout_s = name, timeout_s
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.failed: str | None = None
        self.busy: tuple[int, float] | None = None  # (step, when its log call began)
        self.last_step: int | None = None  # the last step the sink took
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make, started), name=f"metrics-{name}", daemon=True)
        self.thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError(f"run.loggers: the {name} logger did not start within {timeout_s:g} s"
                               + (f" (is its server reachable? {SINK_ENDPOINT[name]})" if name in SINK_ENDPOINT else ""))
        if self.failed is not None:
            raise self.start_error

    def _run(self, make, started: threading.Event) -> None:
        try:
            sink = make()
        except BaseException as exc:  # re-raised by the constructor, on the caller's thread
            self.start_error, self.failed = exc, f"the {self.name} logger did not start ({exc})"
            started.set()
            return
        started.set()
        try:
            while (item := self.queue.get()) is not None:
                step, scalars = item
                self.busy = (step, time.monotonic())
                try:
                    sink.log(step, scalars)
                except Exception as exc:
                    self.failed = f"the {self.name} logger failed at step {step} ({type(exc).__name__}: {exc})"
                    return
                self.busy, self.last_step = None, step
        finally:
            _quietly(sink.close)

    def problem(self, closing: bool = False) -> str | None:
        if self.failed:
            return self.failed
        busy = self.busy
        if busy is not None and (closing or time.monotonic() - busy[1] > self.timeout_s):
            waited = time.monotonic() - busy[1]
            where = f" (is its server reachable? {SINK_ENDPOINT[self.name]})" if self.name in SINK_ENDPOINT else ""
            return (f"the {self.name} logger has not answered step {busy[0]} for {waited:.0f} s{where}"
                    + ("; the steps after it were not sent" if closing else ""))
        if closing and self.thread.is_alive():
            return f"the {self.name} logger did not finish within {self.timeout_s:g} s after step {self.last_step}"
        return None

    def stop(self) -> None:
        """No more rows: the thread closes the sink once it has sent what is queued."""
        self.queue.put(None)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file. A line that is not a JSON object (the last row cut by a crash
    mid-write, or bytes mangled since) is skipped with a warning naming the file and line; the rows
    after it are kept. A missing file has no rows."""
    path = Path(path)
    if not path.exists():
        return []
    rows, bad = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            bad.append(i)
    if bad:
        warnings.warn(f"{path}: skipped line(s) {bad}, not a metrics row (a row cut by a crash mid-write?)",
                      stacklevel=2)
    return rows


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _check_loggers(loggers: Iterable[str]) -> list[str]:
    if isinstance(loggers, str):
        loggers = [loggers]
    out = []
    for logger in loggers:
        if logger not in LOGGERS:
            raise ValueError(f"run.loggers: unknown logger {logger!r}; allowed: {', '.join(LOGGERS)} "
                             "(metrics.jsonl is always written)")
        if logger not in out:
            out.append(logger)
    return out


def _require(logger: str):
    """Import the logger's module, or a MissingLoggerError that names it and the pip command."""
    import importlib

    module, command = LOGGERS[logger]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingLoggerError(f"run.loggers includes {logger!r} but the {module!r} package is not installed "
                                 f"({exc}); install it with: {command}") from None


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:
        pass


def _flat_params(config: dict | None, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (config or {}).items():
        if isinstance(v, dict) and v:
            out |= _flat_params(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v, default=str)[:500]  # MLflow caps a parameter value at 6000 chars
    return out


class _Sink:
    name = ""

    def log(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _TensorBoard(_Sink):
    name = "tensorboard"

    def __init__(self, run_dir: Path, name: str, config: dict | None):
        _require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if config:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # as the jsonl file: what was logged is on disk

    def close(self) -> None:
        self.writer.close()


class _Wandb(_Sink):
    name = "wandb"

    def __init__(self, run_dir: Path, name: str, config: dict | None):
        wandb = _require("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "windward"), name=name, dir=str(run_dir),
                              config=config or {}, reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow(_Sink):
    name = "mlflow"

    def __init__(self, run_dir: Path, name: str, config: dict | None):
        _require("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not self.uri:
            self.uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow >= 3.7 refuses the file store (maintenance mode) unless told it is wanted; a file store in
            # the run folder needs no server and no database package (mlflow-skinny has no SQLAlchemy)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "windward")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
        params = [Param(k, v) for k, v in _flat_params(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow names allow alphanumerics, _ - . space : / only."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)


_SINKS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _MLflow}


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
        "num_tool_calls/mean": float(batch.column("num_tool_calls").to_numpy(zero_copy_only=False).mean()),
        "num_turns/mean": float(batch.column("num_turns").to_numpy(zero_copy_only=False).mean()),
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
