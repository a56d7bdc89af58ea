"""The `mm2ct` command as a user meets it: where files go (--workdir, MM2CT_WORKDIR), one clear line per expected
error (--debug / MM2CT_DEBUG=1 for the traceback), and option values checked before anything is written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mm2ct import repo_root, workspace
from mm2ct.cli import main
from mm2ct.workspace import resolve

WORKDIR_ENV, REPORTS_ENV = "MM2CT_WORKDIR", "MM2CT_REPORTS_DIR"


def _lines(text: str) -> list[str]:
    """Lines of stderr without progress bars."""
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]


def _one_error(capsys, rc: int, *must: str) -> str:
    """The command failed with one or two lines on stderr, no traceback, naming everything in ``must``."""
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "Traceback" not in err and 1 <= len(_lines(err)) <= 2, err
    for m in must:
        assert m in err, err
    return err


# ------------------------------------------------------------------------------------------------- work directory

def test_the_tests_run_in_a_temporary_work_directory() -> None:
    """The root conftest.py points MM2CT_WORKDIR and MM2CT_REPORTS_DIR outside the repository for the whole session
    (nbval's kernels inherit them): no test reads a stale runs/smoke or writes into the repository's reports/."""
    repo = repo_root().resolve()
    for env in (WORKDIR_ENV, REPORTS_ENV):
        assert env in os.environ and repo not in Path(os.environ[env]).resolve().parents
    ws = resolve("smoke")
    for folder in (ws.runs_dir, ws.cache_dir, ws.data_root, ws.reports_dir):
        assert repo not in folder.resolve().parents, folder


def test_workdir_setting_moves_runs_data_and_caches(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "env"))
    ws = resolve("smoke", reports_dir=tmp_path / "rep")
    assert ws.root == tmp_path / "env"
    assert ws.runs_dir == tmp_path / "env" / "runs" / "smoke"
    assert ws.cache_dir == tmp_path / "env" / "data" / "cache" / "smoke"
    assert ws.data_root == tmp_path / "env" / "data" / "generated" / "smoke" / "phantom"
    assert resolve("smoke", root=tmp_path / "arg", reports_dir=tmp_path / "rep").runs_dir.parent == \
        tmp_path / "arg" / "runs"                                            # an explicit root wins
    monkeypatch.delenv(WORKDIR_ENV)
    assert workspace.workdir() == repo_root()
    # reports: the repository's reports/<profile>/ (committed artefacts) unless MM2CT_REPORTS_DIR says otherwise
    monkeypatch.delenv(REPORTS_ENV)
    assert workspace.reports_root() == repo_root() / "reports"
    monkeypatch.setenv(REPORTS_ENV, str(tmp_path / "r"))
    assert resolve("smoke", root=tmp_path / "w").reports_dir == tmp_path / "r" / "smoke"


def test_workdir_flag_on_every_subcommand(monkeypatch, tmp_path, capsys) -> None:
    from mm2ct.cli import SUBCOMMANDS, build_parser

    for name in SUBCOMMANDS:
        args = build_parser([name]).parse_args([name, "--workdir", str(tmp_path), "--debug"]
                                                + (["--out", "x"] if name == "phantom" else [])
                                                + (["--checkpoint", "c", "-o", "o"] if name == "translate" else []))
        assert args.workdir == str(tmp_path) and args.debug
    monkeypatch.setenv(WORKDIR_ENV, str(tmp_path / "elsewhere"))
    rc = main(["prepare", "--profile", "smoke", "--workdir", str(tmp_path / "w")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "w" / "data" / "cache" / "smoke" / "meta.json").is_file()
    assert (tmp_path / "w" / "data" / "generated" / "smoke" / "phantom" / "phantom.json").is_file()
    assert not (tmp_path / "elsewhere").exists()
    assert os.environ[WORKDIR_ENV] == str(tmp_path / "elsewhere")           # the setting is restored afterwards


# ------------------------------------------------------------------------------------------------------ messages

def test_prepare_refuses_its_source_as_output_in_one_line(tmp_path, capsys) -> None:
    src = tmp_path / "data"
    (src / "p1").mkdir(parents=True)
    (src / "p1" / "t2.nii.gz").write_bytes(b"precious")
    rc = main(["prepare", "--profile", "smoke", "--source", str(src), "--out", str(src)])
    _one_error(capsys, rc, str(src), "--out")
    assert (src / "p1" / "t2.nii.gz").read_bytes() == b"precious"


def test_expected_errors_print_one_or_two_lines(monkeypatch, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: smoke\ntrain:\n  epoch: 3\n")
    for cmd in ("train", "evaluate", "prepare"):
        _one_error(capsys, main([cmd, "--profile", str(bad), "--workdir", str(tmp_path / "w")]), str(bad),
                   "train.epoch")
    rc = main(["evaluate", "--profile", "smoke", "--model", "mm2ct", "--workdir", str(tmp_path / "w")])
    _one_error(capsys, rc, str(tmp_path / "w" / "runs" / "smoke" / "mm2ct" / "best.pt"), "mm2ct train")
    (tmp_path / "file").write_text("")
    rc = main(["phantom", "--out", str(tmp_path / "file" / "sub"), "--patients", "1"])
    _one_error(capsys, rc, str(tmp_path / "file"))
    rc = main(["translate", "--t1", "t1.nii.gz", "--checkpoint", str(tmp_path / "none.pt"), "-o", "x.nii.gz"])
    _one_error(capsys, rc, "none.pt")
    # a corrupt file of mm2ct's own: named, with what to do
    cache = tmp_path / "w2" / "data" / "cache" / "smoke"
    cache.mkdir(parents=True)
    (cache / "meta.json").write_text("{truncated")
    rc = main(["prepare", "--profile", "smoke", "--workdir", str(tmp_path / "w2")])
    _one_error(capsys, rc, str(cache), "--overwrite")


def test_debug_shows_the_traceback(monkeypatch, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: smoke\ntrain:\n  epoch: 3\n")
    assert main(["train", "--profile", str(bad), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConfigError" in err and "train.epoch" in err
    monkeypatch.setenv("MM2CT_DEBUG", "1")
    assert main(["train", "--profile", str(bad)]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_errors_name_the_option_or_setting_they_came_from(tmp_path, capsys) -> None:
    rc = main(["translate", "--t1", "t1.nii.gz", "--checkpoint", "ck.pt", "-o", str(tmp_path / "x.nii.gz"),
               "--device", "cuda"])
    err = _one_error(capsys, rc, "--device", "'cuda'")
    assert "train.device" not in err
    bad = tmp_path / "gpu.yaml"
    bad.write_text("extends: smoke\ntrain:\n  device: cuda\n")
    rc = main(["train", "--profile", str(bad), "--model", "cyclegan_t1", "--workdir", str(tmp_path / "w")])
    _one_error(capsys, rc, "train.device", "'cuda'")


@pytest.mark.parametrize("argv, message", [
    (["phantom", "--patients", "0"], "--patients: must be >= 1, got 0"),
    (["phantom", "--patients", "-2"], "--patients: must be >= 1, got -2"),
    (["phantom", "--slices", "0"], "--slices: must be >= 1, got 0"),
    (["translate", "--t1", "a.nii.gz", "--checkpoint", "c.pt", "-o", "o.nii.gz", "--samples", "0"],
     "--samples: must be >= 1"),
    (["translate", "--t1", "a.nii.gz", "--checkpoint", "c.pt", "-o", "o.nii.gz", "--batch-size", "0"],
     "--batch-size: must be >= 1"),
    (["train", "--jobs", "0"], "--jobs: must be >= 1"),
])
def test_integer_options_are_checked_before_anything_runs(tmp_path, capsys, argv, message) -> None:
    if argv[0] == "phantom":
        argv = [*argv, "--out", str(tmp_path / "ph")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "ph").exists()


def test_phantom_refuses_a_dataset_folder(tmp_path, capsys) -> None:
    (tmp_path / "data" / "patient01").mkdir(parents=True)
    rc = main(["phantom", "--out", str(tmp_path / "data"), "--patients", "1", "--size", "tiny"])
    _one_error(capsys, rc, str(tmp_path / "data"), "patient01")
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["patient01"]


def test_a_terminated_prepare_leaves_no_temporary_folder(tmp_path) -> None:
    """SIGTERM (a `timeout`, a scheduler) cleans up like Ctrl-C: the half-built cache folder is removed."""
    import signal
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    script = (
        "import sys, time\n"
        "from mm2ct import cli\n"
        "import mm2ct.data.slices as s\n"
        "def slow(*a, **k):\n"
        f"    open({str(ready)!r}, 'w').close()\n"
        "    time.sleep(120)\n"
        "s._build_from_volumes = slow\n"
        f"sys.exit(cli.main(['prepare', '--profile', 'smoke', '--workdir', {str(tmp_path / 'w')!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), proc.communicate()[1].decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and b"terminated" in err
    cache_parent = tmp_path / "w" / "data" / "cache"
    assert [p.name for p in cache_parent.iterdir()] == []


def test_train_refusals_leave_no_run_folder(tmp_path, capsys) -> None:
    w = tmp_path / "w"
    rc = main(["train", "--profile", "smoke", "--model", "cyclegan_t1", "no_such_model", "--workdir", str(w)])
    _one_error(capsys, rc, "--model", "no_such_model", "known:")
    rc = main(["train", "--profile", "smoke", "--model", "cyclegan_t1", "--data-dir", str(tmp_path / "nope"),
               "--workdir", str(w)])
    _one_error(capsys, rc, str(tmp_path / "nope"), "data folder not found")
    assert not (w / "runs").exists()
