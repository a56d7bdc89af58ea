"""Training: artefacts of a run, exact resume after a kill, checkpoints that rebuild their model, errors."""
from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from mm2ct.config import load_profile
from mm2ct.checkpoints import EMA, load_checkpoint, make_checkpoint, run_dir
from mm2ct.data.io import DataError
from mm2ct.runtime import seed_everything
from mm2ct.train import same_run_config, train
from mm2ct.translators import build
from mm2ct.workspace import resolve


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A throw-away checkout root: the smoke phantom and its slice cache are made once for this module."""
    return tmp_path_factory.mktemp("ws")


def _ws(root, **train):
    return resolve("smoke", root=root, reports_dir=root / "reports", train={"epochs": 2, **train})


def _states(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_run_writes_its_artefacts_and_checkpoints_rebuild_the_model(root) -> None:
    ws = _ws(root)
    r = train(ws, "syndiff_t1", progress=False, log=lambda *a: None)
    assert r.epochs == 2 and r.steps == 2 * ws.cfg.train.max_steps_per_epoch
    names = {p.name for p in r.run_dir.iterdir()}
    assert {"best.pt", "last.pt", "log.csv", "val.csv", "config.yaml"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(r.run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == r.steps and {"d_total", "g_total", "g_cyc", "d_r1_b"} & set(rows[0])
    tr, cfg, ckpt = load_checkpoint(r.run_dir / "best.pt")
    assert cfg == ws.cfg and ckpt["model"] == "syndiff_t1" and not tr.training
    # EMA weights, not the live ones, are what the checkpoint rebuilds
    live, _, _ = load_checkpoint(r.run_dir / "last.pt", ema=False)
    ema, _, _ = load_checkpoint(r.run_dir / "last.pt", ema=True)
    g = "G_diff_b.all_modules.0.weight" if hasattr(live.G_diff_b, "all_modules") else None
    diffs = [not torch.equal(a, b) for (k, a), b in zip(live.state_dict().items(), ema.state_dict().values())
             if k.startswith("G_")]
    assert any(diffs), g
    # a finished run is reused as it is
    again = train(ws, "syndiff_t1", progress=False, log=lambda *a: None)
    assert (again.steps, again.best_psnr) == (r.steps, r.best_psnr)


@pytest.mark.parametrize("model", ["mm2ct", "cyclegan_t2"])
def test_resume_after_a_kill_gives_the_uninterrupted_result(root, model) -> None:
    straight = train(_ws(root / "a"), model, progress=False, log=lambda *a: None)
    ws_b = _ws(root / "b")
    first = train(ws_b, model, progress=False, stop_after_epochs=1, log=lambda *a: None)
    assert first.epochs == 1
    # a kill mid-epoch leaves at most a stale temporary file; the checkpoint of epoch 1 is intact
    (first.run_dir / ".last.pt.tmp").write_bytes(b"half-written")
    resumed = train(ws_b, model, progress=False, log=lambda *a: None)
    assert resumed.epochs == 2 and resumed.steps == straight.steps
    a = torch.load(straight.run_dir / "last.pt", weights_only=False)
    b = torch.load(resumed.run_dir / "last.pt", weights_only=False)
    for k, v in a["translator"].items():
        assert torch.equal(v, b["translator"][k]), k
    assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))
    with open(straight.run_dir / "log.csv") as f1, open(resumed.run_dir / "log.csv") as f2:
        assert f1.read() == f2.read()


def test_resuming_with_another_config_is_refused(root) -> None:
    train(_ws(root / "c"), "cyclegan_t1", progress=False, stop_after_epochs=1, log=lambda *a: None)
    with pytest.raises(ValueError, match="another model or config"):
        train(_ws(root / "c", lr_g=1e-3), "cyclegan_t1", progress=False, log=lambda *a: None)


def test_a_checkpoint_from_before_a_new_config_field_still_resumes(root) -> None:
    """Checkpoints saved before ``train.jobs`` existed carry no such key; they resume (and ``jobs`` itself,
    which only says how many runs share the CPU, never blocks a resume)."""
    ws = _ws(root / "old")
    first = train(ws, "cyclegan_t1", progress=False, stop_after_epochs=1, log=lambda *a: None)
    last = first.run_dir / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["config"]["train"]["jobs"]
    torch.save(ckpt, last)
    done = train(_ws(root / "old", jobs=3), "cyclegan_t1", progress=False, log=lambda *a: None)
    assert done.epochs == 2


def test_fusion_settings_do_not_block_models_without_fusion() -> None:
    """A finished SynDiff run stays valid when only the fusion settings change (it has no fusion module); an
    MM2CT run does not."""
    cfg = load_profile("smoke")
    saved = cfg.to_dict()
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lambda_fusion=0.01),
                                  fusion=dataclasses.replace(cfg.fusion, embed_dim=8))
    assert same_run_config(saved, changed, "syndiff_t2") and same_run_config(saved, changed, "cyclegan_t1")
    assert not same_run_config(saved, changed, "mm2ct") and not same_run_config(saved, changed, "mm2ct_nomamba")
    other = dataclasses.replace(changed, train=dataclasses.replace(changed.train, lr_g=1e-3))
    assert not same_run_config(saved, other, "syndiff_t2")   # anything else still counts


def test_cosine_schedule_period(root) -> None:
    """Cosine decay per epoch over train.epochs, or over lr_schedule_epochs when set (a short run then follows the
    start of a longer schedule)."""
    import math

    def lrs(run):
        with open(run.run_dir / "log.csv") as f:
            return sorted({(int(r["epoch"]), float(r["lr_g"])) for r in csv.DictReader(f)})

    base = _ws(root / "sched")
    lr, low = base.cfg.train.lr_g, base.cfg.train.lr_min
    own = lrs(train(base, "cyclegan_t1", progress=False, log=lambda *a: None))
    assert own[0] == (1, pytest.approx(lr)) and own[1] == (2, pytest.approx(low + (lr - low) / 2))   # period 2
    paper = lrs(train(_ws(root / "sched100", lr_schedule_epochs=100), "cyclegan_t1", progress=False,
                      log=lambda *a: None))
    assert paper[1] == (2, pytest.approx(low + (lr - low) * (1 + math.cos(math.pi / 100)) / 2))


def test_git_commit_is_dirty_for_code_changes_not_for_reports(tmp_path) -> None:
    import subprocess

    from mm2ct.provenance import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "table1.md").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) >= 7 and "+dirty" not in clean
    (tmp_path / "reports" / "table1.md").write_text("new")   # a reproduction rewriting its artefacts
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path) == clean + "+dirty"


def test_bad_checkpoints_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an mm2ct checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_ema_tracks_and_swaps_back() -> None:
    net = torch.nn.Linear(2, 2)
    ema = EMA([net], decay=0.5)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update()
    assert torch.allclose(ema.shadow[0], w0 + 1.0)
    with ema.swapped():
        assert torch.allclose(net.weight, w0 + 1.0)
    assert torch.allclose(net.weight, w0 + 2.0)


def test_run_dirs_per_seed(root) -> None:
    ws = resolve("smoke", root=root, train={"seeds": [3, 4]})
    assert run_dir(ws, "mm2ct", 3) == ws.runs_dir / "mm2ct"
    assert run_dir(ws, "mm2ct", 4) == ws.runs_dir / "mm2ct-seed4"


def _ddp_worker(rank, world, root, port):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ws = resolve("smoke", root=root, train={"epochs": 1, "batch_size": 1, "max_steps_per_epoch": 1})
        train(ws, "cyclegan_t1", progress=False, log=lambda *a: None)
    finally:
        dist.destroy_process_group()


def test_two_process_data_parallel_training_on_cpu(root, tmp_path) -> None:
    """torchrun-style training with 2 gloo ranks of batch 1 takes the same step as one process with batch 2 over
    the same slices: gradients are averaged across ranks before the optimiser step (CycleGAN: no random draws)."""
    import socket

    import torch.multiprocessing as mp

    from mm2ct.data.slices import ensure_cache

    ensure_cache(resolve("smoke", root=root))
    for name in ("ddp", "single"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").symlink_to(root / "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, tmp_path / "ddp", port), nprocs=2, join=True)
    single = resolve("smoke", root=tmp_path / "single",
                     train={"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 1})
    train(single, "cyclegan_t1", progress=False, log=lambda *a: None)
    a = torch.load(tmp_path / "ddp/runs/smoke/cyclegan_t1/last.pt", weights_only=False)["translator"]
    b = torch.load(tmp_path / "single/runs/smoke/cyclegan_t1/last.pt", weights_only=False)["translator"]
    seed_everything(single.cfg.train.seeds[0])
    init = build("cyclegan_t1", single.cfg)  # same seed -> the weights both runs started from
    moved = 0
    for k, v in init.state_dict().items():
        if k.endswith("bias"):  # biases in front of InstanceNorm get ~0 gradients: Adam's first step is noise
            continue
        assert torch.allclose(a[k], b[k], atol=1e-6), k
        moved += int(not torch.allclose(a[k], v))
    assert moved > 10  # the step really changed the weights


def test_parallel_jobs_equal_one_thread_sequential_runs(root, tmp_path) -> None:
    """train_all with 2 jobs (a spawned process per run, 1 thread each on this 2-core machine) gives exactly what
    the runs give one after another with 1 thread; results come back in (model, seed) order."""
    from mm2ct.data.slices import ensure_cache
    from mm2ct.train import train_all

    ensure_cache(resolve("smoke", root=root))
    for name in ("par", "seq"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").symlink_to(root / "data")
    models = ["cyclegan_t1", "syndiff_t1"]
    # the paper's EMA decay (smoke's own is 0.1): the short run warns that its EMA is still the initial weights
    par = train_all(_ws(tmp_path / "par", ema_decay=0.999), models, [42], jobs=2, progress=False,
                    log=lambda *a: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    logged = []
    try:
        seq = train_all(_ws(tmp_path / "seq", ema_decay=0.999), models, [42], jobs=1, progress=False,
                        log=logged.append)
    finally:
        torch.set_num_threads(threads)
    assert [r.model for r in par] == models
    for p, s in zip(par, seq):
        assert (p.steps, p.best_psnr) == (s.steps, s.best_psnr)
        a = torch.load(p.run_dir / "last.pt", weights_only=False)["ema"]
        b = torch.load(s.run_dir / "last.pt", weights_only=False)["ema"]
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # smoke's 4 steps with the paper's EMA decay: the run says its EMA is still the initial weights
    assert any("warning: train.ema_decay 0.999 over 4 steps" in m for m in logged)
    with pytest.raises(ValueError, match="train.jobs must be >= 1"):
        train_all(_ws(tmp_path / "par"), models, [42], jobs=0)
    # a run that fails in its worker is named
    with pytest.raises(RuntimeError, match="training no_such_model seed 42 failed"):
        train_all(_ws(tmp_path / "par"), ["cyclegan_t1", "no_such_model"], [42], jobs=2, progress=False,
                  log=lambda *a: None)


def test_ema_horizon_warning() -> None:
    from mm2ct.train import ema_horizon_warning

    msg = ema_horizon_warning(0.999, 90)  # the old demo: 0.999**90 = 0.914
    assert msg is not None and "91%" in msg and "below 0.9673" in msg
    assert ema_horizon_warning(0.95, 150) is None       # the demo profile
    assert ema_horizon_warning(0.999, 22_500) is None   # paper scale: ~225 steps x 100 epochs
    assert ema_horizon_warning(0.0, 10) is None


# ------------------------------------------------------------------------------------ refusals and recovery

def _quiet(ws, model="cyclegan_t1", **kw):
    return train(ws, model, progress=False, log=lambda *a: None, **kw)


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_second_training_of_the_same_run_is_refused(root) -> None:
    """A run folder is locked while it trains (holder's pid and host in train.lock); a second training of the same
    run is refused naming the folder; a lock whose process is gone is stale and taken over."""
    import json
    import socket
    import subprocess

    from mm2ct.checkpoints import LOCK_NAME, RunError

    ws = _ws(root / "lock")
    out = run_dir(ws, "cyclegan_t1")
    out.mkdir(parents=True)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(RunError, match=f"{out}.*in use by another training.*pid {holder.pid}"):
            _quiet(ws)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]     # nothing written beside the lock
    finally:
        holder.kill()
        holder.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 12345, "host": "another-machine"}))
    with pytest.raises(RunError, match="another-machine.*delete"):
        _quiet(ws)
    (out / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    r = _quiet(ws, stop_after_epochs=1)                                   # stale: taken over
    assert r.epochs == 1 and not (out / LOCK_NAME).exists()
    with open(out / "val.csv") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_nothing_is_written_before_the_run_really_starts(root, tmp_path) -> None:
    """An unknown model or a bad data folder leaves no run folder; a refused resume leaves the run's config.yaml
    (the one its checkpoints were trained with) as it was, and says to use --fresh."""
    from mm2ct.checkpoints import RunError

    ws = _ws(root / "early")
    with pytest.raises(ValueError, match="unknown translator 'no_such_model'"):
        _quiet(ws, "no_such_model")
    bad = resolve("smoke", root=root / "early", data_dir=tmp_path / "missing", reports_dir=tmp_path / "r")
    with pytest.raises(DataError, match="data folder not found"):
        _quiet(bad)
    assert not ws.runs_dir.exists()
    r = _quiet(ws, stop_after_epochs=1)
    config = (r.run_dir / "config.yaml").read_text()
    with pytest.raises(RunError, match=r"another model or config \(train.lr_g: 0.00016 in the checkpoint, 0.001 "
                                       r"now\).*--fresh") as e:
        _quiet(_ws(root / "early", lr_g=1e-3))
    assert "resume=False" not in str(e.value).split("(train(")[0]
    assert (r.run_dir / "config.yaml").read_text() == config


def test_a_corrupt_last_checkpoint_names_the_file_and_fresh(root) -> None:
    from mm2ct.checkpoints import RunError

    ws = _ws(root / "corrupt")
    r = _quiet(ws, stop_after_epochs=1)
    (r.run_dir / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(RunError, match=f"{r.run_dir / 'last.pt'}: cannot be read.*--fresh"):
        _quiet(ws)
    assert _quiet(ws, resume=False).epochs == 2


def test_stale_temporary_files_of_killed_runs_are_swept(root) -> None:
    ws = _ws(root / "sweep")
    r = _quiet(ws, stop_after_epochs=1)
    stale = r.run_dir / f".last.pt.tmp-{_dead_pid()}.pt"
    stale.write_bytes(b"half-written")
    _quiet(ws)
    assert not stale.exists()


def test_a_failed_save_says_why_and_leaves_no_temporary_file(monkeypatch, tmp_path) -> None:
    """torch reports a full disk as 'enforce fail at inline_container.cc'; the error names the checkpoint, the free
    space and what to do, and no temporary file is left."""
    from mm2ct import checkpoints

    def full_disk(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(OSError, match=f"{tmp_path / 'last.pt'}: could not save the checkpoint.*free.*--workdir") as e:
        checkpoints.atomic_save({"x": 1}, tmp_path / "last.pt")
    assert "enforce fail" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_does_not_fit_its_model_is_named_in_one_line(tmp_path) -> None:
    from mm2ct.checkpoints import RunError

    cfg = load_profile("smoke")
    tr = build("cyclegan_t1", cfg)
    ck = make_checkpoint(tr, EMA(tr.generators(), 0.9), None, None, "cyclegan_t1", cfg, 1, 1, 0.0, 1, 1.0, "t", 42)
    for name, change in (("family", {"model": "syndiff_t1"}),
                         ("width", {"config": {**cfg.to_dict(), "translator": {**cfg.to_dict()["translator"],
                                                                               "ngf": 4}}})):
        path = tmp_path / f"{name}.pt"
        torch.save({**ck, **change}, path)
        with pytest.raises(RunError, match=f"{path}: its weights do not fit") as e:
            load_checkpoint(path)
        assert len(str(e.value)) < 600 and "--fresh" in str(e.value)


def test_the_same_command_gives_the_same_numbers(root, tmp_path) -> None:
    """Train and evaluate one run twice in fresh work directories (same profile, seed, thread count): every
    weight and every number of the evaluation summary is identical, and both record the machine and threads."""
    import json

    from mm2ct.evaluate import evaluate

    summaries, states = [], []
    for name in ("first", "second"):
        ws = resolve("smoke", root=tmp_path / name, reports_dir=tmp_path / name / "reports",
                     train={"epochs": 2, "threads": 1})
        r = train(ws, "syndiff_t2", progress=False, log=lambda *a: None)
        states.append(torch.load(r.run_dir / "best.pt", weights_only=False))
        summaries.append(evaluate(ws, "syndiff_t2", progress=False))
    a, b = states
    assert a["machine"]["threads"] == 1 and a["machine"]["cpu"]
    assert all(torch.equal(a["translator"][k], b["translator"][k]) for k in a["translator"])
    numbers = [{k: v for k, v in s.items() if isinstance(v, float) and not k.endswith("seconds")} for s in summaries]
    assert numbers[0] == numbers[1] and len(numbers[0]) > 10
    assert summaries[0]["eval_machine"]["threads"] == 1 == summaries[0]["train_machine"]["threads"]
    assert json.loads(json.dumps(summaries[0]))["eval_machine"]["torch"] == torch.__version__


def test_progress_file_and_line(root) -> None:
    """A run keeps <run>/progress.json current (what train_all reports while worker processes train)."""
    from mm2ct.train import PROGRESS_NAME, progress_line, read_progress

    ws = _ws(root)
    r = train(ws, "cyclegan_t1", resume=False, progress=False, log=lambda *a: None)
    state = read_progress(r.run_dir)
    assert (r.run_dir / PROGRESS_NAME).is_file()
    assert state["model"] == "cyclegan_t1" and state["step"] == state["total_steps"] == r.steps and state["epoch"] == 2
    line = progress_line([state, {**state, "model": "mm2ct", "step": 1}], 3, 7, 125.0)
    assert line.startswith("training: 3/7 runs done · cyclegan_t1 seed 42 step 4/4 (g ")
    assert "mm2ct seed 42 step 1/4" in line and line.endswith("2 min so far")
    assert read_progress(r.run_dir.parent / "no-such-run") is None
