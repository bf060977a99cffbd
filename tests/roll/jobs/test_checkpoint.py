"""Atomic checkpoints: layout, failed writes, verification, resume selection, pruning."""

from __future__ import annotations

import hashlib
import warnings

import pytest

from roll.errors import CheckpointError, StateError
from roll.jobs.checkpoint import (
    MANIFEST_NAME,
    CheckpointWriter,
    find_latest_checkpoint,
    list_checkpoints,
    read_json,
    verify_checkpoint,
    write_json,
)


def _save(root, step, keep_last=None, payload=b"weights"):
    """Write a small two-worker checkpoint for ``step``; returns its final path."""
    with CheckpointWriter(root, step, keep_last=keep_last) as ckpt:
        for rank in (0, 1):
            folder = ckpt.tmp_dir / "actor" / f"rank{rank}"
            folder.mkdir(parents=True)
            (folder / "model.pt").write_bytes(payload + bytes([rank]) * 100)
        write_json(ckpt.tmp_dir / "trainer_state.json", {"step": step})
    return ckpt.path


def test_commit_produces_layout_and_manifest(tmp_path):
    path = _save(tmp_path, 6)
    assert path == tmp_path / "step_000006"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        MANIFEST_NAME,
        "actor/rank0/model.pt",
        "actor/rank1/model.pt",
        "trainer_state.json",
    ]
    manifest = read_json(path / MANIFEST_NAME)
    assert manifest["step"] == 6 and manifest["format_version"] == 1
    assert manifest["created_at"] > 0
    model = path / "actor/rank1/model.pt"
    assert manifest["files"]["actor/rank1/model.pt"] == {
        "size": model.stat().st_size,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    assert [p.name for p in tmp_path.iterdir()] == ["step_000006"]  # no tmp folder left
    verify_checkpoint(path)
    assert read_json(path / "trainer_state.json") == {"step": 6}


def test_exception_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="worker died"), CheckpointWriter(tmp_path, 3) as ckpt:
        (ckpt.tmp_dir / "model.pt").write_bytes(b"half")
        raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []
    assert find_latest_checkpoint(tmp_path) is None


def test_tmp_dir_outside_with_block_is_an_error(tmp_path):
    writer = CheckpointWriter(tmp_path, 1)
    with pytest.raises(StateError, match="with"):
        _ = writer.tmp_dir


def test_rerun_of_same_step_replaces_old_checkpoint(tmp_path):
    _save(tmp_path, 4, payload=b"old")
    path = _save(tmp_path, 4, payload=b"new")
    assert (path / "actor/rank0/model.pt").read_bytes().startswith(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["step_000004"]
    verify_checkpoint(path)


def test_truncated_file_falls_back_to_previous_with_warning(tmp_path):
    _save(tmp_path, 2)
    older = _save(tmp_path, 4)
    newest = _save(tmp_path, 6)
    model = newest / "actor/rank1/model.pt"
    model.write_bytes(model.read_bytes()[:10])
    with pytest.raises(CheckpointError, match="actor/rank1/model.pt truncated"):
        verify_checkpoint(newest, deep=False)
    with pytest.warns(UserWarning) as caught:
        assert find_latest_checkpoint(tmp_path) == older
    message = str(caught[0].message)
    assert "step_000006" in message and "actor/rank1/model.pt" in message
    assert "resuming from step_000004" in message


def test_corrupt_file_is_caught_by_deep_check_only(tmp_path):
    path = _save(tmp_path, 1)
    model = path / "actor/rank0/model.pt"
    data = bytearray(model.read_bytes())
    data[0] ^= 0xFF
    model.write_bytes(bytes(data))
    verify_checkpoint(path, deep=False)  # same size: the shallow check passes
    with pytest.raises(CheckpointError, match="actor/rank0/model.pt sha256 mismatch"):
        verify_checkpoint(path)


def test_missing_manifest_is_skipped(tmp_path):
    older = _save(tmp_path, 4)
    newest = _save(tmp_path, 6)
    (newest / MANIFEST_NAME).unlink()
    with pytest.raises(CheckpointError, match="incomplete .MANIFEST.json missing"):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="step_000006 is incomplete .MANIFEST.json missing."):
        assert find_latest_checkpoint(tmp_path) == older
    assert list_checkpoints(tmp_path) == [(4, older, True), (6, newest, False)]


def test_missing_file_and_no_fallback(tmp_path):
    path = _save(tmp_path, 1)
    (path / "trainer_state.json").unlink()
    with pytest.warns(UserWarning, match="trainer_state.json missing.*starting from scratch"):
        assert find_latest_checkpoint(tmp_path) is None


def test_tmp_folders_are_ignored_and_cleaned_up(tmp_path):
    good = _save(tmp_path, 2)
    stray = tmp_path / ".tmp_step_000004_dead"
    (stray / "actor").mkdir(parents=True)
    (stray / "actor" / "model.pt").write_bytes(b"partial")
    assert list_checkpoints(tmp_path) == [(2, good, True)]
    assert stray.exists()  # listing never deletes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_latest_checkpoint(tmp_path) == good
    assert not stray.exists()


def test_keep_last_prunes_older_complete_checkpoints(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / "step_000002" / MANIFEST_NAME).unlink()  # incomplete: left for inspection
    _save(tmp_path, 4, keep_last=2)
    assert [(step, ok) for step, _, ok in list_checkpoints(tmp_path)] == [
        (2, False),
        (3, True),
        (4, True),
    ]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["step_000002", "step_000003", "step_000004"]


def test_no_checkpoint_root_or_empty_root(tmp_path):
    assert find_latest_checkpoint(tmp_path / "nothing") is None
    assert find_latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path / "nothing") == []


def test_reserved_manifest_name_and_bad_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="reserves"), CheckpointWriter(tmp_path, 1) as ckpt:
        (ckpt.tmp_dir / MANIFEST_NAME).write_text("{}")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointWriter(tmp_path, 1, keep_last=0)


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_json(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json is not valid JSON"):
        read_json(bad)
