"""MetricsLogger sinks (run.loggers): jsonl always, TensorBoard / W&B / MLflow when configured."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from rl.metrics import MetricsLogger, MissingLoggerError

ROWS = [{"reward/mean": 0.25, "loss": np.float32(1.5), "policy_version": 1, "finish/stop": 1.0},
        {"reward/mean": 0.5, "loss": 1.25, "policy_version": 2, "note": "text is not a scalar", "bad": float("nan")}]


def _log_two(tmp_path, **kwargs):
    logger = MetricsLogger(tmp_path, total_steps=2, progress=False, **kwargs)
    for step, row in enumerate(ROWS, start=1):
        logger.log(step, row)
    logger.close()
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_default_is_jsonl_only(tmp_path):
    rows = _log_two(tmp_path)
    assert [r["reward/mean"] for r in rows] == [0.25, 0.5]
    assert rows[1]["bad"] is None and rows[1]["note"] == "text is not a scalar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_unknown_logger_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown logger 'tensorbord'.*tensorboard, wandb, mlflow"):
        MetricsLogger(tmp_path, 1, progress=False, loggers=["tensorbord"])
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing opened before the mistake was found


@pytest.mark.parametrize("logger,module,command", [("tensorboard", "tensorboard", "pip install tensorboard"),
                                                   ("wandb", "wandb", "pip install wandb"),
                                                   ("mlflow", "mlflow", "pip install mlflow")])
def test_missing_package_names_logger_and_command(tmp_path, monkeypatch, logger, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingLoggerError) as err:
        MetricsLogger(tmp_path, 1, progress=False, loggers=[logger])
    assert repr(logger) in str(err.value) and command in str(err.value)


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_two(tmp_path, loggers=["tensorboard"], config={"trainer": {"lr": 1e-6}})
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no event file written"
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward/mean", "loss", "policy_version", "finish/stop"} <= tags
    assert "note" not in tags and "bad" not in tags  # strings and NaN stay in the jsonl file only
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.5), (2, 1.25)]
    assert [e.step for e in acc.Scalars("finish/stop")] == [1]


def test_mlflow_file_store_holds_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the logger sets it for its default store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "windward-test")
    _log_two(tmp_path, loggers=["mlflow"], name="run-a", config={"trainer": {"lr": 1e-6}, "run": {"steps": 2}})
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    exp = client.get_experiment_by_name("windward-test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params["trainer.lr"] == "1e-06"
    history = client.get_metric_history(run.info.run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.25), (2, 0.5)]
    assert "bad" not in run.data.metrics and "note" not in run.data.metrics


def test_wandb_offline_run_holds_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "windward-test")
    _log_two(tmp_path, loggers=["wandb"], name="run-w", config={"trainer": {"lr": 1e-6}})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (history,) = runs[0].glob("*.wandb")  # the offline run's record, synced later with `wandb sync`
    from wandb.proto import wandb_internal_pb2

    # wandb-core, a process of its own, may still be writing the file when finish() returns: read it until
    # its exit record is there (30 s at most)
    deadline = time.monotonic() + 30
    while True:
        seen, done = [], False
        for data in _wandb_records(history.read_bytes()):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            done |= kind == "exit"
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                seen.append((items.get("_step"), items.get("reward/mean")))
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == [(1, 0.25), (2, 0.5)]


def _wandb_records(raw: bytes):
    """The records of a .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB-log framing in
    32 KiB blocks, each chunk with crc32 (4), length (2, little-endian) and type (1: full, 2: first, 3: middle,
    4: last)."""
    import struct

    assert raw[:4] == b":W&B", raw[:8]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        if pos + 7 + length > len(raw):  # still being written
            break
        chunk = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def test_a_failing_sink_is_dropped_not_fatal(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, 2, progress=False)

    class Broken:
        name = "broken"
        closed = False

        def log(self, step, scalars):
            raise OSError("disk full")

        def close(self):
            Broken.closed = True

    logger.add_sink(Broken, "broken")
    logger.log(1, {"reward/mean": 1.0})
    logger.log(2, {"reward/mean": 2.0})
    logger.close()
    assert logger.sinks == [] and Broken.closed
    assert "broken logger failed at step 1" in capsys.readouterr().err
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_sink_that_never_answers_is_dropped_and_training_never_waits_on_it(tmp_path, capsys):
    """A tracking server that accepts and never replies: the step's log returns at once, the next step past the
    timeout drops the sink naming it and the step, and close() waits at most the timeout."""
    import threading

    release, logged = threading.Event(), []

    class Hung:
        def log(self, step, scalars):
            logged.append(step)
            release.wait(30)

        def close(self):
            pass

    logger = MetricsLogger(tmp_path, 3, progress=False, sink_timeout_s=0.3)
    logger.add_sink(Hung, "mlflow")
    t0 = time.monotonic()
    logger.log(1, {"reward/mean": 1.0})
    assert time.monotonic() - t0 < 0.2  # handed over, not waited on
    time.sleep(0.5)
    logger.log(2, {"reward/mean": 2.0})
    assert logger.sinks == [] and logged == [1]
    err = capsys.readouterr().err
    assert "the mlflow logger has not answered step 1 for" in err and "MLFLOW_TRACKING_URI" in err, err
    logger.log(3, {"reward/mean": 3.0})
    t0 = time.monotonic()
    logger.close()
    assert time.monotonic() - t0 < 0.2
    release.set()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3

    # a sink stuck when the run ends: close() waits the timeout once and says what it left unsent
    release.clear()
    logger = MetricsLogger(tmp_path, 1, progress=False, sink_timeout_s=0.3)
    logger.add_sink(Hung, "wandb")
    logger.log(4, {"reward/mean": 4.0})
    t0 = time.monotonic()
    logger.close()
    assert 0.2 < time.monotonic() - t0 < 1.0
    assert "the wandb logger has not answered step 4" in capsys.readouterr().err
    release.set()


def test_a_sink_that_never_starts_is_an_error_naming_it(tmp_path):
    import threading

    release = threading.Event()

    def start():
        release.wait(30)
        raise RuntimeError("gave up")

    logger = MetricsLogger(tmp_path, 1, progress=False, sink_timeout_s=0.2)
    with pytest.raises(TimeoutError, match="the wandb logger did not start within 0.2 s.*WANDB"):
        logger.add_sink(start, "wandb")
    release.set()
    logger.close()
