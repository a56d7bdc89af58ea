"""The Fig. 2 Mamba block of MM2CT (docs/method.md §6.1-6.4, §3.1) and 2-D <-> sequence helpers (§6.3).

``Mamba`` is the mixer, with the parameter names, shapes and initialisation of mamba-ssm's ``Mamba``
(``mamba_ssm/modules/mamba_simple.py``), so its state_dicts load unchanged:

    in_proj.weight   (2*d_inner, d_model)          [in_proj.bias if bias=True]
    conv1d.weight    (d_inner, 1, d_conv)           conv1d.bias (d_inner,) if conv_bias
    x_proj.weight    (dt_rank + 2*d_state, d_inner)
    dt_proj.weight   (d_inner, dt_rank)             dt_proj.bias (d_inner,)
    A_log            (d_inner, d_state)             D (d_inner,)
    out_proj.weight  (d_model, d_inner)             [out_proj.bias if bias=True]

with d_inner = expand * d_model and dt_rank = ceil(d_model / 16). For a sequence x (B, L, d_model) (§6.2):

    [u; z] = in_proj(x)                      u, z: (B, d_inner, L)
    u      = SiLU(causal depthwise conv1d(u))
    [Δ_raw, B_t, C_t] = x_proj(u)             Δ = softplus(dt_proj(Δ_raw))   (bias added inside the scan)
    y      = selective_scan(u, Δ, A = -exp(A_log), B_t, C_t, D) ⊙ SiLU(z)     (``inner``: "no out_proj", §6.4)
    out    = out_proj(y)

Layout (no transposed copies of the wide tensors): tokens stay (B, L, C) (LayerNorm's layout), everything inside
the mixer is channel-first (B, channels, L) and contiguous, the layout the causal conv, the scans and mamba-ssm's
kernels read. The projections produce it directly as batched matrix products with the weight on the left
(``project``: W @ x^T), instead of a (B, L, channels) result transposed and copied before each consumer.

``MambaBlock`` wraps the mixer with a LayerNorm in the residual-stream form of mamba-ssm / MambaDFuse (§3.1):
(x, r) -> (mixer(LN(x + r)), x + r). A stack of such blocks, closed with ``close_stream`` as h + r, equals the Fig. 2
form x <- x + mixer(LN(x)) applied block after block; MambaDFuse's code closes with h alone (open choice 11: that is
the default of ``FusionConfig.close_residual``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

from mm2ct.ops import causal_conv, fused_inner_applies, mamba_inner, selective_scan


# ----------------------------------------------------------------------------------------------- 2-D <-> sequence
def map_to_sequence(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens in raster order: row by row, left to right (§6.3)."""
    return x.flatten(2).transpose(1, 2)


def sequence_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) raster-ordered tokens -> (B, C, H, W); the inverse of ``map_to_sequence``."""
    batch, length, channels = x.shape
    if length != height * width:
        raise ValueError(f"mamba.sequence_to_map: {length} tokens cannot form a {height}x{width} map")
    return x.transpose(1, 2).reshape(batch, channels, height, width)


def raster_index(height: int, width: int) -> torch.Tensor:
    """(H, W) map whose pixel holds its position in the scan sequence (i*W + j for pixel (i, j))."""
    order = torch.arange(height * width, dtype=torch.float32).view(1, height * width, 1)  # (1, L, 1)
    return sequence_to_map(order, height, width)[0, 0].long()  # (H, W)


# ----------------------------------------------------------------------------------------------- initialisation
def init_dt_proj(dt_proj: nn.Linear, dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4) -> None:
    """mamba-ssm's Δ projection init (§6.2): weight ~ U(±dt_rank^-1/2 * dt_scale) (or that constant),
    bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], floored at dt_init_floor."""
    dt_rank, d_inner = dt_proj.in_features, dt_proj.out_features
    std = dt_rank ** -0.5 * dt_scale
    with torch.no_grad():
        if dt_init == "constant":
            dt_proj.weight.fill_(std)
        elif dt_init == "random":
            dt_proj.weight.uniform_(-std, std)
        else:
            raise ValueError(f"mamba.init_dt_proj: dt_init must be 'random' or 'constant', got {dt_init!r}")
        dt = torch.exp(torch.rand(d_inner, device=dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    dt_proj.bias._no_reinit = True


def s4d_real_A_log(d_inner: int, d_state: int, device=None) -> nn.Parameter:
    """A_log = log(1..N) for every channel (S4D-real init, A = -exp(A_log) = -(1..N)); no weight decay."""
    A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)  # (d_inner, N)
    p = nn.Parameter(torch.log(A))
    p._no_weight_decay = True
    return p


def ones_D(d_inner: int, device=None) -> nn.Parameter:
    """The skip D = 1 per channel; no weight decay."""
    p = nn.Parameter(torch.ones(d_inner, device=device))
    p._no_weight_decay = True
    return p


def causal_conv1d(conv: nn.Conv1d, u: torch.Tensor, activation: str | None = None,
                  backend: str | None = None) -> torch.Tensor:
    """Depthwise causal conv of ``conv``, then ``activation`` (None or "silu"): (B, D, L) -> same.

    ``mm2ct.ops.causal_conv`` with the (D, 1, K) weight as (D, K): causal-conv1d's kernel on CUDA (backend "auto" or
    "cuda"), else the conv padded d_conv-1 on both sides with the first L outputs kept.
    """
    return causal_conv.causal_conv1d(u, conv.weight[:, 0], conv.bias, activation, backend or "auto")


# ----------------------------------------------------------------------------------------------- the SSM path
def project(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None,
            tokens: bool = True) -> torch.Tensor:
    """A linear map written channel-first: weight (O, I) applied to x, out (B, O, L) contiguous.

    ``tokens``: x is (B, L, I) tokens (in_proj), else (B, I, L) channel-first (x_proj, dt_proj). One batched matrix
    product W @ x^T (the weight broadcast over the batch, x^T a view), so no (B, L, O) result has to be transposed
    and copied for the conv and the scan; same values as ``F.linear`` and the same autocast casts (bmm / baddbmm
    run in the autocast dtype as linear does).
    """
    rhs = x.transpose(1, 2) if tokens else x  # (B, I, L)
    w = weight.expand(x.shape[0], -1, -1)  # (B, O, I), no copy
    if bias is None:
        return torch.bmm(w, rhs)
    return torch.baddbmm(bias[:, None], w, rhs)


def project_out(linear: nn.Linear, y: torch.Tensor, channel_first: bool = False) -> torch.Tensor:
    """out_proj on a channel-first y (B, D, L) -> tokens (B, L, d_model), as one batched product (y^T a view).

    ``channel_first``: compute W @ y, (B, d_model, L) contiguous, and return its (B, L, d_model) view, for a caller
    that maps the tokens back to a (B, d_model, H, W) map (``sequence_to_map`` is then a view, not a copy); else the
    tokens are contiguous, the layout the next LayerNorm reads. Same values either way.
    """
    batch = y.shape[0]
    if channel_first:
        out = torch.bmm(linear.weight.expand(batch, -1, -1), y) if linear.bias is None else \
            torch.baddbmm(linear.bias[:, None], linear.weight.expand(batch, -1, -1), y)  # (B, d_model, L)
        return out.transpose(1, 2)
    yt, wt = y.transpose(1, 2), linear.weight.t().expand(batch, -1, -1)  # (B, L, D), (B, D, d_model)
    return torch.bmm(yt, wt) if linear.bias is None else torch.baddbmm(linear.bias, yt, wt)


def project_in(in_proj: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """in_proj of tokens x (B, L, d_model) as (u, z), each (B, d_inner, L) with stride 1 along L: the halves of one
    channel-first product (views; contiguous for one sequence, a cheap straight copy at most for a batch)."""
    return project(in_proj.weight, x, in_proj.bias).chunk(2, dim=1)


def selective_ssm(u: torch.Tensor, z: torch.Tensor, conv1d: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear,
                  A: torch.Tensor, D: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Both Fig. 2 paths up to the product, without out_proj (mamba_inner_fn_no_out_proj, §6.4).

    u, z: (B, d_inner, L), the halves of an input projection (``project_in``), stride 1 along L; A: (d_inner, N)
    (already -exp(A_log)); D: (d_inner,). Returns y ⊙ SiLU(z): (B, d_inner, L), channel-first throughout.
    """
    dt_rank, d_state = dt_proj.in_features, A.shape[1]
    u = causal_conv1d(conv1d, u, "silu", backend)  # (B, d_inner, L)
    x_dbl = project(x_proj.weight, u, tokens=False)  # (B, dt_rank + 2N, L)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
    delta = project(dt_proj.weight, dt, tokens=False)  # (B, d_inner, L); bias goes in as delta_bias
    return selective_scan(
        u, delta, A, B.contiguous(), C.contiguous(), D.float(), z=z,
        delta_bias=dt_proj.bias.float(), delta_softplus=True, backend=backend or "auto",
    )  # (B, d_inner, L)


class Mamba(nn.Module):
    """The Mamba mixer of Fig. 2 (§6.1), mamba-ssm layout: (B, L, d_model) -> (B, L, d_model).

    ``backend`` picks the selective-scan implementation (``mm2ct.ops.selective_scan``; None = "auto").
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, dt_rank="auto",
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random", dt_scale: float = 1.0,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 backend: str | None = None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        init_dt_proj(self.dt_proj, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
        self.A_log = s4d_real_A_log(self.d_inner, d_state, device=device)
        self.D = ones_D(self.d_inner, device=device)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def inner(self, x: torch.Tensor) -> torch.Tensor:
        """The "no out_proj" result y ⊙ SiLU(z) (§6.4): (B, L, d_model) -> (B, d_inner, L)."""
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        return selective_ssm(*project_in(self.in_proj, x), self.conv1d, self.x_proj, self.dt_proj, A,
                             self.D, self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """out_proj(``inner``): (B, L, d_model) -> same; on CUDA in one fused call (``mm2ct.ops.mamba_inner``)."""
        xz = project(self.in_proj.weight, x, self.in_proj.bias)  # (B, 2*d_inner, L), stride 1 along L
        A = -torch.exp(self.A_log.float())  # (d_inner, N)
        if fused_inner_applies(xz, self.conv1d.weight, A, self.backend):
            return mamba_inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                               self.out_proj.weight, self.out_proj.bias, A, self.D, self.dt_proj.bias)
        y = selective_ssm(*xz.chunk(2, dim=1), self.conv1d, self.x_proj, self.dt_proj, A, self.D, self.backend)
        return project_out(self.out_proj, y)  # (B, L, d_model)


# ----------------------------------------------------------------------------------------------- block and stack
class MambaBlock(nn.Module):
    """Fig. 2 block in residual-stream form (§3.1, mamba-ssm ``Block``: ``norm`` + ``mixer``).

    forward(x, residual) with x, residual (B, L, C) (residual None at the start of a stack):
        r' = x + residual;  returns (Mamba(LayerNorm(r')), r').
    """

    def __init__(self, dim: int, **mixer_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = Mamba(dim, **mixer_kwargs)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        residual = x if residual is None else x + residual  # (B, L, C)
        return self.mixer(self.norm(residual)), residual


def close_stream(hidden: torch.Tensor, residual: torch.Tensor | None, add_residual: bool = True) -> torch.Tensor:
    """End a residual-stream stack (open choice 11).

    ``add_residual=True``: h + r, the Fig. 2 form x <- x + mixer(LN(x)) after the last block. ``False``: h alone,
    what MambaDFuse's code does when it maps a stack's tokens back (its callers drop the last residual).
    """
    return hidden if residual is None or not add_residual else hidden + residual


def run_block(block: nn.Module, *args, checkpoint: bool = False):
    """``block(*args)``; with ``checkpoint`` (and autograd on) its activations are recomputed in backward
    instead of stored, so a stack holds only the block inputs (memory for 256 x 256 maps)."""
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


class MambaStack(nn.Module):
    """``depth`` MambaBlocks threading one residual stream: (x, r) -> (h, r'); ``close_stream(h, r')`` ends it.

    ``checkpoint``: recompute each block in backward (``run_block``).
    """

    def __init__(self, dim: int, depth: int, checkpoint: bool = False, **mixer_kwargs):
        super().__init__()
        self.checkpoint = checkpoint
        self.layers = nn.ModuleList(MambaBlock(dim, **mixer_kwargs) for _ in range(depth))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        for layer in self.layers:
            x, residual = run_block(layer, x, residual, checkpoint=self.checkpoint)
        return x, residual


def set_scan_backend(module: nn.Module, backend: str | None) -> nn.Module:
    """Point every selective-scan user inside ``module`` (mixers with a ``backend`` attribute) at ``backend``."""
    for m in module.modules():
        if hasattr(m, "backend") and hasattr(m, "A_log"):
            m.backend = backend
    return module
