"""Atomic writes: every file mm2ct writes appears complete or not at all.

A writer fills a temporary file in the target's folder (same file system) and renames it onto the target only when
it finished without error; on an error the temporary file is removed and the target is left as it was. Temporary
names carry the writer's process id (``.NAME.tmp-PID.EXT``), so that ``sweep_stale`` can remove those of processes
that were killed before they could clean up.

    with atomic_path(run / "last.pt") as tmp:
        torch.save(state, tmp)
    write_text(path, text)
"""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(\.[^/]*)?$")


def temporary_name(path: Path) -> Path:
    """``.NAME.tmp-PID.EXT`` beside ``path`` (EXT = the target's suffixes, for writers that go by the extension)."""
    ext = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{ext}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; rename it onto ``path`` when the block succeeds, remove it
    when the block raises (a KeyboardInterrupt included)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this module's temporary names (``.NAME.tmp-PID[.EXT]``)."""
    return _TMP.match(name) is not None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine still runs (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (and folders) of writers in ``folder`` whose process no longer exists; returns
    what was removed. Those of live processes, this one included, are left alone."""
    import shutil

    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TMP.match(entry.name)
        if m is None or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
