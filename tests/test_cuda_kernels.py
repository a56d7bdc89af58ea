"""The CUDA fast path (docs/method.md §6.2): mamba-ssm's selective scan and fused ``mamba_inner_fn``, causal-conv1d.

Two kinds of tests:

- on any machine: the import guards (a broken install means "unavailable", with the reason recorded), and the
  argument plumbing of the fast path. Stand-in kernels, installed as the importable modules ``mamba_ssm``,
  ``selective_scan_cuda``, ``causal_conv1d`` and ``causal_conv1d_cuda`` while ``cuda_kernels.DEVICE_TYPE`` points
  at "cpu", check the real kernels' contracts (the TORCH_CHECKs of mamba-ssm's csrc/selective_scan/selective_scan.cpp
  and causal-conv1d's csrc/causal_conv1d.cpp, the layout rules of their Python wrappers) and compute with the
  references; the mixers must then match the reference path, outputs and every gradient, in float32 and under
  bfloat16 autocast;
- marked ``cuda``: the real kernels against the reference path, outputs and every gradient, float32 and bfloat16.
  They skip without a GPU and the kernels.
"""
from __future__ import annotations

import builtins
import collections
import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from mm2ct import env_info
from mm2ct.models.channel_swap import TokenSwapMamba
from mm2ct.models.cross_modal import CrossModalMamba
from mm2ct.models.mamba import Mamba, set_scan_backend
from mm2ct.ops import (available_backends, causal_conv1d, causal_conv1d_ref, cuda_kernels, mamba_like_inputs,
                       selective_scan, selective_scan_ref, set_default_backend)
from mm2ct.ops.selective_scan import ENV_VAR, resolve_backend


@pytest.fixture(autouse=True)
def _fresh_kernel_imports(monkeypatch):
    """Every test imports the kernels anew (the results are cached per process) with the backend left to auto."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_default_backend("auto")
    cuda_kernels.cache_clear()
    yield
    cuda_kernels.cache_clear()
    set_default_backend("auto")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64 on the CPU."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def assert_close(actual, expected, rel, name=""):
    assert actual.shape == expected.shape, name
    err = rel_err(actual, expected)
    assert err <= rel, f"{name}: relative error {err:.2e} > {rel:.0e}"


# ------------------------------------------------------------------------------------------------ stand-in kernels
def scan_contract(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """mamba-ssm's ``selective_scan_fn``: the checks of selective_scan.cpp, then the reference (float32 inside)."""
    itype = u.dtype
    assert itype in cuda_kernels.KERNEL_DTYPES, f"selective_scan: input type {itype}"
    assert delta.dtype == itype, f"selective_scan: delta {delta.dtype} != u {itype}"
    assert A.dtype == torch.float32 and A.dim() == 2 and A.shape[1] <= cuda_kernels.MAX_STATE, f"A {A.dtype}"
    for name, M in (("B", B), ("C", C)):
        assert M.dtype == (itype if M.dim() >= 3 else torch.float32), f"selective_scan: {name} {M.dtype}"
    for name, v in (("D", D), ("delta_bias", delta_bias)):
        assert v is None or v.dtype == torch.float32, f"selective_scan: {name} {v.dtype}"
    assert z is None or z.dtype == itype, f"selective_scan: z {z.dtype}"
    for t in (u, delta, A, B, C, D, z, delta_bias):
        assert t is None or t.device.type == cuda_kernels.DEVICE_TYPE
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def conv_contract(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                  final_states_out=None, activation=None):
    """causal-conv1d's ``causal_conv1d_fn``: its wrapper's layout rule and causal_conv1d.cpp's checks, then the
    convolution computed like the kernel (in float from the input and weight types, no autocast, out in x's type)."""
    assert activation in (None, "silu", "swish") and seq_idx is None and initial_states is None
    assert not return_final_states and final_states_out is None
    assert x.dtype in cuda_kernels.KERNEL_DTYPES and weight.dtype in cuda_kernels.KERNEL_DTYPES
    assert weight.dim() == 2, f"causal_conv1d: weight must be (dim, width), got {tuple(weight.shape)}"
    dim, width = weight.shape
    assert x.dim() == 3 and x.shape[1] == dim and width in cuda_kernels.CONV_WIDTHS
    assert bias is None or (bias.dtype == weight.dtype and tuple(bias.shape) == (dim,))
    if x.stride(2) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    if x.stride(1) == 1 and x.stride(2) > 1:  # the channel-last path
        assert dim % 8 == 0 and x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, \
            "causal_conv1d only supports channel dimension divisible by 8 for now"
    with torch.autocast(x.device.type, enabled=False):
        out = F.conv1d(x.float(), weight.float().unsqueeze(1), None if bias is None else bias.float(),
                       padding=width - 1, groups=dim)[..., : x.shape[-1]]
        out = F.silu(out) if activation else out
    return out.to(x.dtype)


def inner_contract(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, out_proj_weight, out_proj_bias,
                   A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None,
                   delta_softplus=True, checkpoint_lvl=1):
    """mamba-ssm's ``mamba_inner_fn`` (MambaInnerFn.forward) built from the two stand-ins above."""
    assert B is None and C is None and B_proj_bias is None and C_proj_bias is None  # B, C from x_proj's output
    assert conv1d_weight.dim() == 3 and conv1d_weight.shape[1] == 1  # rearranged "d 1 w -> d w"
    assert A.dtype == torch.float32 and D.dtype == torch.float32 and delta_bias.dtype == torch.float32
    batch, _, L = xz.shape
    rank, N = delta_proj_weight.shape[1], A.shape[-1]
    assert x_proj_weight.shape[0] == rank + 2 * N
    if torch.is_autocast_enabled(cuda_kernels.DEVICE_TYPE):  # the kernel casts its weights to the autocast type
        dtype = torch.get_autocast_dtype(cuda_kernels.DEVICE_TYPE)
        x_proj_weight, delta_proj_weight, out_proj_weight = (w.to(dtype) for w in
                                                             (x_proj_weight, delta_proj_weight, out_proj_weight))
        out_proj_bias = None if out_proj_bias is None else out_proj_bias.to(dtype)
    x, z = xz.contiguous().chunk(2, dim=1)  # (B, D, L) each
    x = conv_contract(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * L, -1), x_proj_weight)  # (B L, rank + 2N)
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).view(-1, batch, L).transpose(0, 1)  # (B, D, L)
    Bm = x_dbl[:, rank:rank + N].reshape(batch, L, N).transpose(1, 2).contiguous()  # (B, N, L)
    Cm = x_dbl[:, -N:].reshape(batch, L, N).transpose(1, 2).contiguous()
    y = scan_contract(x, delta.contiguous(), A, Bm, Cm, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)  # (B, L, d_model)


@pytest.fixture
def stand_ins(monkeypatch):
    """Install the stand-ins as importable kernels and point the kernel device at "cpu".

    Returns (calls, interface): a Counter of kernel calls by name, and the fake ``selective_scan_interface`` module.
    """
    calls: collections.Counter = collections.Counter()

    def counted(name, fn):
        def call(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return call

    interface = types.ModuleType("mamba_ssm.ops.selective_scan_interface")
    interface.selective_scan_fn = counted("selective_scan_fn", scan_contract)
    interface.mamba_inner_fn = counted("mamba_inner_fn", inner_contract)
    interface.causal_conv1d_fwd_function = conv_contract  # mamba-ssm reached causal-conv1d when it was imported
    ops = types.ModuleType("mamba_ssm.ops")
    ops.selective_scan_interface = interface
    package = types.ModuleType("mamba_ssm")
    package.ops = ops
    conv = types.ModuleType("causal_conv1d")
    conv.causal_conv1d_fn = counted("causal_conv1d_fn", conv_contract)
    modules = {"mamba_ssm": package, "mamba_ssm.ops": ops, "mamba_ssm.ops.selective_scan_interface": interface,
               "selective_scan_cuda": types.ModuleType("selective_scan_cuda"), "causal_conv1d": conv,
               "causal_conv1d_cuda": types.ModuleType("causal_conv1d_cuda")}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(cuda_kernels, "DEVICE_TYPE", "cpu")
    cuda_kernels.cache_clear()
    return calls, interface


# ------------------------------------------------------------------------------------------------ mixers
def make_mixer(kind: str, d_model: int = 8, d_state: int = 4):
    """(mixer, inputs): a Mamba, an M3 (CrossModalMamba) or a channel-swap block, with in/out projection biases."""
    torch.manual_seed(0)
    cls, n_inputs = {"mamba": (Mamba, 1), "m3": (CrossModalMamba, 3), "channel_swap": (TokenSwapMamba, 2)}[kind]
    mixer = cls(d_model, d_state=d_state, bias=True)
    g = torch.Generator().manual_seed(1)
    return mixer, [torch.randn(2, 21, d_model, generator=g) for _ in range(n_inputs)]


FUSED_CALLS = {"mamba": 1, "m3": 3, "channel_swap": 2}  # mixers per module
OUT_PROJ = ("out_proj.weight", "out_proj.bias")  # not used by ``Mamba.inner``


def run_mixer(mixer, inputs, backend, method=None, device="cpu"):
    """Outputs and the gradients of every input and parameter for a fixed random weighting of the outputs."""
    set_scan_backend(mixer, backend)
    mixer.zero_grad(set_to_none=True)
    xs = [x.detach().to(device).requires_grad_() for x in inputs]
    out = (method or mixer)(*xs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(2)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(device)).sum() for o in outs)
    loss.backward()
    grads = {f"input{i}": x.grad for i, x in enumerate(xs)}
    grads.update({name: p.grad for name, p in mixer.named_parameters()})
    return [o.detach() for o in outs], grads


def assert_same_results(got, ref, rel_out, rel_grad, unused=()):
    """Outputs and gradients agree; every input and parameter has a gradient except the ``unused`` ones."""
    (outs, grads), (ref_outs, ref_grads) = got, ref
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert_close(o, r, rel_out, f"output {i}")
    assert grads.keys() == ref_grads.keys()
    for name, r in ref_grads.items():
        if name in unused:
            assert r is None and grads[name] is None, name
            continue
        assert r is not None and grads[name] is not None, name
        assert grads[name].dtype == r.dtype, name
        assert_close(grads[name], r, rel_grad, f"d {name}")


# ------------------------------------------------------------------------------------------------ import guards
@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed here")
def test_not_installed_is_unavailable_with_the_reason():
    assert cuda_kernels.scan_kernel() == (None, "mamba_ssm not installed")
    assert cuda_kernels.inner_kernel() == (None, "mamba_ssm not installed")
    assert available_backends()["cuda"] == (False, "mamba_ssm not installed")
    assert resolve_backend("auto", torch.device("cuda")) == "torch"


def test_mamba_ssm_without_its_extension_falls_back(stand_ins, monkeypatch):
    """mamba-ssm importable (recent versions import ``selective_scan_cuda`` guarded) but its extension missing."""
    calls, _ = stand_ins
    monkeypatch.setitem(sys.modules, "selective_scan_cuda", None)  # import raises ModuleNotFoundError
    fn, why = cuda_kernels.scan_kernel()
    assert fn is None and "without its CUDA extension selective_scan_cuda" in why and "MAMBA_KEEP_CUDA_BUILD" in why
    assert cuda_kernels.inner_kernel() == (None, why)
    assert available_backends()["cuda"] == (False, why)
    scan_rows = env_info.report()["scan_backends"]
    assert scan_rows["cuda"] == (False, why) and scan_rows["mamba_inner"] == (False, why)
    assert scan_rows["causal_conv1d"][1] and resolve_backend("auto", torch.device("cpu")) == "torch"
    mixer, xs = make_mixer("mamba")
    ref = run_mixer(mixer, xs, "torch")
    got = run_mixer(mixer, xs, None)
    assert calls == {"causal_conv1d_fn": 1}  # the conv kernel still applies; the scan falls back to "torch"
    assert_same_results(got, ref, 1e-6, 1e-5)


@pytest.mark.parametrize("error", [ImportError("selective_scan_cuda.so: undefined symbol: _ZN3c10"),
                                   OSError("libcudart.so.12: cannot open shared object file"),
                                   RuntimeError("Found no NVIDIA driver on your system")])
@pytest.mark.parametrize("package", ["mamba_ssm", "causal_conv1d"])
def test_any_import_error_means_unavailable(stand_ins, monkeypatch, package, error):
    """mamba-ssm 2.x and causal-conv1d raise at import when their extension is broken; the mixers fall back."""
    calls, _ = stand_ins
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise error
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    broken, working = ((cuda_kernels.scan_kernel, cuda_kernels.conv_kernel) if package == "mamba_ssm"
                       else (cuda_kernels.conv_kernel, cuda_kernels.scan_kernel))
    fn, why = broken()
    assert fn is None and why == f"{package} not usable: {type(error).__name__}: {error}"
    assert working()[0] is not None and cuda_kernels.inner_kernel() == (None, why)
    mixer, xs = make_mixer("m3")
    ref = run_mixer(mixer, xs, "torch")
    got = run_mixer(mixer, xs, "auto")
    expected = {"causal_conv1d_fn": 3} if package == "mamba_ssm" else {"selective_scan_fn": 3}
    assert calls == expected
    assert_same_results(got, ref, 1e-5, 1e-4)


def test_mamba_ssm_without_causal_conv1d_functions_keeps_the_unfused_kernels(stand_ins):
    """mamba-ssm sets its causal-conv1d functions to None when that import failed; mamba_inner_fn would assert."""
    calls, interface = stand_ins
    interface.causal_conv1d_fwd_function = None
    fn, why = cuda_kernels.inner_kernel()
    assert fn is None and "causal-conv1d" in why
    assert cuda_kernels.status()["mamba_inner"] == (False, why)
    mixer, xs = make_mixer("mamba")
    assert_same_results(run_mixer(mixer, xs, None), run_mixer(mixer, xs, "torch"), 1e-5, 1e-4)
    assert calls == {"causal_conv1d_fn": 1, "selective_scan_fn": 1}


# ------------------------------------------------------------------------------------------------ plumbing
@pytest.mark.parametrize("d_model", [8, 6], ids=["d_inner16", "d_inner12"])  # 12: not a multiple of 8
@pytest.mark.parametrize("kind", ["mamba", "m3", "channel_swap"])
def test_fused_path_plumbing_matches_the_reference(stand_ins, kind, d_model):
    """Every mixer through the fused ``mamba_inner_fn`` equals the reference path: outputs and all gradients."""
    calls, _ = stand_ins
    mixer, xs = make_mixer(kind, d_model)
    ref = run_mixer(mixer, xs, "torch")
    assert not calls  # an explicit non-CUDA backend uses no kernel
    got = run_mixer(mixer, xs, None)
    assert calls == {"mamba_inner_fn": FUSED_CALLS[kind]}
    assert_same_results(got, ref, 1e-5, 1e-4)


@pytest.mark.parametrize("kind", ["mamba", "m3", "channel_swap"])
def test_unfused_kernel_plumbing_matches_the_reference(stand_ins, kind):
    """Without the fused kernel: causal_conv1d_fn + selective_scan_fn (with z), as MambaDFuse's no-out_proj path."""
    calls, interface = stand_ins
    interface.causal_conv1d_fwd_function = None
    mixer, xs = make_mixer(kind, 6)
    ref = run_mixer(mixer, xs, "ref")
    got = run_mixer(mixer, xs, "cuda")
    n = FUSED_CALLS[kind]
    assert calls == {"causal_conv1d_fn": n, "selective_scan_fn": n}
    assert_same_results(got, ref, 1e-5, 1e-4)


def test_inner_without_out_proj_uses_conv_and_scan_kernels(stand_ins):
    """``Mamba.inner`` (the "no out_proj" result M3 builds on) has no fused kernel: conv + scan kernels."""
    calls, _ = stand_ins
    mixer, xs = make_mixer("mamba")
    ref = run_mixer(mixer, xs, "torch", method=mixer.inner)
    got = run_mixer(mixer, xs, "auto", method=mixer.inner)
    assert calls == {"causal_conv1d_fn": 1, "selective_scan_fn": 1}
    assert_same_results(got, ref, 1e-5, 1e-4, unused=OUT_PROJ)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "conv+scan"])
@pytest.mark.parametrize("kind", ["mamba", "m3"])
def test_kernel_paths_under_bf16_autocast(stand_ins, kind, fused):
    """Under autocast the kernels get the dtypes they check (u, delta, B, C, z in bfloat16; A, D, delta_bias float32)
    and match the reference path as closely as the reference under autocast matches float32."""
    calls, interface = stand_ins
    if not fused:
        interface.causal_conv1d_fwd_function = None
    mixer, xs = make_mixer(kind)
    exact = run_mixer(mixer, xs, "torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = run_mixer(mixer, xs, "torch")
        assert not calls
        got = run_mixer(mixer, xs, None)
    assert calls == ({"mamba_inner_fn": FUSED_CALLS[kind]} if fused
                     else {"causal_conv1d_fn": FUSED_CALLS[kind], "selective_scan_fn": FUSED_CALLS[kind]})
    assert got[0][0].dtype == ref[0][0].dtype == torch.bfloat16
    for o, r, e in zip(got[0], ref[0], exact[0]):
        assert rel_err(o, e) <= 2 * rel_err(r, e) + 1e-2
    for name, e in exact[1].items():
        assert got[1][name].dtype == e.dtype == torch.float32 and torch.isfinite(got[1][name]).all(), name
        assert rel_err(got[1][name], e) <= 2 * rel_err(ref[1][name], e) + 2e-2, name


def test_scan_kernel_gets_its_dtypes(stand_ins):
    """selective_scan(backend="cuda") casts to the kernel's dtypes (A, D, delta_bias float32; the rest u's); float64
    goes to the "torch" backend under auto and is refused by an explicit "cuda"."""
    calls, _ = stand_ins
    x = mamba_like_inputs(dim=8, L=20)
    bf16 = {k: v.to(torch.bfloat16) for k, v in x.items()}
    bf16["delta"] = bf16["delta"].float()  # a mixed call: delta in float32
    out = selective_scan(**bf16, delta_softplus=True, backend="cuda")
    assert calls == {"selective_scan_fn": 1} and out.dtype == torch.bfloat16
    ref = selective_scan_ref(**{k: v.to(torch.bfloat16).double() for k, v in x.items()}, delta_softplus=True)
    assert_close(out, ref, 2e-2, "out")
    x64 = {k: v.double() for k, v in x.items()}
    assert resolve_backend("auto", torch.device("cpu"), torch.float64) == "torch"
    selective_scan(**x64, delta_softplus=True)
    assert calls == {"selective_scan_fn": 1}
    with pytest.raises(ValueError, match="float64"):
        selective_scan(**x64, backend="cuda")


def test_causal_conv_dispatch(stand_ins):
    """The conv kernel gets a (D, K) weight and a channel-first x (a channel-last view with D = 12 would fail its
    check); widths outside 2-4, float64 and non-CUDA backends take the reference."""
    calls, _ = stand_ins
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 15, 12, generator=g).transpose(1, 2)  # (B, D, L) view of channel-last memory
    w, b = torch.randn(12, 4, generator=g), torch.randn(12, generator=g)
    out = causal_conv1d(x, w, b, "silu")
    assert calls == {"causal_conv1d_fn": 1}
    torch.testing.assert_close(out, causal_conv1d_ref(x, w, b, "silu"))
    for args, kw in (((x, torch.randn(12, 5), b), {}), ((x.double(), w.double(), b.double()), {}),
                     ((x, w, b), {"backend": "torch"}), ((x, w, b), {"backend": "cpu"})):
        causal_conv1d(*args, **kw)
    assert calls == {"causal_conv1d_fn": 1}


# ------------------------------------------------------------------------------------------------ reference conv
def test_causal_conv_reference_is_the_module_conv():
    """causal_conv1d_ref is nn.Conv1d(D, D, K, groups=D, padding=K-1)(x)[..., :L], exactly, with and without SiLU."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 3, groups=6, padding=2)
    x = torch.randn(2, 6, 11)
    assert torch.equal(causal_conv1d_ref(x, conv.weight[:, 0], conv.bias), conv(x)[..., :11])
    assert torch.equal(causal_conv1d(x, conv.weight[:, 0], conv.bias, "silu"), F.silu(conv(x)[..., :11]))
    grads = [torch.autograd.grad(y.square().sum(), (conv.weight, conv.bias))
             for y in (causal_conv1d_ref(x, conv.weight[:, 0], conv.bias), conv(x)[..., :11])]
    assert all(torch.equal(a, b) for a, b in zip(*grads))  # the (D, K) view hands gradients to the module
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, conv.weight[:, 0], activation="relu")
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d(x, conv.weight)


# ------------------------------------------------------------------------------------------------ on a GPU
def _kernels_here(*names: str) -> bool:
    if not torch.cuda.is_available():
        return False
    status = cuda_kernels.status()
    return all(status[name][0] for name in names)


cuda = pytest.mark.cuda
needs = {name: pytest.mark.skipif(not _kernels_here(name), reason=f"needs CUDA and the {name} kernel")
         for name in ("selective_scan", "causal_conv1d", "mamba_inner")}
BF16_AUTOCAST = pytest.param(torch.bfloat16, id="bf16-autocast")


@pytest.fixture
def spy(monkeypatch):
    """Count calls of the real kernels (wrapping the accessors of ``cuda_kernels``)."""
    calls: collections.Counter = collections.Counter()
    for accessor in ("scan_kernel", "conv_kernel", "inner_kernel"):
        fn, why = getattr(cuda_kernels, accessor)()
        if fn is None:
            continue

        def call(*args, _fn=fn, _name=accessor, **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(cuda_kernels, accessor, lambda _call=call: (_call, None))
    return calls


@pytest.fixture
def exact_float32(monkeypatch):
    """No TF32 in the reference path's convs and matmuls, so float32 comparisons are tight."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@cuda
@needs["selective_scan"]
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bc", ["variable", "grouped", "invariant"])
def test_selective_scan_kernel_matches_reference(dtype, bc, spy):
    """mamba-ssm's kernel (auto's choice for CUDA tensors) against the float64 reference: outputs, last state and the
    gradients of every input (its backward ignores the last state's gradient, so the loss uses ``out`` only)."""
    assert resolve_backend("auto", torch.device("cuda"), dtype) == "cuda"
    assert resolve_backend("auto", torch.device("cuda"), torch.float64) == "torch"
    x = mamba_like_inputs(batch=2, dim=32, L=300, N=16, bc=bc, dtype=torch.float64)
    x = {k: v.to(dtype).double() for k, v in x.items()}  # the values the kernel sees
    ref_args = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref_out, ref_last = selective_scan_ref(**ref_args, delta_softplus=True, return_last_state=True)
    w = torch.randn(ref_out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (ref_out * w).sum().backward()
    param = {"A", "D", "delta_bias"} | ({"B", "C"} if bc == "invariant" else set())
    args = {k: v.to("cuda", torch.float32 if k in param else dtype).requires_grad_() for k, v in x.items()}
    out, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    (out.float() * w.float().cuda()).sum().backward()
    assert spy == {"scan_kernel": 1} and out.dtype == dtype
    rel_out, rel_grad = (1e-4, 1e-3) if dtype == torch.float32 else (2e-2, 3e-2)
    assert_close(out, ref_out, rel_out, "out")
    assert_close(last, ref_last, rel_out, "last state")
    for k in ref_args:
        assert args[k].grad.dtype == args[k].dtype
        assert_close(args[k].grad, ref_args[k].grad, rel_grad, f"d{k}")


@cuda
@needs["causal_conv1d"]
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("width", [2, 3, 4])
def test_causal_conv_kernel_matches_reference(width, activation, dtype, spy):
    """causal-conv1d's kernel against the float64 reference, outputs and the gradients of x, weight and bias; x is a
    channel-last view with D = 12 (the dispatch makes it channel-first) in ``dtype``, the weight float32 as a
    module's under autocast."""
    g = torch.Generator().manual_seed(width)
    x = torch.randn(2, 70, 12, generator=g).to(dtype).double()
    w, b = torch.randn(12, width, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    ref_args = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = causal_conv1d_ref(ref_args[0].transpose(1, 2), *ref_args[1:], activation)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ref * dout).sum().backward()
    args = [x.to("cuda", dtype).requires_grad_(), w.float().cuda().requires_grad_(), b.float().cuda().requires_grad_()]
    out = causal_conv1d(args[0].transpose(1, 2), *args[1:], activation)
    (out.float() * dout.float().cuda()).sum().backward()
    assert spy == {"conv_kernel": 1} and out.dtype == dtype
    rel = 1e-5 if dtype == torch.float32 else 1e-2
    assert_close(out, ref, rel, "out")
    for name, a, r in zip(("x", "weight", "bias"), args, ref_args):
        assert_close(a.grad, r.grad, rel, f"d{name}")


def _mixer_parity(kind, dtype, spy, expected_calls, method=None):
    """The mixer on CUDA through the kernels vs the same mixer with backend "torch" (no kernel): float32 tight;
    under bfloat16 autocast as close to the float32 result as the reference path under autocast is."""
    mixer, xs = make_mixer(kind, 16, d_state=16)
    mixer.cuda()
    bound = (lambda m: getattr(m, method)) if method else (lambda m: None)
    exact = run_mixer(mixer, xs, "torch", bound(mixer), "cuda")
    assert not spy
    unused = OUT_PROJ if method else ()
    if dtype == torch.float32:
        got = run_mixer(mixer, xs, None, bound(mixer), "cuda")
        assert spy == expected_calls
        assert_same_results(got, exact, 1e-4, 1e-3, unused)
        return
    with torch.autocast("cuda", dtype=dtype):
        ref = run_mixer(mixer, xs, "torch", bound(mixer), "cuda")
        got = run_mixer(mixer, xs, None, bound(mixer), "cuda")
    assert spy == expected_calls
    for o, r, e in zip(got[0], ref[0], exact[0]):
        assert o.dtype == r.dtype and rel_err(o, e) <= 2 * rel_err(r, e) + 1e-2
    for name, e in exact[1].items():
        if name in unused:
            continue
        assert got[1][name].dtype == e.dtype and torch.isfinite(got[1][name]).all(), name
        assert rel_err(got[1][name], e) <= 2 * rel_err(ref[1][name], e) + 2e-2, name


@cuda
@needs["mamba_inner"]
@pytest.mark.parametrize("dtype", [torch.float32, BF16_AUTOCAST])
@pytest.mark.parametrize("kind", ["mamba", "m3", "channel_swap"])
def test_mixers_fused_match_reference(kind, dtype, spy, exact_float32):
    """Mamba, M3 and channel-swap blocks through ``mamba_inner_fn``: outputs and every input/parameter gradient."""
    _mixer_parity(kind, dtype, spy, {"inner_kernel": FUSED_CALLS[kind]})


@cuda
@needs["selective_scan"]
@needs["causal_conv1d"]
@pytest.mark.parametrize("dtype", [torch.float32, BF16_AUTOCAST])
def test_mamba_inner_with_conv_and_scan_kernels_matches_reference(dtype, spy, exact_float32):
    """``Mamba.inner`` (no out_proj, the M3 building block): causal_conv1d_fn + selective_scan_fn with z."""
    _mixer_parity("mamba", dtype, spy, {"conv_kernel": 1, "scan_kernel": 1}, method="inner")


@cuda
@needs["mamba_inner"]
def test_float64_mixer_on_cuda_uses_no_kernel(spy):
    """The kernels take no float64: auto runs the "torch" scan and the reference conv, matching the CPU result."""
    mixer, xs = make_mixer("mamba")
    mixer.double()
    cpu = run_mixer(mixer, [x.double() for x in xs], "torch")
    got = run_mixer(mixer.cuda(), [x.double() for x in xs], None, device="cuda")
    assert not spy
    assert_same_results(got, cpu, 1e-10, 1e-9)
