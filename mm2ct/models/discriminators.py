"""Discriminators of the translators (docs/method.md §2.4, §2.5).

* ``DiffusiveDiscriminator`` — SynDiff's time-conditioned ``Discriminator_large``: D(x_t, t, x_{t+1}) -> logit.
* ``PatchDiscriminator`` — the CycleGAN / pix2pix PatchGAN ``NLayerDiscriminator`` for the non-diffusive outputs.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2ct.models.layers import FIR_KERNEL, conv2d, dense, downsample_2d, fir_kernel, timestep_embedding

SQRT2 = math.sqrt(2.0)


class DownConvBlock(nn.Module):
    """act -> conv3x3 -> + Linear(temb) -> act -> FIR downsample -> conv3x3 (init ~0); skip = FIR downsample ->
    1x1 conv (no bias); (main + skip) / sqrt(2). (B, C_in, H, W) -> (B, C_out, H/2, W/2) (§2.4)."""

    def __init__(self, in_ch: int, out_ch: int, t_emb_dim: int, taps: Sequence[float] = FIR_KERNEL):
        super().__init__()
        self.conv1 = conv2d(in_ch, out_ch, 3)
        self.conv2 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.temb_proj = dense(t_emb_dim, out_ch)
        self.skip = conv2d(in_ch, out_ch, 1, bias=False)
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2)) + self.temb_proj(temb)[:, :, None, None]  # (B, C_out, H, W)
        h = self.conv2(downsample_2d(F.leaky_relu(h, 0.2), self.kernel))  # (B, C_out, H/2, W/2)
        return (h + self.skip(downsample_2d(x, self.kernel))) / SQRT2


def minibatch_stddev(h: torch.Tensor, group: int = 4) -> torch.Tensor:
    """Append StyleGAN2's minibatch-stddev feature (1 channel): (B, C, H, W) -> (B, C + 1, H, W).

    Statistics are taken over groups of ``g`` samples, g = the largest divisor of B that is <= ``group``
    (SynDiff uses min(B, 4), which fails when it does not divide B).
    """
    b, c, hgt, wid = h.shape
    g = min(b, group)
    while b % g:
        g -= 1
    y = h.reshape(g, b // g, c, hgt, wid)
    y = torch.sqrt(y.var(dim=0, unbiased=False) + 1e-8)  # (B/g, C, H, W)
    y = y.mean(dim=(1, 2, 3))[:, None, None, None].repeat(g, 1, hgt, wid)  # (B, 1, H, W)
    return torch.cat([h, y], dim=1)


class DiffusiveDiscriminator(nn.Module):
    """Time-conditioned diffusive discriminator (SynDiff ``Discriminator_large``, §2.4).

    D(x_t (B, C, S, S), t (B,), x_{t+1} (B, C, S, S)) -> logits (B,).

    Body: 1x1 conv (2C -> 2ngf), then ``n_down`` DownConvBlocks with widths 4ngf, 8ngf, 8ngf, ... each halving the
    resolution, minibatch-stddev, conv3x3 (8ngf+1 -> 8ngf), act, sum over H, W, Linear(8ngf -> 1).
    t embedding: sinusoidal(t, t_emb_dim) -> Linear -> LReLU -> Linear, then LReLU.

    Depth adapted to the image size: SynDiff's six blocks take 256 to 4 x 4. Here ``n_down`` = the number of
    halvings that keep the map at least 4 x 4 (at most 6): 6 at 256 (the paper's network, unchanged), 4 at 64,
    3 at 32. The blocks kept are the first ``n_down`` of the paper's list, so only the 8ngf -> 8ngf repeats go.
    """

    def __init__(self, channels: int, image_size: int, ngf: int = 64, t_emb_dim: int = 256, max_down: int = 6):
        super().__init__()
        n_down, size = 0, image_size
        while n_down < max_down and size % 2 == 0 and size // 2 >= 4:
            n_down, size = n_down + 1, size // 2
        if n_down == 0:
            raise ValueError(f"DiffusiveDiscriminator: image_size {image_size} is too small (needs >= 8)")
        self.n_down, self.t_emb_dim = n_down, t_emb_dim
        self.t_embed = nn.Sequential(dense(t_emb_dim, t_emb_dim), nn.LeakyReLU(0.2), dense(t_emb_dim, t_emb_dim))
        self.start_conv = conv2d(2 * channels, 2 * ngf, 1, padding=0)
        widths = [2 * ngf, 4 * ngf] + [8 * ngf] * (n_down - 1)
        self.blocks = nn.ModuleList(DownConvBlock(widths[i], widths[i + 1], t_emb_dim) for i in range(n_down))
        self.final_conv = conv2d(widths[-1] + 1, widths[-1], 3)
        self.end_linear = dense(widths[-1], 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_tp1: torch.Tensor) -> torch.Tensor:
        temb = F.leaky_relu(self.t_embed(timestep_embedding(t, self.t_emb_dim)), 0.2)  # (B, t_emb_dim)
        h = self.start_conv(torch.cat([x_t, x_tp1], dim=1))  # (B, 2ngf, S, S)
        for blk in self.blocks:
            h = blk(h, temb)  # (B, C', S/2, S/2)
        h = F.leaky_relu(self.final_conv(minibatch_stddev(h)), 0.2)  # (B, 8ngf, 4, 4)
        return self.end_linear(h.sum(dim=(2, 3)))[:, 0]  # (B,)


class PatchDiscriminator(nn.Module):
    """PatchGAN ``NLayerDiscriminator`` (§2.5): 4x4 convs, LeakyReLU(0.2), InstanceNorm (no affine) after every conv
    but the first and the last; widths ndf * min(2^i, 8); stride 2 for the first ``n_layers`` convs, then two
    stride-1 convs, the last to 1 channel; no sigmoid. (B, C, H, W) -> patch logits (B, 1, h, w);
    at 256 with n_layers 3: (B, 1, 30, 30). Init N(0, 0.02), zero bias."""

    def __init__(self, channels: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=2 if n < n_layers else 1, padding=1),
                       nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
