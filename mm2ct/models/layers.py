"""Small layers shared by the translator networks (docs/method.md §2.3-2.5).

* ``variance_scaling_``, ``conv2d``, ``dense``: the NCSN++ / DDGAN initialisation (fan-avg uniform variance scaling,
  zero bias; "init scale 0" means 1e-10) used by the diffusive generator and discriminator (§2.3 "Init").
* ``upfirdn2d`` and friends: FIR up/down-sampling in pure PyTorch (open choice 25), equivalent to the
  ``upfirdn2d_native`` path of StyleGAN2 / score_sde that SynDiff uses: zero-insertion upsampling by ``up``, zero
  padding, 2-D FIR filtering (true convolution), then keeping every ``down``-th sample. Kernel [1, 3, 3, 1] (§2.3).
* ``timestep_embedding``: the sinusoidal embedding of the integer diffusion step t (§2.3, §2.4).
* ``PixelNorm``, ``AdaptiveGroupNorm``: latent-z mapping network input and AdaGN (§2.3).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

FIR_KERNEL = (1, 3, 3, 1)  # SynDiff fir_kernel (§2.3)


# ----------------------------------------------------------------------------------------------- initialisation
@torch.no_grad()
def variance_scaling_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """In-place fan-avg uniform variance scaling (score_sde ``default_init``): U(±sqrt(3 * scale / fan_avg)),
    fan_avg = (fan_in + fan_out) / 2 with the receptive field counted in both; scale 0 means 1e-10 (§2.3)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
           bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """Conv2d with variance-scaling weights and zero bias; padding defaults to 'same' for odd kernels."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride,
                     padding=kernel_size // 2 if padding is None else padding, bias=bias)
    variance_scaling_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def dense(in_features: int, out_features: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear with variance-scaling weights and zero bias."""
    lin = nn.Linear(in_features, out_features)
    variance_scaling_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin


def group_count(channels: int) -> int:
    """GroupNorm groups: SynDiff's min(C // 4, 32), lowered to the nearest divisor of C (equal to it at paper
    widths; SynDiff would fail for widths it does not divide)."""
    g = max(1, min(channels // 4, 32))
    while channels % g:
        g -= 1
    return g


# ----------------------------------------------------------------------------------------------- FIR resampling
def fir_kernel(taps: Sequence[float] = FIR_KERNEL) -> torch.Tensor:
    """Separable 2-D FIR kernel outer(k, k), normalised to sum 1: (K, K)."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter, downsample; the same on both spatial axes.

    x (B, C, H, W), kernel (K, K) -> (B, C, (H*up + pad0 + pad1 - K) // down + 1, same for W).
    Each channel is filtered on its own (the kernel is applied as a true convolution, i.e. flipped).
    """
    b, c, h, w = x.shape
    x = x.reshape(b * c, 1, h, w)  # (B*C, 1, H, W)
    if up > 1:
        x = x.reshape(b * c, 1, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # zeros after every sample
        x = x.reshape(b * c, 1, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x)[None, None]  # (1, 1, K, K)
    x = F.conv2d(x, weight, stride=down)  # (B*C, 1, H', W')
    return x.reshape(b, c, x.shape[-2], x.shape[-1])


def upsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR upsampling (score_sde ``upsample_2d``): (B, C, H, W) -> (B, C, H*factor, W*factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor ** 2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """FIR downsampling (score_sde ``downsample_2d``): (B, C, H, W) -> (B, C, H//factor, W//factor)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


class FIRDownConv(nn.Module):
    """FIR blur then a 3x3 stride-2 conv (score_sde ``Conv2d(down=True)``, the ``progressive_input='residual'``
    pyramid downsampler of §2.3): (B, C_in, H, W) -> (B, C_out, H/2, W/2)."""

    def __init__(self, in_ch: int, out_ch: int, taps: Sequence[float] = FIR_KERNEL):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, 3, stride=2, padding=0)
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.kernel.shape[0] - 2) + (3 - 1)
        x = upfirdn2d(x, self.kernel, pad=((p + 1) // 2, p // 2))  # (B, C_in, H+1, W+1)
        return self.conv(x)


# ----------------------------------------------------------------------------------------------- embeddings, norms
def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of integer steps (§2.3): t (B,) -> (B, dim) = [sin(t w_i), cos(t w_i)],
    w_i = max_positions^(-i / (dim/2 - 1)), i = 0 .. dim/2 - 1 (odd dim: zero-padded)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                      * -(math.log(max_positions) / max(half - 1, 1)))  # (dim/2,)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (B, 2*(dim/2))
    return F.pad(emb, (0, dim % 2))


class PixelNorm(nn.Module):
    """z / sqrt(mean(z^2) + 1e-8) over the feature axis (StyleGAN), the mapping network's input (§2.3)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class AdaptiveGroupNorm(nn.Module):
    """AdaGN (§2.3): GroupNorm without affine, then gamma * h + beta with [gamma, beta] = Linear(z_emb);
    gamma's bias starts at 1, beta's at 0."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels, eps=1e-6, affine=False)
        self.style = dense(style_dim, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels] = 1.0

    def forward(self, h: torch.Tensor, z_emb: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(z_emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
        return gamma * self.norm(h) + beta
