"""Checkpoints that are written atomically and found again: one folder per step.

Owns: the layout `<run dir>/checkpoints/step-<N>/`, writing into a temporary folder that is renamed
into place only after every file and a `COMPLETE` marker are on disk (a rename is atomic on POSIX,
so a crash mid-write never leaves a folder that looks complete), finding the newest complete
checkpoint, cleaning what crashed writes left, and keeping only the last k.

The marker lists every file with its size and sha256 (hashed as the commit reads each file back to
fsync it). A folder whose sizes do not match (copied in part, truncated afterwards) is not complete;
`latest` also checks the hashes, newest first, and skips a folder whose bytes changed at the same
size (saying which file), so a resume falls back to the last good step. Re-committing a step moves
the old folder aside first, so a crash at any point leaves either the old or the new one loadable.

Also owns how checkpoint files are read and written: `save_state` (a full disk is a
`CheckpointWriteError` naming the folder and its free space, never torch's opaque writer error;
`begin` refuses to start when the disk has less room than the last checkpoint took) and
`load_state` (`torch.load(weights_only=True)`: tensors and plain data only; `plain_rng_state`
makes numpy's RNG state such data). Sharded state (`save_sharded`, `load_sharded`) is
torch.distributed.checkpoint's format, every rank writing and reading only its own shards, read
under the same rule: the metadata through an unpickler that knows only DCP's own record classes, and
non-tensor entries with weights_only=True (DCP's own reader unpickles both unrestricted).

Never: decide what goes into a checkpoint (the controller and the trainer do).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

_STEP = re.compile(r"^step-(\d+)$")
_TMP = re.compile(r"^\.tmp-step-(\d+)$")  # being written (or a crashed write)
_OLD = re.compile(r"^\.old-step-(\d+)$")  # moved aside while a step is replaced


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for want of space (errno ENOSPC, or another rank's); says
    where and how much is free."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that does not load (corrupt, or holding more than tensors and plain data)."""


def free_bytes(path: Path) -> int:
    """Free bytes on the file system of `path` (or of its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def disk_full(path: Path, err: OSError) -> OSError:
    """`err` as a CheckpointWriteError naming the folder and its free space when the disk is full
    (ENOSPC, EDQUOT); any other error as it is."""
    if isinstance(err, CheckpointWriteError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return err
    folder = Path(path).parent
    return CheckpointWriteError(err.errno, f"no space left writing checkpoint file {path}: {_mib(free_bytes(folder))} "
                                           f"free on the file system of {folder}; free some space, lower "
                                           f"run.keep_last or put run.dir on a larger disk")


def save_state(obj, path: str | Path) -> None:
    """torch.save through a Python file, so a full disk surfaces as ENOSPC (torch's own writer says
    only "unexpected pos") and then as a CheckpointWriteError."""
    try:
        with open(path, "wb") as fh:
            torch.save(obj, fh)
    except OSError as err:
        raise disk_full(Path(path), err) from err


def load_state(path: str | Path, map_location="cpu", allow: tuple = ()):
    """torch.load(weights_only=True): tensors and plain data, plus the classes in `allow`
    (e.g. DeepSpeed's loss scaler); never arbitrary pickled code. A file that does not load is a
    CheckpointLoadError naming it."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointLoadError(f"checkpoint file {path} does not load with weights_only=True: {err}") from err


def save_sharded(state: dict, folder: str | Path) -> None:
    """Collective: every rank writes its shards of `state` (nested state dicts of DTensors, tensors and
    plain data) into `folder` (torch.distributed.checkpoint: one `__<rank>_0.distcp` per rank and a
    `.metadata`). A full disk on any rank is a CheckpointWriteError on every rank."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.save(state, checkpoint_id=str(folder))
    except CheckpointException as err:  # DCP gathers every rank's failure and raises the same on each
        full = _first_failure(err, OSError)
        if full is None:
            raise
        raise disk_full(Path(folder) / "__<rank>_0.distcp", full) from err


def load_sharded(state: dict, folder: str | Path, no_dist: bool = False) -> None:
    """Fill `state` (the same nesting `save_sharded` was given, holding this rank's tensors) in place
    from `folder`, resharding as needed; `no_dist` reads into one process's full tensors (an export).
    Unknown classes in the metadata or pickled code in an entry are a CheckpointLoadError."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointLoadError(f"{folder} has no .metadata: not a sharded checkpoint (or written in part)")
    reader_class, planner_class = _safe_dcp()
    reader, planner = reader_class(str(folder)), planner_class()
    try:
        with warnings.catch_warnings():  # no_dist is the intent, not torch's guess
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(state, storage_reader=reader, planner=planner, no_dist=no_dist)
    except (pickle.UnpicklingError, EOFError, CheckpointException, AssertionError) as err:
        refused = reader.refused or planner.refused  # DCP rewraps (or only prints) a reader's own error
        if refused is None:
            raise
        raise CheckpointLoadError(f"sharded checkpoint {folder} does not load with weights_only rules: "
                                  f"{refused}") from err


def _first_failure(err, kind):
    """The first exception of type `kind` among a DCP CheckpointException's per-rank failures."""
    for failure in getattr(err, "failures", {}).values():
        exc = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(exc, kind):
            return exc
    return None


def read_sharded(folder: str | Path) -> dict:
    """Every entry of a sharded checkpoint in one process, by its flattened name
    (`model.lm_head.weight`, `optimizer.state.<param>.exp_avg`, ...): full tensors and plain data."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = Path(folder)
    try:
        entries = _safe_dcp()[0](str(folder)).read_metadata().state_dict_metadata
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        raise CheckpointLoadError(f"sharded checkpoint {folder}: its .metadata does not load: {err}") from err
    state = {name: torch.empty(md.size, dtype=md.properties.dtype) if isinstance(md, TensorStorageMetadata) else None
             for name, md in entries.items()}
    load_sharded(state, folder, no_dist=True)
    return state


_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's `.metadata` holds records of its own dataclasses, torch sizes, dtypes and layouts; any
    other global (a function to call, a class to build) is refused."""

    def find_class(self, module, name):
        import importlib

        found = getattr(importlib.import_module(module), name, None) if module in (_DCP_METADATA, "torch") else None
        if (module, name) in _DCP_GLOBALS or isinstance(found, torch.dtype) or \
                (module == _DCP_METADATA and isinstance(found, type)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a checkpoint's metadata")


def _safe_dcp():
    """(reader, planner) classes for `load_sharded`: DCP's file reader and default planner with the
    two unpickling steps made safe. Built on first use (torch.distributed.checkpoint loads lazily)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        refused = None  # the unpickling error, kept: DCP turns it into a message-only AssertionError

        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            with open(Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata"), "rb") as fh:
                try:
                    metadata = _MetadataUnpickler(fh).load()
                except (pickle.UnpicklingError, EOFError) as err:
                    self.refused = self.refused or err
                    raise
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeLoadPlanner(DefaultLoadPlanner):
        refused = None

        def load_bytes(self, read_item, value):  # DCP's own: torch.load(value, weights_only=False)
            try:
                obj = torch.load(value, weights_only=True)
            except (pickle.UnpicklingError, EOFError) as err:
                self.refused = self.refused or err
                raise
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeReader, SafeLoadPlanner


def agree_on_write(error: OSError | None, folder: str | Path, all_reduce) -> None:
    """Collective, after each rank wrote its checkpoint files: every rank learns whether any failed
    and raises (one rank raising alone would leave the others waiting at the next barrier).
    `all_reduce(list[float]) -> list[float]` sums over the ranks."""
    failed = int(all_reduce([float(error is not None)])[0])
    if error is not None:
        raise error
    if failed:
        raise CheckpointWriteError(f"{failed} other trainer rank(s) could not write their files into checkpoint "
                                   f"{folder}; their errors say why ({_mib(free_bytes(Path(folder)))} free here)")


def plain_rng_state(state: dict) -> dict:
    """A trainer's RNG state (torch, numpy, random, cuda) that `load_state` reads: numpy's legacy
    state tuple (name, 624 uint32 keys, pos, has_gauss, cached gaussian) becomes a list with the keys
    as an int64 tensor. Python's `random.getstate()` is already plain (ints in tuples)."""
    out = dict(state)
    if isinstance(state.get("numpy_rng"), tuple):
        name, keys, pos, has_gauss, gauss = state["numpy_rng"]
        out["numpy_rng"] = [str(name), torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss),
                            float(gauss)]
    return out


def rng_state_from_plain(state: dict) -> dict:
    """The inverse of `plain_rng_state`: what `np.random.set_state` and `random.setstate` take."""
    out = dict(state)
    if isinstance(state.get("numpy_rng"), list):
        name, keys, pos, has_gauss, gauss = state["numpy_rng"]
        out["numpy_rng"] = (name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    def __init__(self, run_dir: Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.skipped: list[tuple[Path, list[str]]] = []  # what the last `latest` skipped, and why
        self._hashed: dict[tuple[str, int], list[str]] = {}

    def begin(self, step: int) -> Path:
        """A fresh temporary folder to write step `step` into (shared by all writers). What earlier
        crashed writes left is removed first."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean()
        found = self.complete()
        if found:  # the new checkpoint sits beside the last one until pruning: it needs as much room
            last_step, last = found[-1]
            need, free = _marker_bytes(last), free_bytes(self.root)
            if free < need:
                raise CheckpointWriteError(errno.ENOSPC, f"not enough space for checkpoint step {step} in {self.root}: "
                                           f"{_mib(free)} free, the last one (step {last_step}) took {_mib(need)}; "
                                           f"free some space, lower run.keep_last or put run.dir on a larger disk")
        tmp = self.root / f".tmp-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, step: int, meta: dict) -> Path:
        """Mark `tmp` complete and rename it into place; prune old checkpoints."""
        files, sha256 = {}, {}
        writing = tmp / "meta.json"
        try:
            writing.write_text(json.dumps(meta, indent=1))
            for f in sorted(tmp.rglob("*")):  # everything durable before the marker
                if f.is_file():
                    name = str(f.relative_to(tmp))
                    with open(f, "rb") as fh:
                        sha256[name] = _sha256(fh)
                        os.fsync(fh.fileno())
                    files[name] = f.stat().st_size
            writing = tmp / "COMPLETE"
            with open(writing, "w") as fh:
                fh.write(json.dumps({"step": step, "files": files, "sha256": sha256}))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise disk_full(writing, err) from err
        _fsync_dir(tmp)
        final = self.root / f"step-{step}"
        if final.exists():  # replacing a step: move the old one aside, never delete it first
            old = self.root / f".old-step-{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(self.root)
        self._prune()
        return final

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint, oldest first. A step whose replace was
        interrupted is found under the name it was moved aside to (`clean` puts it back)."""
        if not self.root.is_dir():
            return []
        found: dict[int, Path] = {}
        for p in self.root.iterdir():
            m = _STEP.match(p.name) or _OLD.match(p.name)
            if m and self._is_complete(p):
                step = int(m.group(1))
                if step not in found or _STEP.match(p.name):  # the final name wins
                    found[step] = p
        return sorted(found.items())

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint whose files hash to what its marker says. A folder whose
        bytes changed is skipped with a warning naming it and the files (kept on disk to look at;
        `skipped` lists them); the next older one is tried."""
        self.skipped = []
        for step, folder in reversed(self.complete()):
            bad = self._changed_files(folder)
            if not bad:
                return step, folder
            self.skipped.append((folder, bad))
        return None

    def clean(self) -> list[Path]:
        """Remove what crashed writes left: temporary folders, folders moved aside by an interrupted
        replace (or put back, when the replace died before its new folder was in place), and step
        folders without a valid marker. Returns what was removed."""
        if not self.root.is_dir():
            return []
        removed = []
        for p in list(self.root.iterdir()):
            if _OLD.match(p.name):
                final = self.root / p.name[len(".old-"):]
                if not self._is_complete(final):  # the old folder is the only complete copy
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(p, final)
        done = {p.name for _, p in self.complete()}
        for p in self.root.iterdir():
            if _TMP.match(p.name) or _OLD.match(p.name) or (_STEP.match(p.name) and p.name not in done):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def _is_complete(self, folder: Path) -> bool:
        try:
            marker = (folder / "COMPLETE").read_text()
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return False
        try:
            files = json.loads(marker)["files"]
        except (ValueError, KeyError, TypeError):
            return marker.strip().isdigit()  # a marker written before it listed the files
        try:
            return all((folder / name).stat().st_size == size for name, size in files.items())
        except (FileNotFoundError, NotADirectoryError, AttributeError, TypeError):  # a file gone, a mangled marker
            return False

    def _changed_files(self, folder: Path) -> list[str]:
        """Files of a complete folder whose sha256 differs from the marker's (none for a marker written
        before hashes were recorded), with a warning the first time. Remembered per marker, so a
        second `latest` reads nothing again."""
        marker = folder / "COMPLETE"
        key = (str(folder), marker.stat().st_mtime_ns)
        if key in self._hashed:
            return self._hashed[key]
        try:
            expect = dict(json.loads(marker.read_text()).get("sha256", {}))
        except (ValueError, AttributeError, TypeError):
            expect = {}
        bad = []
        for name, digest in expect.items():
            try:
                with open(folder / name, "rb") as fh:
                    if _sha256(fh) != digest:
                        bad.append(name)
            except OSError:
                bad.append(name)
        if bad:
            warnings.warn(f"checkpoint {folder} is skipped: {', '.join(bad)} no longer match(es) the sha256 its "
                          f"COMPLETE marker recorded (changed after it was written); falling back to an older one",
                          stacklevel=3)
        self._hashed[key] = bad
        return bad

    def _prune(self) -> None:
        for _, p in self.complete()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        self.clean()


def _sha256(fh) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(1 << 24):
        h.update(chunk)
    return h.hexdigest()


def _marker_bytes(folder: Path) -> int:
    """What a complete checkpoint's files take, from its marker (0 for a marker without sizes)."""
    try:
        return sum(json.loads((folder / "COMPLETE").read_text())["files"].values())
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return 0
