"""The ``torch`` backend: an exact selective scan (docs/method.md §6.2) in pure PyTorch, on any device.

The recurrence h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t runs chunk by chunk: for a chunk of T steps the decays
exp(Δ A) and inputs Δ B u are built as (T, batch, dim, N) tensors with batched ops, then one in-place
``addcmul_`` per step turns the inputs into the states; contractions over N or over a group's channels are batched
matrix products. Only the state before each chunk is kept (a checkpoint); the backward recomputes a chunk's states
from it and runs the adjoint recurrence g_t = dy_t C_t + exp(Δ_{t+1} A) ⊙ g_{t+1} the same way, in reverse.
No log-space factorisation (it overflows float32 for long chunks at Mamba's init) and never a (batch, dim, L, N)
tensor for the whole sequence.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mm2ct.ops.scan_common import autocast_disabled, compute_dtype

CHUNK_ELEMENTS = 1 << 20  # a chunk's (T, batch, dim, N) buffers hold about this many elements (4 MB in float32)


def chunk_length(batch: int, dim: int, N: int) -> int:
    return max(8, min(256, CHUNK_ELEMENTS // max(1, batch * dim * N)))


class _Operand:
    """B or C in time-major form, with the group views the contractions need.

    Input-dependent (batch, N, L) or (batch, G, N, L) -> ``tm`` (L, batch, G, N); time-invariant (dim, N) stays.
    A (T, batch, dim, ...) tensor is viewed as (T, batch, G, dim / G, ...) to meet it.
    """

    def __init__(self, M: torch.Tensor, dim: int):
        self.M, self.dim = M, dim
        self.variable = M.dim() > 2
        if self.variable:
            self.G = 1 if M.dim() == 3 else M.shape[1]
            self.tm = (M.unsqueeze(1) if M.dim() == 3 else M).permute(3, 0, 1, 2).contiguous()  # (L, batch, G, N)

    def groups(self, X: torch.Tensor) -> torch.Tensor:
        """(T, batch, dim, *rest) -> (T, batch, G, dim / G, *rest)."""
        return X.view(X.shape[0], X.shape[1], self.G, self.dim // self.G, *X.shape[3:])

    def scale_into(self, out: torch.Tensor, w: torch.Tensor, t0: int, t1: int) -> None:
        """out (T, batch, dim, N) = w (T, batch, dim) ⊗ M_t."""
        if self.variable:
            torch.mul(self.groups(w)[..., None], self.tm[t0:t1, :, :, None, :], out=self.groups(out))
        else:
            torch.mul(w[..., None], self.M, out=out)

    def dot(self, X: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Σ_n X[..., n] M_t[n]: (T, batch, dim, N) -> (T, batch, dim)."""
        if self.variable:
            return torch.matmul(self.groups(X), self.tm[t0:t1, ..., None]).flatten(2)
        return (X * self.M).sum(-1)

    def grad(self, X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Σ over a group's channels of X (T, batch, dim, N) ⊙ w (T, batch, dim): (T, batch, G, N), or (dim, N)."""
        if self.variable:
            return torch.matmul(self.groups(w)[..., None, :], self.groups(X)).squeeze(-2)
        return (X * w[..., None]).sum((0, 1))

    def write_grad(self, dM: torch.Tensor, g: torch.Tensor, t0: int, t1: int) -> None:
        """Put a chunk's gradient (from ``grad``) into dM (M's shape)."""
        if not self.variable:
            dM += g
        elif self.M.dim() == 3:
            dM[..., t0:t1] = g[:, :, 0].permute(1, 2, 0)
        else:
            dM[..., t0:t1] = g.permute(1, 2, 3, 0)


def _delta(delta, delta_bias, softplus):
    """Δ (batch, dim, L) and dΔ/d delta (None without softplus)."""
    x = delta if delta_bias is None else delta + delta_bias[:, None]
    if not softplus:
        return x, None
    return F.softplus(x), torch.where(x > 20, torch.ones_like(x), torch.sigmoid(x))


def _time_major(x: torch.Tensor) -> torch.Tensor:
    return x.permute(2, 0, 1).contiguous()  # (batch, dim, L) -> (L, batch, dim)


def _states(H, dA, h):
    """In place: H[t] (inputs Δ B u) -> states h_t = dA[t] ⊙ h_{t-1} + H[t], from h = h_{-1}."""
    for t in range(H.shape[0]):
        H[t].addcmul_(dA[t], h)
        h = H[t]


class _ScanTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        batch, dim, L = u.shape
        N = A.shape[1]
        Bo, Co = _Operand(B, dim), _Operand(C, dim)
        dt, _ = _delta(delta, delta_bias, softplus)
        dt_t, dtu_t = _time_major(dt), _time_major(dt * u)  # (L, batch, dim)
        T = chunk_length(batch, dim, N)
        dA_buf, H_buf = u.new_empty(2, T, batch, dim, N)
        h = u.new_zeros(batch, dim, N)
        ckpts, ys = [], []
        for t0 in range(0, L, T):
            t1 = min(t0 + T, L)
            dA, H = dA_buf[: t1 - t0], H_buf[: t1 - t0]  # (T, batch, dim, N)
            ckpts.append(h)
            torch.mul(dt_t[t0:t1, ..., None], A, out=dA).exp_()
            Bo.scale_into(H, dtu_t[t0:t1], t0, t1)
            _states(H, dA, h)
            h = H[-1].clone()
            ys.append(Co.dot(H, t0, t1))  # (T, batch, dim)
        y = torch.cat(ys).permute(1, 2, 0) if ys else u.new_zeros(batch, dim, 0)  # (batch, dim, L)
        if D is not None:
            y = y + u * D[:, None]
        out = y if z is None else y * F.silu(z)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y if z is not None else None,
                              torch.stack(ckpts) if ckpts else u.new_zeros(0, batch, dim, N))
        ctx.softplus = softplus
        return out, h

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlast):
        with autocast_disabled(dout.device):  # backward runs under the caller's autocast state
            return _ScanTorch.gradients(ctx, dout, dlast)

    @staticmethod
    def gradients(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, y, ckpts = ctx.saved_tensors
        batch, dim, L = u.shape
        N = A.shape[1]
        Bo, Co = _Operand(B, dim), _Operand(C, dim)
        dt, dsp = _delta(delta, delta_bias, ctx.softplus)
        if z is not None:  # out = y silu(z)
            sz = torch.sigmoid(z)
            dz = dout * y * sz * (1 + z * (1 - sz))
            dy = dout * z * sz
        else:
            dz, dy = None, dout
        dt_t, u_t, dy_t = _time_major(dt), _time_major(u), _time_major(dy)  # (L, batch, dim)
        dtu_t = dt_t * u_t
        ddt_t, du_t = torch.empty_like(dt_t), torch.empty_like(dt_t)
        dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
        T = chunk_length(batch, dim, N)
        dA_buf, H_buf, G_buf = u.new_empty(3, T, batch, dim, N)
        carry = u.new_zeros(batch, dim, N) if dlast is None else dlast  # exp(Δ_{t1} A) ⊙ g_{t1}
        for c in reversed(range(len(ckpts))):
            t0 = c * T
            t1 = min(t0 + T, L)
            dA_c, H, G = dA_buf[: t1 - t0], H_buf[: t1 - t0], G_buf[: t1 - t0]  # (T, batch, dim, N)
            torch.mul(dt_t[t0:t1, ..., None], A, out=dA_c).exp_()
            Bo.scale_into(H, dtu_t[t0:t1], t0, t1)
            _states(H, dA_c, ckpts[c])
            Co.scale_into(G, dy_t[t0:t1], t0, t1)
            G[-1] += carry
            for t in reversed(range(t1 - t0 - 1)):
                G[t].addcmul_(dA_c[t + 1], G[t + 1])
            carry = dA_c[0] * G[0]
            Bo.write_grad(dB, Bo.grad(G, dtu_t[t0:t1]), t0, t1)
            Co.write_grad(dC, Co.grad(H, dy_t[t0:t1]), t0, t1)
            sGB = Bo.dot(G, t0, t1)  # (T, batch, dim)
            gah = dA_c.mul_(G)  # g ⊙ exp(ΔA) ⊙ h_{t-1}, in the decay buffer
            gah[1:] *= H[:-1]
            gah[0] *= ckpts[c]
            ddt_t[t0:t1] = (gah * A).sum(-1) + u_t[t0:t1] * sGB
            du_t[t0:t1] = dt_t[t0:t1] * sGB
            dA += gah.mul_(dt_t[t0:t1, ..., None]).sum((0, 1))
        ddelta = ddt_t.permute(1, 2, 0)
        if dsp is not None:
            ddelta = ddelta * dsp
        du = du_t.permute(1, 2, 0)
        if D is not None:
            du = du + dy * D[:, None]
        dD = (dy * u).sum((0, 2)) if D is not None else None
        dbias = ddelta.sum((0, 2)) if delta_bias is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, dbias, None


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """The ``torch`` backend (docs/method.md §6.2): shapes and semantics of ``mm2ct.ops.selective_scan``.

    Computes in ``compute_dtype`` with autocast off, forward and backward (its products are matmuls)."""
    ct = compute_dtype(u, delta, A, B, C, D, z, delta_bias)

    def cast(t):
        return None if t is None else t.to(ct)

    with autocast_disabled(u.device):
        out, last = _ScanTorch.apply(cast(u), cast(delta), cast(A), cast(B), cast(C), cast(D), cast(z),
                                     cast(delta_bias), bool(delta_softplus))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
