"""Atomic writes: complete or nothing, no temporary file left behind, stale ones of dead writers swept."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mm2ct.atomic import atomic_path, sweep_stale, temporary_name, write_text


def test_success_replaces_and_leaves_no_temporary(tmp_path) -> None:
    target = tmp_path / "table.md"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path) -> None:
    target = tmp_path / "last.pt"
    target.write_text("complete checkpoint")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "complete checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_temporary_names_keep_the_extension_and_the_pid() -> None:
    from pathlib import Path

    assert temporary_name(Path("a/sct.nii.gz")).name == f".sct.nii.gz.tmp-{os.getpid()}.nii.gz"
    assert temporary_name(Path("predictions.npz")).name == f".predictions.npz.tmp-{os.getpid()}.npz"


def test_sweep_removes_only_dead_writers_files(tmp_path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / f".last.pt.tmp-{dead}.pt").write_text("x")
    (tmp_path / f".cache.tmp-{dead}").mkdir()
    (tmp_path / f".cache.tmp-{dead}" / "t1.npy").write_text("x")
    mine = tmp_path / f".best.pt.tmp-{os.getpid()}.pt"
    mine.write_text("x")
    (tmp_path / "last.pt").write_text("keep")
    removed = sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".last.pt.tmp-{dead}.pt", f".cache.tmp-{dead}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "last.pt"])
