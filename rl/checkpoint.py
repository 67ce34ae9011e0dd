"""Checkpoints that are written atomically and found again: one folder per step.

Owns: the layout `<run dir>/checkpoints/step-<N>/`, writing into a temporary folder that is renamed
into place only after every file and a `COMPLETE` marker are on disk (a rename is atomic on POSIX,
so a crash mid-write never leaves a folder that looks complete), finding the newest complete
checkpoint, cleaning what crashed writes left, and keeping only the last k.

The marker lists every file with its size; a folder whose files do not match it (copied in part,
truncated afterwards) is not complete. Re-committing a step moves the old folder aside first, so a
crash at any point leaves either the old or the new one loadable.

Never: decide what goes into a checkpoint (the controller and the trainer do).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

_STEP = re.compile(r"^step-(\d+)$")
_TMP = re.compile(r"^\.tmp-step-(\d+)$")  # being written (or a crashed write)
_OLD = re.compile(r"^\.old-step-(\d+)$")  # moved aside while a step is replaced


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

    def begin(self, step: int) -> Path:
        """A fresh temporary folder to write step `step` into (shared by all writers). What earlier
        crashed writes left is removed first."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean()
        tmp = self.root / f".tmp-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def commit(self, tmp: Path, step: int, meta: dict) -> Path:
        """Mark `tmp` complete and rename it into place; prune old checkpoints."""
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        files = {}
        for f in sorted(tmp.rglob("*")):  # everything durable before the marker
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(tmp))] = f.stat().st_size
        with open(tmp / "COMPLETE", "w") as fh:
            fh.write(json.dumps({"step": step, "files": files}))
            fh.flush()
            os.fsync(fh.fileno())
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
        found = self.complete()
        return found[-1] if found else None

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
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            files = json.loads(marker)["files"]
        except (ValueError, KeyError, TypeError):
            return marker.strip().isdigit()  # a marker written before it listed the files
        try:
            return all((folder / name).stat().st_size == size for name, size in files.items())
        except FileNotFoundError:
            return False

    def _prune(self) -> None:
        for _, p in self.complete()[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        self.clean()
