"""Checkpoints fail clearly and resume falls back (rl/checkpoint.py, the trainers' save/load, rl/metrics.py).

- bytes changed at the same size (the size check passes): `latest` verifies the sha256 in the COMPLETE
  marker and falls back to the last good step, saying what it skipped;
- a mangled marker is "not complete", never a crash;
- a full disk (a real ENOSPC: the file is a link to /dev/full, or the free space reported low) is a
  CheckpointWriteError naming the folder and its free space, before writing or while writing;
- every checkpoint file loads with weights_only=True (RNG state included; a sharded checkpoint's
  metadata and non-tensor entries by the same rule) and a file holding pickled code is refused, not run;
- a metrics.jsonl row cut by a crash is skipped with a warning, and the next row is appended on a line
  of its own.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import socket
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from rl import checkpoint
from rl.checkpoint import (CheckpointLoadError, CheckpointManager, CheckpointWriteError, load_state,
                           plain_rng_state, rng_state_from_plain, save_state)
from rl.metrics import MetricsLogger, read_metrics


def write_steps(tmp_path, steps, keep_last=5) -> CheckpointManager:
    ckpt = CheckpointManager(tmp_path, keep_last=keep_last)
    for s in steps:
        folder = ckpt.begin(s)
        save_state({"w": torch.full((256,), float(s))}, folder / "trainer.pt")
        ckpt.commit(folder, s, {"step": s})
    return ckpt


def flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- corruption that keeps the size ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["trainer.pt", "meta.json"])
def test_same_size_corruption_falls_back_to_the_last_good_step(tmp_path, name):
    ckpt = write_steps(tmp_path, [1, 2, 3])
    flip_byte(tmp_path / "checkpoints/step-3" / name, offset=-2)
    assert ckpt._is_complete(tmp_path / "checkpoints/step-3")  # the sizes still match the marker
    with pytest.warns(UserWarning, match=rf"step-3 is skipped: {name} no longer match"):
        step, folder = ckpt.latest()
    assert step == 2 and torch.equal(load_state(folder / "trainer.pt")["w"], torch.full((256,), 2.0))
    assert [(p.name, bad) for p, bad in ckpt.skipped] == [("step-3", [name])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: a second look (the controller asks twice) is quiet
        assert ckpt.latest()[0] == 2
    assert (tmp_path / "checkpoints/step-3").is_dir()  # kept to look at; a new step 3 replaces it


def test_every_step_corrupted_means_no_checkpoint(tmp_path):
    ckpt = write_steps(tmp_path, [1, 2])
    for s in (1, 2):
        flip_byte(tmp_path / f"checkpoints/step-{s}/trainer.pt")
    with pytest.warns(UserWarning):
        assert ckpt.latest() is None
    assert len(ckpt.skipped) == 2


@pytest.mark.parametrize("marker", [
    '{"step": 1, "files": ["trainer.pt"]}',     # files as a list
    '{"step": 1, "files": {"trainer.pt": "x"}}',  # a size that is not a number
    '{"step": 1, "files": {"trainer.pt/x": 3}}',  # a path through a file
    '[1, 2]',
])
def test_a_mangled_marker_is_not_complete(tmp_path, marker):
    ckpt = write_steps(tmp_path, [1, 2])
    (tmp_path / "checkpoints/step-2/COMPLETE").write_text(marker)
    assert ckpt.latest()[0] == 1


def test_a_marker_of_binary_garbage_is_not_complete(tmp_path):
    ckpt = write_steps(tmp_path, [1, 2])
    (tmp_path / "checkpoints/step-2/COMPLETE").write_bytes(bytes(range(256)))
    assert ckpt.latest()[0] == 1


# --- a full disk ---------------------------------------------------------------------------------------


def test_a_full_disk_while_writing_a_tensor_file_names_the_folder(tmp_path):
    (tmp_path / "trainer.pt").symlink_to("/dev/full")  # every write: ENOSPC
    with pytest.raises(CheckpointWriteError, match=rf"no space left writing checkpoint file {tmp_path}/trainer.pt: "
                                                   rf"[\d,.]+ MiB free on the file system of {tmp_path}") as err:
        save_state({"w": torch.zeros(1 << 16)}, tmp_path / "trainer.pt")
    assert err.value.errno == errno.ENOSPC


def test_a_full_disk_while_committing_names_the_folder(tmp_path):
    ckpt = CheckpointManager(tmp_path)
    folder = ckpt.begin(1)
    (folder / "meta.json").symlink_to("/dev/full")
    with pytest.raises(CheckpointWriteError, match=r"MiB free on the file system of .*\.tmp-step-1"):
        ckpt.commit(folder, 1, {"step": 1})
    assert ckpt.latest() is None


def test_too_little_room_for_the_next_checkpoint_is_refused_before_writing(tmp_path, monkeypatch):
    ckpt = write_steps(tmp_path, [1])
    size = sum(f.stat().st_size for f in (tmp_path / "checkpoints/step-1").iterdir() if f.name != "COMPLETE")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(1 << 30, (1 << 30) - size + 1, size - 1))
    says = rf"not enough space for checkpoint step 2 in {tmp_path}/checkpoints: [\d.]+ MiB free, the last one \(step 1\)"
    with pytest.raises(CheckpointWriteError, match=says):
        ckpt.begin(2)
    assert not (tmp_path / "checkpoints/.tmp-step-2").exists()
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(1 << 30, 0, size))
    assert ckpt.begin(2).is_dir()  # exactly enough room


# --- weights_only ------------------------------------------------------------------------------------


class RunsCode:
    """A pickle that runs code when loaded with weights_only=False (it creates a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_file_with_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "x": RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointLoadError, match=rf"{tmp_path}/evil.pt does not load with weights_only=True"):
        load_state(tmp_path / "evil.pt")
    assert not marker.exists()


def test_rng_state_round_trips_through_weights_only(tmp_path):
    state = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}
    np.random.standard_normal()  # leaves a cached gaussian in numpy's legacy state
    state["numpy_rng"] = np.random.get_state()
    want = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    save_state(plain_rng_state(state), tmp_path / "rng.pt")
    back = rng_state_from_plain(load_state(tmp_path / "rng.pt"))
    torch.set_rng_state(back["torch_rng"])
    np.random.set_state(back["numpy_rng"])
    random.setstate(back["python_rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2:] == want[2:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_trainer_checkpoints_load_weights_only_and_a_full_disk_is_clear(tiny_model, tmp_path):
    """One FSDP2 rank in process: the sharded checkpoint restores the run bitwise and every file it
    reads goes through weights_only rules; a rank file, a shard metadata file or a shard entry holding
    pickled code is refused, never run; a full disk while saving names the file."""
    import shutil

    from rl.trainer.fsdp import FSDPTrainer
    from tests.rl.test_backends import full_state, make_batch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-3, grad_clip=0.0, algo={"loss_agg_mode": "token-mean"})
    try:
        t.init_distributed("127.0.0.1", _free_port())
        t.train_step(make_batch())
        good = tmp_path / "good"
        good.mkdir()
        t.save_checkpoint(str(good))
        assert sorted(p.name for p in good.rglob("*")) == [".metadata", "__0_0.distcp", "trainer",
                                                          "trainer-rng-rank0.pt", "trainer-state.pt"]
        for f in good.glob("*.pt"):
            assert torch.serialization.get_unsafe_globals_in_checkpoint(str(f)) == [], f.name
        second = t.train_step(make_batch())["train/loss"], full_state(t)
        t.load_checkpoint(str(good))
        again = t.train_step(make_batch())["train/loss"], full_state(t)
        assert second[0] == again[0] and all(torch.equal(v, again[1][k]) for k, v in second[1].items())

        ran = tmp_path / "ran"
        evil = tmp_path / "evil"
        shutil.copytree(good, evil)
        torch.save({"torch_rng": torch.get_rng_state(), "x": RunsCode(str(ran))}, evil / "trainer-rng-rank0.pt")
        with pytest.raises(CheckpointLoadError, match="trainer-rng-rank0.pt does not load with weights_only=True"):
            t.load_checkpoint(str(evil))
        shutil.rmtree(evil)
        shutil.copytree(good, evil)
        (evil / "trainer/.metadata").write_bytes(pickle.dumps(RunsCode(str(ran))))
        with pytest.raises(CheckpointLoadError, match="global io.open is not part of a checkpoint.s metadata"):
            t.load_checkpoint(str(evil))
        assert not ran.exists()

        full = tmp_path / "full"
        full.mkdir()
        (full / "trainer-rng-rank0.pt").symlink_to("/dev/full")
        with pytest.raises(CheckpointWriteError, match=rf"no space left writing checkpoint file {full}/trainer-rng-rank0.pt"):
            t.save_checkpoint(str(full))
        (full / "trainer-rng-rank0.pt").unlink()
        (full / "trainer").mkdir()
        (full / "trainer/__0_0.distcp").symlink_to("/dev/full")
        with pytest.raises(CheckpointWriteError, match=rf"no space left writing checkpoint file {full}/trainer/__<rank>_0"):
            t.save_checkpoint(str(full))
    finally:
        t.shutdown()
        torch.set_num_threads(before)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_entry_holding_pickled_code_is_refused(tmp_path):
    """A non-tensor entry of a sharded checkpoint is read with weights_only=True (DCP's own reader
    unpickles it unrestricted); plain data still round-trips."""
    checkpoint.save_sharded({"lr": 0.1, "betas": (0.9, 0.99), "x": RunsCode(str(tmp_path / "ran"))}, tmp_path / "ck")
    back = {"lr": None, "betas": None}
    checkpoint.load_sharded(back, tmp_path / "ck", no_dist=True)
    assert back == {"lr": 0.1, "betas": (0.9, 0.99)}
    with pytest.raises(CheckpointLoadError, match="does not load with weights_only rules"):
        checkpoint.load_sharded({"x": None}, tmp_path / "ck", no_dist=True)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(CheckpointLoadError, match="has no .metadata: not a sharded checkpoint"):
        checkpoint.load_sharded({"x": None}, tmp_path, no_dist=True)


# --- metrics.jsonl cut by a crash ---------------------------------------------------------------------


def test_a_torn_metrics_row_is_skipped_and_the_next_row_starts_a_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.25}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"step": 3, "x": 1.0})[:9])
    with pytest.warns(UserWarning, match=r"metrics.jsonl: skipped line\(s\) \[3\]"):
        assert read_metrics(path) == rows
    logger = MetricsLogger(tmp_path, total_steps=3, progress=False)
    logger.log(3, {"reward/mean": 0.75})
    logger.close()
    with pytest.warns(UserWarning, match=r"skipped line\(s\) \[3\]"):
        got = read_metrics(path)
    assert [r["step"] for r in got] == [1, 2, 3] and got[-1]["reward/mean"] == 0.75


@pytest.mark.parametrize("line", ['[1, 2]', '"step"', '{"no_step": 1}', '{"step": "3"}', "\x00\x01"])
def test_a_line_that_is_not_a_metrics_row_is_skipped(tmp_path, line):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + line + '\n{"step": 2}\n')
    with pytest.warns(UserWarning, match=r"skipped line\(s\) \[2\]"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_no_metrics_file_has_no_rows(tmp_path):
    assert read_metrics(tmp_path / "metrics.jsonl") == []
    assert not os.path.exists(tmp_path / "metrics.jsonl")
