"""Atomic checkpoints of a run folder.

Layout::

    <ckpt_root>/
      step_000004/
        actor/rank0/model.pt        # whatever the job's workers write
        trainer_state.json
        MANIFEST.json               # written last: every file with size and sha256
      step_000006/ ...
      .tmp_step_000008_k2j3/        # a checkpoint being written (ignored by readers)

A step folder is complete only if its ``MANIFEST.json`` exists and every file it lists has the
recorded size (and sha256, for a deep check). :class:`CheckpointWriter` makes that true or leaves
nothing: workers write into a hidden temporary folder; on success every file is fsynced, the
manifest is written and fsynced, and the folder is renamed into place in one ``os.rename``. A crash
at any point leaves either the previous state or a complete checkpoint.

Resuming uses :func:`find_latest_checkpoint`: the newest step folder that verifies, with a warning
for every newer one that does not.

On a multi-node cluster ``ckpt_root`` must be on storage every node sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from roll.errors import CheckpointError, StateError

MANIFEST_NAME = "MANIFEST.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_CHUNK = 1 << 20


def step_dir_name(step: int) -> str:
    """``step_000006`` for step 6 (six digits, more if needed)."""
    return f"step_{step:06d}"


# --------------------------------------------------------------------------------- fs helpers


def _fsync_dir(path: Path) -> None:
    """Persist a folder's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_and_fsync(path: Path) -> tuple[int, str]:
    """Read a file once: its size in bytes and sha256 hex digest; fsync it on the way."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(handle.fileno())
    return size, digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_tree(path: Path) -> None:
    """Delete a folder: rename it to a hidden name first so a crash mid-delete never leaves a
    half-deleted ``step_*`` folder behind."""
    doomed = path.with_name(f".old_{path.name}_{secrets.token_hex(4)}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, fsync, rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt") from None


# --------------------------------------------------------------------------------- writer


class CheckpointWriter:
    """Write one step's checkpoint atomically.

    Usage::

        with CheckpointWriter(ckpt_root, step=6, keep_last=3) as ckpt:
            actor.save_checkpoint(ckpt.tmp_dir / "actor")     # workers write here
            write_json(ckpt.tmp_dir / "trainer_state.json", state)
        # here ckpt.path == ckpt_root / "step_000006" exists and verifies

    If the block raises, the temporary folder is deleted and the exception propagates. Re-running a
    step replaces its old checkpoint only after the new one is complete.

    Args:
        ckpt_root: folder holding the ``step_*`` checkpoints (created if missing).
        step: the training step the checkpoint captures (number of finished steps).
        keep_last: after a commit keep only this many newest complete checkpoints; None keeps all.
    """

    def __init__(self, ckpt_root: str | Path, step: int, keep_last: int | None = None) -> None:
        if step < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {step}")
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 or None, got {keep_last}")
        self.root = Path(ckpt_root)
        self.step = step
        self.keep_last = keep_last
        self.path = self.root / step_dir_name(step)
        self._tmp_dir: Path | None = None
        self.committed = False

    @property
    def tmp_dir(self) -> Path:
        """The hidden folder workers write into; exists only inside the ``with`` block."""
        if self._tmp_dir is None:
            raise StateError("CheckpointWriter.tmp_dir exists only inside its `with` block")
        return self._tmp_dir

    def __enter__(self) -> CheckpointWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp_{step_dir_name(self.step)}_{secrets.token_hex(4)}"
        tmp.mkdir()
        self._tmp_dir = tmp
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        tmp, self._tmp_dir = self.tmp_dir, None
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            self._commit(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.committed = True
        if self.keep_last is not None:
            prune_checkpoints(self.root, self.keep_last)

    def _commit(self, tmp: Path) -> None:
        files: dict[str, dict[str, Any]] = {}
        folders = [tmp]
        for entry in sorted(tmp.rglob("*")):
            relative = entry.relative_to(tmp).as_posix()
            if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
                raise CheckpointError(
                    f"checkpoint step {self.step}: {relative} is not a plain file or folder; "
                    "write real files into the checkpoint folder (no symlinks)"
                )
            if entry.is_dir():
                folders.append(entry)
                continue
            if relative == MANIFEST_NAME:
                raise CheckpointError(
                    f"checkpoint step {self.step}: a worker wrote {MANIFEST_NAME}, a name the "
                    "checkpoint writer reserves; save that file under another name"
                )
            size, sha = _hash_and_fsync(entry)
            files[relative] = {"size": size, "sha256": sha}
        for folder in folders:
            _fsync_dir(folder)
        manifest = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "created_at": time.time(),
            "files": files,
        }
        write_json(tmp / MANIFEST_NAME, manifest)  # fsyncs the file and tmp/
        if self.path.exists():
            # A re-run of the same step: move the old one aside only now the new one is complete.
            old = self.root / f".old_{self.path.name}_{secrets.token_hex(4)}"
            os.rename(self.path, old)
            os.rename(tmp, self.path)
            _fsync_dir(self.root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, self.path)
            _fsync_dir(self.root)


# --------------------------------------------------------------------------------- readers


def _problem(path: Path, deep: bool) -> str | None:
    """Why the checkpoint at ``path`` is unusable ("incomplete (...)", "corrupt (...)"), or None."""
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        return "missing (no such folder)"
    if not manifest_path.is_file():
        return f"incomplete ({MANIFEST_NAME} missing)"
    try:
        manifest = read_json(manifest_path)
        version = manifest["format_version"]
        files = {
            name: (int(entry["size"]), str(entry["sha256"])) for name, entry in manifest["files"].items()
        }
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError):
        return f"corrupt ({MANIFEST_NAME} is unreadable)"
    if version != FORMAT_VERSION:
        return f"unsupported (format version {version}; this roll reads version {FORMAT_VERSION})"
    match = _STEP_DIR.match(path.name)
    if match and manifest.get("step") != int(match.group(1)):
        return f"corrupt ({MANIFEST_NAME} records step {manifest.get('step')})"
    for relative, (expected_size, expected_sha) in files.items():
        file_path = path / relative
        if not file_path.is_file():
            return f"incomplete ({relative} missing)"
        size = file_path.stat().st_size
        if size < expected_size:
            return f"incomplete ({relative} truncated: {size} of {expected_size} bytes)"
        if size > expected_size:
            return f"corrupt ({relative} has {size} bytes, the manifest says {expected_size})"
        if deep and _sha256(file_path) != expected_sha:
            return f"corrupt ({relative} sha256 mismatch)"
    return None


def verify_checkpoint(path: str | Path, deep: bool = True) -> None:
    """Check a step folder against its manifest; raise :class:`CheckpointError` naming the
    missing, truncated or corrupt file. Sizes are always checked, sha256 only when ``deep``."""
    path = Path(path)
    problem = _problem(path, deep)
    if problem is not None:
        raise CheckpointError(
            f"checkpoint {path.name} is {problem}; resume from an earlier checkpoint "
            f"(delete {path} to skip it) or start the run over"
        )


def _step_folders(ckpt_root: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step_*`` folder, oldest first; hidden folders are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for entry in ckpt_root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def list_checkpoints(ckpt_root: str | Path, deep: bool = False) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every step folder, oldest first.

    ``complete`` checks the manifest and file sizes; pass ``deep=True`` to also check sha256.
    """
    return [(step, path, _problem(path, deep) is None) for step, path in _step_folders(Path(ckpt_root))]


def find_latest_checkpoint(ckpt_root: str | Path, deep: bool = True, cleanup: bool = True) -> Path | None:
    """The newest step folder that verifies, or None if there is none.

    Every newer folder that fails verification is skipped with a warning naming the problem.
    With ``cleanup`` the hidden temporary folders of interrupted writes are deleted: call it that
    way only when no checkpoint is being written (at resume, before training starts).
    """
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    if cleanup:
        for entry in root.iterdir():
            if entry.is_dir() and entry.name.startswith((".tmp_step_", ".old_step_")):
                shutil.rmtree(entry, ignore_errors=True)
    skipped: list[tuple[str, str]] = []
    latest: Path | None = None
    for _, path in reversed(_step_folders(root)):
        problem = _problem(path, deep)
        if problem is None:
            latest = path
            break
        skipped.append((path.name, problem))
    fallback = (
        f"resuming from {latest.name}"
        if latest is not None
        else "no earlier complete checkpoint, starting from scratch"
    )
    for name, problem in skipped:
        warnings.warn(f"checkpoint {name} is {problem} — skipping it and {fallback}", stacklevel=2)
    return latest


def prune_checkpoints(ckpt_root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints; returns the deleted paths.

    Incomplete folders are left for inspection (they are never resumed from).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    complete = [path for _, path, ok in list_checkpoints(ckpt_root) if ok]
    doomed = complete[:-keep_last]
    for path in doomed:
        _remove_tree(path)
    return doomed
