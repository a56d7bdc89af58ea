"""The Fig. 2 Mamba mixer/block (docs/method.md §6, §3.1): mamba-ssm layout, init, the SSM path, parity, residuals."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm2ct.models.cross_modal import CrossModalMamba
from mm2ct.models.mamba import (Mamba, MambaBlock, MambaStack, causal_conv1d, close_stream, map_to_sequence,
                                raster_index, sequence_to_map, set_scan_backend)

FAST = "torch"  # the pure-PyTorch backend: always present, no build step


def _mamba(**kw) -> Mamba:
    torch.manual_seed(0)
    kw.setdefault("backend", FAST)
    return Mamba(8, d_state=4, **kw)


def test_state_dict_matches_mamba_ssm_layout() -> None:
    # mamba_ssm/modules/mamba_simple.py, d_model=8 -> d_inner=16, dt_rank=ceil(8/16)=1, d_state=4, d_conv=4
    expected = {
        "A_log": (16, 4), "D": (16,),
        "in_proj.weight": (32, 8),
        "conv1d.weight": (16, 1, 4), "conv1d.bias": (16,),
        "x_proj.weight": (1 + 2 * 4, 16),
        "dt_proj.weight": (16, 1), "dt_proj.bias": (16,),
        "out_proj.weight": (8, 16),
    }
    got = {k: tuple(v.shape) for k, v in _mamba().state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same registration order as mamba-ssm
    with_bias = {k: tuple(v.shape) for k, v in _mamba(bias=True).state_dict().items()}
    assert with_bias == {**expected, "in_proj.bias": (32,), "out_proj.bias": (8,)}
    assert Mamba(60).dt_rank == 4 and Mamba(60).d_inner == 120


def test_state_dict_round_trip() -> None:
    a, b = _mamba(), Mamba(8, d_state=4)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 8)
    set_scan_backend(b, FAST)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_initialisation() -> None:
    m = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1, 17.0)).repeat(64, 1))
    assert torch.equal(m.D, torch.ones(64))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
    const = Mamba(32, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(const.dt_proj.weight, torch.full_like(const.dt_proj.weight, 2.0 * 2 ** -0.5))
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(8, dt_init="bogus")


def _inner_explicit(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """§6.2 written out step by step (float64) for one Mamba: (B, L, d) -> y ⊙ SiLU(z), (B, d_inner, L)."""
    batch, length, _ = x.shape
    xz = x @ m.in_proj.weight.T  # (B, L, 2 d_inner)
    u, z = xz[..., : m.d_inner], xz[..., m.d_inner:]
    w = m.conv1d.weight[:, 0, :]  # (d_inner, d_conv)
    conv = torch.zeros_like(u)
    for t in range(length):
        acc = m.conv1d.bias.clone()
        for k in range(m.d_conv):  # tap k sees token t - (d_conv - 1) + k
            s = t - (m.d_conv - 1) + k
            if s >= 0:
                acc = acc + w[:, k] * u[:, s]
        conv[:, t] = acc
    u = F.silu(conv)
    dbl = u @ m.x_proj.weight.T
    dt, B, C = dbl.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = F.softplus(dt @ m.dt_proj.weight.T + m.dt_proj.bias)  # (B, L, d_inner)
    A = -torch.exp(m.A_log)
    h = torch.zeros(batch, m.d_inner, m.d_state, dtype=x.dtype)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + m.D * u[:, t])
    y = torch.stack(ys, dim=-1)  # (B, d_inner, L)
    return y * F.silu(z.transpose(1, 2))


def test_inner_equals_the_equations() -> None:
    m = _mamba().double()
    set_scan_backend(m, "ref")
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m.inner(x), _inner_explicit(m, x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(m(x), m.out_proj(m.inner(x).transpose(1, 2)))


def test_shapes_dtype_and_gradients() -> None:
    m = _mamba()
    x = torch.randn(3, 10, 8, requires_grad=True)
    y = m(x)
    assert y.shape == (3, 10, 8) and y.dtype == torch.float32
    assert m.inner(x).shape == (3, 16, 10)
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_causal_in_the_sequence() -> None:
    m = _mamba()
    x = torch.randn(1, 12, 8, requires_grad=True)
    m(x)[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0 and x.grad[0, :6].abs().sum(-1).min() > 0


@pytest.mark.parametrize("fast", ["torch", "auto"])
def test_parity_reference_vs_fast_scan(fast: str) -> None:
    """Block output and gradients with the sequential reference scan equal those with the fast scan."""
    torch.manual_seed(1)
    block = MambaBlock(8, d_state=4, backend="ref")
    x = torch.randn(2, 40, 8, requires_grad=True)
    out_ref, _ = block(x)
    g_ref = torch.autograd.grad(out_ref.square().sum(), [x, *block.parameters()])
    set_scan_backend(block, fast)
    out_fast, _ = block(x)
    g_fast = torch.autograd.grad(out_fast.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_block_residual_convention() -> None:
    """(x, r) -> (mixer(LN(x + r)), x + r); r None means 0 (MambaDFuse / mamba-ssm Block, §3.1)."""
    torch.manual_seed(2)
    block = MambaBlock(8, d_state=4, backend=FAST)
    x, r = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    h, r2 = block(x, r)
    torch.testing.assert_close(r2, x + r)
    torch.testing.assert_close(h, block.mixer(block.norm(x + r)))
    h0, r0 = block(x)
    assert torch.equal(r0, x)
    torch.testing.assert_close(h0, block.mixer(block.norm(x)))


def test_closed_stack_equals_prenorm_residual_blocks() -> None:
    """A closed residual-stream stack is Fig. 2's x <- x + Mamba(LN(x)) applied block after block."""
    torch.manual_seed(3)
    stack = MambaStack(8, 3, d_state=4, backend=FAST)
    x = torch.randn(2, 9, 8)
    h, r = stack(x)
    y = x
    for blk in stack.layers:
        y = y + blk.mixer(blk.norm(y))
    torch.testing.assert_close(close_stream(h, r), y)
    assert close_stream(h, None) is h


def test_raster_sequence_helpers() -> None:
    x = torch.randn(2, 3, 4, 5)
    s = map_to_sequence(x)
    assert s.shape == (2, 20, 3)
    for k in (0, 4, 5, 13, 19):  # token k is pixel (k // W, k % W): row by row, left to right
        assert torch.equal(s[:, k], x[:, :, k // 5, k % 5])
    assert torch.equal(sequence_to_map(s, 4, 5), x)
    assert torch.equal(raster_index(3, 4), torch.arange(12).view(3, 4))
    with pytest.raises(ValueError, match="4x4"):
        sequence_to_map(s, 4, 4)


def test_a_forward_draws_no_randomness_and_repeats_exactly() -> None:
    """The mixer is a deterministic function of its weights and input: a forward/backward leaves the global RNG
    untouched and gives the same bits twice (what bit-identical resume and evaluation rely on)."""
    m = _mamba()
    x = torch.randn(2, 6, 8)
    state = torch.get_rng_state()
    runs = []
    for _ in range(2):
        m.zero_grad()
        out = m(x)
        out.square().sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in m.parameters()]))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_set_scan_backend_reaches_every_mixer() -> None:
    stack = MambaStack(8, 2, d_state=4)
    set_scan_backend(stack, "ref")
    assert [blk.mixer.backend for blk in stack.layers] == ["ref", "ref"]


# ----------------------------------------------------------------------------------------------- autocast, devices
def _mixers():
    """A Mamba mixer and an M3 mixer with their inputs: (module, inputs)."""
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(5)
    return [(Mamba(8, d_state=4), [torch.randn(2, 30, 8, generator=g)]),
            (CrossModalMamba(8, d_state=4), [torch.randn(2, 30, 8, generator=g) for _ in range(3)])]


@pytest.mark.parametrize("backend", [FAST, "auto", "ref"])
def test_mixers_under_bf16_autocast(backend: str) -> None:
    """Mamba and M3 mixers forward + backward under CPU bfloat16 autocast: bfloat16 out, float32 gradients for every
    parameter, within bfloat16 accuracy of the float32 run."""
    for module, xs in _mixers():
        set_scan_backend(module, backend)
        results = []
        for enabled in (False, True):
            module.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                y = module(*xs)
                y.float().square().mean().backward()
            results.append((y, {n: p.grad for n, p in module.named_parameters()}))
        (y32, g32), (y16, g16) = results
        assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
        torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.05 * y32.abs().max().item())
        for name, g in g32.items():
            assert g16[name].dtype == torch.float32 and torch.isfinite(g16[name]).all(), name
            torch.testing.assert_close(g16[name], g, rtol=0.1, atol=0.1 * g.abs().max().item(), msg=name)


def test_mixers_create_nothing_off_their_device() -> None:
    """On the meta device, any tensor made inside without ``device=`` (on the CPU) would raise."""
    for module, xs in _mixers():
        module.to("meta")
        xs = [x.to("meta").requires_grad_() for x in xs]
        y = module(*xs)
        y.sum().backward()
        assert y.device.type == "meta" and all(x.grad.device.type == "meta" for x in xs)


def test_causal_conv1d_is_the_module_conv() -> None:
    """The causal conv helper equals the nn.Conv1d padded on both sides, first L outputs (and SiLU), exactly."""
    m = _mamba()
    u = torch.randn(2, 16, 9)
    assert torch.equal(causal_conv1d(m.conv1d, u), m.conv1d(u)[..., :9])
    assert torch.equal(causal_conv1d(m.conv1d, u, "silu"), F.silu(m.conv1d(u)[..., :9]))
