"""Selective scan (docs/method.md §6.2): every backend against the float64 sequential reference.

The fused C++ kernel is built once per session (the ``cpu_kernel`` fixture); tests of it skip with the build error
where no compiler is available. The CUDA test of the torch backend is marked ``cuda`` and skips without a GPU;
mamba-ssm's kernel is tested in tests/test_cuda_kernels.py.
"""
from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mm2ct.ops import available_backends, selective_scan, selective_scan_ref, set_default_backend
from mm2ct.ops import cpu_kernel, mamba_like_inputs, torch_scan
from mm2ct.ops.selective_scan import ENV_VAR, resolve_backend

OPTIONAL = ("D", "z", "delta_bias")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(autouse=True)
def _clean_backend_choice(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_default_backend("auto")
    yield
    set_default_backend("auto")


@pytest.fixture(scope="session")
def cpu_kernel_ops():
    """The built C++ kernel (one build per session; cached across sessions)."""
    try:
        return cpu_kernel.load_module()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture
def short_torch_chunks(monkeypatch):
    """Make the torch backend use 8-step chunks so short sequences cross many chunk boundaries."""
    monkeypatch.setattr(torch_scan, "CHUNK_ELEMENTS", 1)


def mamba_inputs(**kw):
    """Mamba-like float64 inputs (mm2ct.ops.scan_inputs); the oracle runs on them unchanged."""
    return mamba_like_inputs(**{"dtype": torch.float64, **kw})


def run(fn, x, drop=(), grad=False, **kw):
    """fn(**x) without the optional inputs in ``drop``; with grad: also the gradients of every input."""
    args = {k: (v.detach().clone().requires_grad_(grad) if k not in drop else None) for k, v in x.items()}
    out, last = fn(**args, return_last_state=True, **kw)
    if not grad:
        return out, last, None
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last)
    ((out * w_out).sum() + (last * w_last).sum()).backward()
    return out, last, {k: v.grad for k, v in args.items() if v is not None}


def assert_close(actual, expected, rel, name=""):
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rel, atol=rel * scale, msg=lambda m: f"{name}: {m}")


def backend_fn(backend):
    return lambda **kw: selective_scan(**kw, backend=backend)


@pytest.fixture(params=["torch", "cpu"])
def backend(request):
    """Each fast backend; "cpu" needs the built kernel."""
    if request.param == "cpu":
        request.getfixturevalue("cpu_kernel_ops")
    return request.param


# ------------------------------------------------------------------------------------------------ the reference
def test_reference_is_the_recurrence():
    """selective_scan_ref against the equations of §6.2 written out element by element."""
    x = mamba_inputs(batch=1, dim=2, L=5, N=3)
    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    for d in range(2):
        h = [0.0] * 3
        for t in range(5):
            dt = F.softplus(x["delta"][0, d, t] + x["delta_bias"][d]).item()
            for n in range(3):
                h[n] = math.exp(dt * x["A"][d, n].item()) * h[n] + dt * x["B"][0, n, t].item() * x["u"][0, d, t].item()
            y = sum(x["C"][0, n, t].item() * h[n] for n in range(3)) + x["D"][d].item() * x["u"][0, d, t].item()
            zt = x["z"][0, d, t].item()
            assert out[0, d, t].item() == pytest.approx(y * zt / (1 + math.exp(-zt)), rel=1e-12)
        assert last[0, d].tolist() == pytest.approx(h, rel=1e-12)


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("L", [1, 7, 63, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(backend, L, dtype, short_torch_chunks):
    x = mamba_inputs(batch=2, dim=12, L=L, N=16, seed=L)
    ref_out, ref_last, _ = run(selective_scan_ref, x, delta_softplus=True)
    out, last, _ = run(backend_fn(backend), {k: v.to(dtype) for k, v in x.items()}, delta_softplus=True)
    assert out.dtype == dtype and out.shape == (2, 12, L) and last.shape == (2, 12, 16)
    rel = 1e-4 if dtype == torch.float32 else 1e-10
    assert_close(out, ref_out, rel, "out")
    assert_close(last, ref_last, rel, "last state")


@pytest.mark.parametrize(
    "case",
    [
        dict(drop=OPTIONAL, softplus=False),
        dict(drop=("z",), softplus=True),
        dict(drop=("D", "delta_bias"), softplus=True, bc="grouped"),
        dict(drop=(), softplus=True, bc="invariant", N=5),
        dict(drop=(), softplus=False, bc=("variable", "invariant"), dim=5),
        dict(drop=(), softplus=True, bc=("grouped", "variable"), dim=6, N=3),
    ],
    ids=["bare", "no-z", "grouped", "invariant", "B-var-C-inv", "odd-dim"],
)
def test_variants_and_gradients_match_reference(backend, case, short_torch_chunks):
    """All shape variants and optional inputs; gradients of every input against the reference's autograd (float64)."""
    case = dict(case)
    drop, softplus = case.pop("drop"), case.pop("softplus")
    x = mamba_inputs(L=70, softplus=softplus, **case)
    ref = run(selective_scan_ref, x, drop=drop, grad=True, delta_softplus=softplus)
    got = run(backend_fn(backend), x, drop=drop, grad=True, delta_softplus=softplus)
    assert_close(got[0], ref[0], 1e-10, "out")
    assert_close(got[1], ref[1], 1e-10, "last state")
    assert got[2].keys() == ref[2].keys()
    for k in ref[2]:
        assert_close(got[2][k], ref[2][k], 1e-9, f"d{k}")


def test_float32_gradients_match_reference(backend):
    """The float32 paths (the C++ kernel's specialised N = 16 path) against float64 gradients, across chunks."""
    x = mamba_inputs(batch=2, dim=16, L=150, N=16)
    ref = run(selective_scan_ref, x, grad=True, delta_softplus=True)
    got = run(backend_fn(backend), {k: v.float() for k, v in x.items()}, grad=True, delta_softplus=True)
    for k in ref[2]:
        assert got[2][k].dtype == torch.float32
        assert_close(got[2][k], ref[2][k], 2e-4, f"d{k}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(backend, dtype):
    x = {k: v.to(dtype) for k, v in mamba_inputs(dim=8, L=20).items()}
    out = selective_scan(**x, delta_softplus=True, backend=backend)
    ref = selective_scan_ref(**{k: v.double() for k, v in x.items()}, delta_softplus=True)
    assert out.dtype == dtype
    assert_close(out.float(), ref, 1e-2, "out")


def test_cpu_kernel_gradcheck(cpu_kernel_ops):
    """torch.autograd.gradcheck of the C++ kernel's backward (float64, tiny shapes crossing a checkpoint)."""
    x = mamba_inputs(batch=1, dim=3, L=66, N=2)
    args = [x[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def f(*a):
        return selective_scan(*a, delta_softplus=True, return_last_state=True, backend="cpu")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_torch_backend_gradcheck(short_torch_chunks):
    x = mamba_inputs(batch=1, dim=2, L=19, N=2, bc="grouped", groups=2)
    args = [x[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]

    def f(*a):
        return selective_scan(*a, delta_softplus=True, return_last_state=True, backend="torch")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_torch_backend_bounds_its_chunks():
    """A chunk's (T, batch, dim, N) buffers stay near CHUNK_ELEMENTS however long the sequence."""
    batch, dim, N = 4, 128, 16
    assert torch_scan.chunk_length(batch, dim, N) * batch * dim * N <= torch_scan.CHUNK_ELEMENTS


# ------------------------------------------------------------------------------------------------ API and errors
def test_available_backends_reports_every_backend():
    status = available_backends()
    assert list(status) == ["cuda", "cpu", "torch", "ref"]
    for ok, why in status.values():
        assert isinstance(ok, bool) and isinstance(why, str) and why
    assert status["torch"][0] and status["ref"][0]
    if not torch.cuda.is_available():
        assert not status["cuda"][0]


def test_unknown_backend_is_a_value_error():
    x = mamba_inputs(L=4)
    with pytest.raises(ValueError, match="unknown selective-scan backend 'triton'.*cuda, cpu, torch, ref"):
        selective_scan(**x, backend="triton")
    with pytest.raises(ValueError, match="valid"):
        set_default_backend("fast")


def test_env_var_with_unknown_backend_is_named(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gpu")
    with pytest.raises(ValueError, match=ENV_VAR):
        selective_scan(**mamba_inputs(L=4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_cuda_backend_says_why():
    with pytest.raises(RuntimeError, match="mamba_ssm|CUDA"):
        selective_scan(**mamba_inputs(L=4), backend="cuda")


@pytest.mark.parametrize(
    "key, shape, message",
    [
        ("u", (2, 4), "u must be"),
        ("delta", (2, 4, 9), "delta must"),
        ("A", (3, 16), "A must be"),
        ("B", (2, 15, 8), "B must be"),
        ("C", (2, 3, 16, 8), "C must be"),
        ("D", (5,), "D must be"),
        ("z", (2, 4, 7), "z must"),
        ("delta_bias", (4, 1), "delta_bias must be"),
    ],
)
def test_wrong_shapes_are_named(key, shape, message):
    x = mamba_inputs(L=8)
    x[key] = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        selective_scan(**x, backend="torch")


def test_backend_precedence(monkeypatch):
    """Explicit argument > set_default_backend > $MM2CT_SCAN_BACKEND > auto."""
    cpu = torch.device("cpu")
    monkeypatch.setenv(ENV_VAR, "ref")
    assert resolve_backend("auto", cpu) == "ref"
    set_default_backend("torch")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("ref", cpu) == "ref"
    set_default_backend("auto")
    monkeypatch.delenv(ENV_VAR)
    assert resolve_backend("auto", cpu) == ("cpu" if cpu_kernel.usable() else "torch")
    assert resolve_backend("auto", torch.device("meta")) == "torch"


def test_env_var_selects_the_backend_that_runs(monkeypatch):
    calls = []
    module = importlib.import_module("mm2ct.ops.selective_scan")  # the package exports a function of that name
    monkeypatch.setattr(module, "selective_scan_ref", lambda *a: calls.append("ref") or a[0])
    monkeypatch.setenv(ENV_VAR, "ref")
    x = mamba_inputs(L=4)
    assert selective_scan(**x) is x["u"] and calls == ["ref"]


def test_auto_uses_the_cpu_kernel(cpu_kernel_ops):
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    ok, why = available_backends()["cpu"]
    assert ok and "cached at" in why
    assert str(Path.home()) + "/" not in why     # printed by notebooks 00 and 02, whose executed copies are published


def test_missing_compiler_warns_once_and_falls_back(monkeypatch):
    def no_compiler():
        raise RuntimeError("no compiler: simulated (c++ not found)")

    monkeypatch.setattr(cpu_kernel, "_build", no_compiler)
    monkeypatch.setattr(cpu_kernel, "_library", None)
    monkeypatch.setattr(cpu_kernel, "_error", None)
    monkeypatch.setattr(cpu_kernel, "_warned", False)
    x = {k: v.float() for k, v in mamba_inputs(L=30).items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = selective_scan(**x, delta_softplus=True)
        out2 = selective_scan(**x, delta_softplus=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "simulated" in messages[0] and "falls back" in messages[0]
    expected = selective_scan(**x, delta_softplus=True, backend="torch")
    assert torch.equal(out1, expected) and torch.equal(out2, expected)
    ok, why = available_backends()["cpu"]
    assert not ok and "simulated" in why
    with pytest.raises(RuntimeError, match="simulated"):
        selective_scan(**x, backend="cpu")


def test_extension_name_changes_with_everything_the_build_depends_on(monkeypatch):
    """-march=native code is cached under a name that changes with the CPU, the source, the flags and the torch it
    links against (so checkouts, machines and environments sharing one cache never load each other's build), and
    stays the same otherwise (so a second session loads the cached build instead of compiling)."""
    base = cpu_kernel.extension_name()
    assert base == cpu_kernel.extension_name() and base.isidentifier()
    changed = []
    with monkeypatch.context() as m:
        m.setattr(cpu_kernel.Path, "read_text", lambda self, *a, **k: "model name : Another CPU\nflags : avx2\n")
        changed.append(cpu_kernel.extension_name())
    with monkeypatch.context() as m:
        m.setattr(cpu_kernel, "CFLAGS", [*cpu_kernel.CFLAGS, "-O0"])
        changed.append(cpu_kernel.extension_name())
    with monkeypatch.context() as m:
        m.setattr(cpu_kernel.torch, "__version__", "0.0.0")
        changed.append(cpu_kernel.extension_name())
    with monkeypatch.context() as m:
        source = cpu_kernel.SOURCE.read_bytes() + b"// edited"
        m.setattr(cpu_kernel.Path, "read_bytes", lambda self: source)
        changed.append(cpu_kernel.extension_name())
    assert len({base, *changed}) == 5, changed
    assert base == cpu_kernel.extension_name()
    assert "-march=native" in cpu_kernel.CFLAGS


def test_cpu_kernel_gives_the_same_bits_on_any_thread_count(cpu_kernel_ops):
    """Channels are independent and each runs sequentially in time: the thread count (train.jobs shares the cores)
    must not change a single bit of the scan, forward or backward."""
    x = mamba_inputs(batch=2, dim=24, L=300, dtype=torch.float32)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, last, grads = run(backend_fn("cpu"), x, grad=True, delta_softplus=True)
            results.append((out, last, grads))
    finally:
        torch.set_num_threads(threads)
    (o1, l1, g1), (o2, l2, g2) = results
    assert torch.equal(o1, o2) and torch.equal(l1, l2)
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


# ------------------------------------------------------------------------------------------------ CUDA
cuda = pytest.mark.cuda  # mamba-ssm's kernel against the reference: tests/test_cuda_kernels.py


@cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_reference():
    x = mamba_inputs(batch=2, dim=16, L=300, N=16)
    ref = run(selective_scan_ref, x, grad=True, delta_softplus=True)
    got = run(backend_fn("torch"), {k: v.float().cuda() for k, v in x.items()}, grad=True, delta_softplus=True)
    assert_close(got[0].cpu(), ref[0], 1e-4, "out")
    assert_close(got[1].cpu(), ref[1], 1e-4, "last state")
    for k in ref[2]:
        assert_close(got[2][k].cpu(), ref[2][k], 1e-3, f"d{k}")


# ------------------------------------------------------------------------------------------------ autocast, devices
@pytest.mark.parametrize("name", ["torch", "cpu", "ref"])
def test_autocast_does_not_change_the_scan(name):
    """Under bfloat16 autocast every backend still computes in float32 (the torch backend's matmuls would otherwise
    run in bfloat16): same output and gradients as without autocast."""
    if name == "cpu":
        try:
            cpu_kernel.load_module()
        except RuntimeError as e:
            pytest.skip(str(e))
    x = {k: v.float() for k, v in mamba_inputs(batch=2, dim=16, L=100, N=16).items()}
    plain = run(backend_fn(name), x, grad=True, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = run(backend_fn(name), x, grad=True, delta_softplus=True)
    assert auto[0].dtype == torch.float32
    torch.testing.assert_close(auto[0], plain[0], rtol=1e-6, atol=1e-6)
    for k in plain[2]:
        torch.testing.assert_close(auto[2][k], plain[2][k], rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["torch", "ref"])
def test_scan_creates_nothing_off_its_device(name, short_torch_chunks):
    """On the meta device, any buffer made without ``device=`` (on the CPU) would raise: forward and backward."""
    x = {k: v.float().to("meta") for k, v in mamba_inputs(L=20, bc="grouped").items()}
    args = {k: v.requires_grad_() for k, v in x.items()}
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True, backend=name)
    assert out.device.type == last.device.type == "meta"
    (out.sum() + last.sum()).backward()
    assert all(v.grad.device.type == "meta" for v in args.values())
    assert resolve_backend("auto", torch.device("meta")) == "torch"
