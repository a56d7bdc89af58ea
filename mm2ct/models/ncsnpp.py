"""Diffusive generator G_diff: the NCSN++ UNet with adaptive GroupNorm of SynDiff (docs/method.md §2.3).

    x̂_0 = G(cat[x_{t+1}, source], t, z)

* time: sinusoidal embedding of the integer step t (dim nf) -> Linear(nf, 4nf) -> SiLU -> Linear(4nf, 4nf);
  each res block adds Linear(SiLU(temb)) after its first conv;
* latent z ~ N(0, I_nz) -> mapping network PixelNorm -> Linear(nz, z_emb) -> SiLU -> n_mlp x [Linear, SiLU] ->
  z_emb, which sets gamma/beta of every AdaGN;
* BigGAN-type residual blocks (``ResBlock``), FIR [1,3,3,1] resampling inside the down/up blocks, skip sums
  rescaled by 1/sqrt(2), single-head self-attention at ``attn_resolutions``;
* ``progressive_input = residual``: the raw input is FIR-conv-downsampled level by level and merged into h;
* head GroupNorm -> SiLU -> conv3x3 (init ~0) -> tanh.

Paper sizes (SynDiff, image 256): nf 64, ch_mult (1,1,2,2,4,4) -> widths 64,64,128,128,256,256 at
256,128,64,32,16,8; 2 res blocks per level down, 3 up; attention at 16 and in the middle; z 100 -> 256.
Deviation: ``out_ch`` is the number of channels the domain needs (SynDiff outputs as many channels as it reads and
uses only channel 0; the unused output channel received no gradient).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2ct.models.layers import (FIR_KERNEL, AdaptiveGroupNorm, FIRDownConv, PixelNorm, conv2d, dense,
                                 downsample_2d, fir_kernel, group_count, timestep_embedding, upsample_2d)

SQRT2 = math.sqrt(2.0)


class ResBlock(nn.Module):
    """BigGAN-type residual block with AdaGN (SynDiff ``ResnetBlockBigGANpp_Adagn``, §2.3):

        h = conv3x3(resample(SiLU(AdaGN(x, z)))) + Linear(SiLU(temb))
        h = conv3x3_0(dropout(SiLU(AdaGN(h, z))))
        out = (skip(resample(x)) + h) / sqrt(2),  skip = 1x1 conv when channels change or on resampling

    (B, in_ch, H, W) -> (B, out_ch, H', W') with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, zemb_dim: int, up: bool = False,
                 down: bool = False, dropout: float = 0.0, taps: Sequence[float] = FIR_KERNEL):
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = AdaptiveGroupNorm(in_ch, zemb_dim)
        self.conv0 = conv2d(in_ch, out_ch, 3)
        self.temb_proj = dense(temb_dim, out_ch)
        self.norm1 = AdaptiveGroupNorm(out_ch, zemb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None
        self.register_buffer("kernel", fir_kernel(taps), persistent=False)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.kernel)
        if self.down:
            return downsample_2d(x, self.kernel)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm0(x, zemb))
        h = self.conv0(self._resample(h))  # (B, out_ch, H', W')
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h, zemb))))
        x = self._resample(x)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / SQRT2


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the H*W positions (SynDiff ``AttnBlockpp``, §2.3):
    GroupNorm, 1x1 q/k/v projections, softmax(q k^T / sqrt(C)) v, 1x1 output projection (init ~0),
    (x + h) / sqrt(2). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_count(channels), channels, eps=1e-6)
        self.q, self.k, self.v = (conv2d(channels, channels, 1) for _ in range(3))
        self.out = conv2d(channels, channels, 1, init_scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (proj(h).flatten(2).transpose(1, 2)[:, None] for proj in (self.q, self.k, self.v))  # (B,1,L,C)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, 1, L, C), scale 1/sqrt(C)
        a = a[:, 0].transpose(1, 2).reshape(b, c, hgt, wid)
        return (x + self.out(a)) / SQRT2


class NCSNpp(nn.Module):
    """G_diff (§2.3): (x (B, in_ch, S, S), t (B,) int in [0, T), z (B, nz)) -> (B, out_ch, S, S) in [-1, 1].

    ``in_ch`` counts x_{t+1} and the source stacked as channels (SynDiff: 2; MM2CT's MR domain: 2 + 1, §8.4).
    The layout depends on ``image_size`` (attention levels), so inputs must be S x S with S = image_size.
    """

    def __init__(self, in_ch: int, out_ch: int, image_size: int, nf: int = 64,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), nz: int = 100, z_emb_dim: int = 256, n_mlp: int = 3,
                 dropout: float = 0.0, taps: Sequence[float] = FIR_KERNEL):
        super().__init__()
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"ncsnpp: image_size {image_size} is not divisible by 2^{len(ch_mult) - 1} "
                             f"(len(ch_mult) = {len(ch_mult)} levels)")
        self.in_ch, self.out_ch, self.image_size, self.nf, self.nz = in_ch, out_ch, image_size, nf, nz
        n_levels = len(ch_mult)
        self.resolutions = [image_size // 2 ** i for i in range(n_levels)]
        self.attn_levels = [r in attn_resolutions for r in self.resolutions]
        temb_dim = 4 * nf

        self.time_embed = nn.Sequential(dense(nf, temb_dim), nn.SiLU(), dense(temb_dim, temb_dim))
        mapping: list[nn.Module] = [PixelNorm(), dense(nz, z_emb_dim), nn.SiLU()]
        for _ in range(n_mlp):
            mapping += [dense(z_emb_dim, z_emb_dim), nn.SiLU()]
        self.z_transform = nn.Sequential(*mapping)

        def block(cin: int, cout: int, **kw) -> ResBlock:
            return ResBlock(cin, cout, temb_dim, z_emb_dim, dropout=dropout, taps=taps, **kw)

        # Down path: per level num_res_blocks blocks (+ attention), then a down block and the input pyramid.
        self.input_conv = conv2d(in_ch, nf, 3)
        skips = [nf]  # channels of every stored skip tensor
        ch, pyramid_ch = nf, in_ch
        self.down_blocks, self.down_attn = nn.ModuleList(), nn.ModuleList()
        self.downsample, self.pyramid_down = nn.ModuleList(), nn.ModuleList()
        for level, mult in enumerate(ch_mult):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(block(ch, nf * mult))
                ch = nf * mult
                if self.attn_levels[level]:
                    attns.append(AttnBlock(ch))
                skips.append(ch)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if level != n_levels - 1:
                self.downsample.append(block(ch, ch, down=True))
                self.pyramid_down.append(FIRDownConv(pyramid_ch, ch, taps))
                pyramid_ch = ch
                skips.append(ch)

        self.mid_block0 = block(ch, ch)
        self.mid_attn = AttnBlock(ch)
        self.mid_block1 = block(ch, ch)

        # Up path (built coarse to fine, stored per level): num_res_blocks + 1 blocks eating the skips,
        # attention once per level, then an up block.
        up_blocks: list[nn.ModuleList] = [nn.ModuleList() for _ in ch_mult]
        up_attn: list[nn.Module] = [nn.Identity() for _ in ch_mult]
        upsample: list[nn.Module] = [nn.Identity() for _ in ch_mult[1:]]
        for level in reversed(range(n_levels)):
            for _ in range(num_res_blocks + 1):
                up_blocks[level].append(block(ch + skips.pop(), nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if self.attn_levels[level]:
                up_attn[level] = AttnBlock(ch)
            if level != 0:
                upsample[level - 1] = block(ch, ch, up=True)
        assert not skips
        self.up_blocks, self.up_attn, self.upsample = (nn.ModuleList(m) for m in (up_blocks, up_attn, upsample))

        self.out_norm = nn.GroupNorm(group_count(ch), ch, eps=1e-6)
        self.out_conv = conv2d(ch, out_ch, 3, init_scale=0.0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_ch, self.image_size, self.image_size):
            raise ValueError(f"ncsnpp: expected input (B, {self.in_ch}, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        temb = self.time_embed(timestep_embedding(t, self.nf))  # (B, 4nf)
        zemb = self.z_transform(z)  # (B, z_emb_dim)

        pyramid = x  # (B, in_ch, S, S)
        hs = [self.input_conv(x)]  # [(B, nf, S, S)]
        for level, blocks in enumerate(self.down_blocks):
            for i, blk in enumerate(blocks):
                h = blk(hs[-1], temb, zemb)
                if self.attn_levels[level]:
                    h = self.down_attn[level][i](h)
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](hs[-1], temb, zemb)  # (B, C, S/2^(l+1), ...)
                pyramid = (self.pyramid_down[level](pyramid) + h) / SQRT2
                hs.append(pyramid)

        h = self.mid_block1(self.mid_attn(self.mid_block0(hs[-1], temb, zemb)), temb, zemb)

        for level in reversed(range(len(self.up_blocks))):
            for blk in self.up_blocks[level]:
                h = blk(torch.cat([h, hs.pop()], dim=1), temb, zemb)
            h = self.up_attn[level](h)
            if level != 0:
                h = self.upsample[level - 1](h, temb, zemb)  # (B, C, 2x, 2x)

        h = self.out_conv(F.silu(self.out_norm(h)))  # (B, out_ch, S, S)
        return torch.tanh(h)

    @classmethod
    def from_config(cls, cfg, in_ch: int, out_ch: int, image_size: int) -> "NCSNpp":
        """Build from a ``TranslatorConfig`` (nf, ch_mult, num_res_blocks, attn_resolutions, nz, z_emb_dim, n_mlp)."""
        return cls(in_ch, out_ch, image_size, nf=cfg.nf, ch_mult=cfg.ch_mult, num_res_blocks=cfg.num_res_blocks,
                   attn_resolutions=cfg.attn_resolutions, nz=cfg.nz, z_emb_dim=cfg.z_emb_dim, n_mlp=cfg.n_mlp)
