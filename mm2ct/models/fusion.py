"""The MM2CT fusion module Φ(T1, T2) -> fused image (paper §3.2, Fig. 1-3; docs/method.md §3.2, §8.2-8.3).

Pipeline (C = cfg.embed_dim; maps (B, C, H, W), tokens (B, L = H*W, C) in raster order, §6.3):

    1. stem (shared by both modalities): conv3x3(1 -> C/2), LReLU(0.2), conv3x3(C/2 -> C), LReLU(0.2)
    2. tokens + shared LayerNorm (MambaDFuse's patch-embed norm); n_extract Mamba blocks per modality (§3.1)
    3. shallow fusion: n_swap channel-swapping Mamba blocks (§3.3), continuing the residual streams; streams
       closed (h + r) and mapped back; X1 = conv3x3(cat[X1, X2]) + X1, then X2 = conv3x3(cat[X2, X1]) + X2
       (the updated X1); F0 = (X1 + X2) / 2
    4. deep fusion: tokens (shared LayerNorm) of X1, X2, F0; n_m3 M3 blocks (§3.4) update F; closed -> F_M3
    5. dynamic enhancement (cfg.de, §8.3): F_out = F_M3 + (F1 + F2)/2 with F_k from LDC and the
       difference-aware attention on (X1, X2, F_M3); without DE, F_out = F_M3
    6. reconstruction: tokens (shared LayerNorm), n_recon Mamba blocks, closed; conv3x3 C -> C/2 -> C/4 -> 1
       (LReLU between), tanh (open choice 8), so the output lives in [-1, 1] like SynDiff's source channel.

Ablation ``cfg.mamba = False`` (Table 2 row 1, "Mamba ✗"; §8.3 Φ_0) removes steps 2-4 and 6's Mamba blocks, and with
them every SSM parameter: F0 = (stem(T1) + stem(T2)) / 2 with the same shared stem, then (if cfg.de) DE with
X_k = stem(T_k) and F = F0, then the same reconstruction convs and tanh. No cross convs, no LayerNorms.

Choices that differ from the sources (the README's deviations list):
- every residual stack is closed with h + r (MambaDFuse drops the last residual; open choice 11);
- tanh on the output (MambaDFuse has no output activation; its images are in [0, 1]);
- the auxiliary M3 streams get mamba-ssm's Δ initialisation (MambaDFuse leaves dt_proj_b/_c at Linear defaults);
- DE sits once, after the M3 stack, with the §8.3 final fusion (Fig. 3 is not recoverable; open choice 12).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mm2ct.config import FusionConfig
from mm2ct.models.channel_swap import TokenSwapMamba
from mm2ct.models.cross_modal import M3Block
from mm2ct.models.enhance import DynamicEnhancement, difference_attention
from mm2ct.models.mamba import MambaStack, close_stream, map_to_sequence, run_block, sequence_to_map


class CrossConvFusion(nn.Module):
    """Step 3's map-level exchange: X1 = conv(cat[X1, X2]) + X1; X2 = conv(cat[X2, X1_new]) + X2; (B, C, H, W)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2 * dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(2 * dim, dim, 3, padding=1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        x1 = self.conv1(torch.cat([x1, x2], dim=1)) + x1
        x2 = self.conv2(torch.cat([x2, x1], dim=1)) + x2
        return x1, x2


class FusionModule(nn.Module):
    """Φ(T1, T2): two (B, 1, H, W) slices in [-1, 1] -> one (B, 1, H, W) fused image in [-1, 1].

    ``backend`` picks the selective scan of every Mamba mixer (``mm2ct.ops.selective_scan``; None = "auto").
    ``cfg.checkpoint`` recomputes every Mamba / channel-swap / M3 block in backward instead of storing its
    activations (same results; needed for 256 x 256 training within CPU memory, see benchmarks/fusion_memory.py).
    ``features(t1, t2)`` returns the intermediate maps (detached) for inspection.
    """

    def __init__(self, cfg: FusionConfig | None = None, backend: str | None = None):
        super().__init__()
        cfg = cfg or FusionConfig()
        c = cfg.embed_dim
        if c < 4:
            raise ValueError(f"fusion.FusionModule: embed_dim must be >= 4 (widths C/2, C/4), got {c}")
        self.cfg = cfg
        lrelu = nn.LeakyReLU(0.2)
        self.stem = nn.Sequential(nn.Conv2d(1, c // 2, 3, padding=1), lrelu, nn.Conv2d(c // 2, c, 3, padding=1), lrelu)
        if cfg.mamba:
            mixer = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand, "backend": backend}
            self.embed_norm = nn.LayerNorm(c)
            self.extract1 = MambaStack(c, cfg.n_extract, cfg.checkpoint, **mixer)
            self.extract2 = MambaStack(c, cfg.n_extract, cfg.checkpoint, **mixer)
            self.swap = nn.ModuleList(TokenSwapMamba(c, **mixer) for _ in range(cfg.n_swap))
            self.cross = CrossConvFusion(c)
            self.m3 = nn.ModuleList(M3Block(c, **mixer) for _ in range(cfg.n_m3))
        if cfg.de:
            self.de = DynamicEnhancement(c)
        if cfg.mamba:
            self.recon = MambaStack(c, cfg.n_recon, cfg.checkpoint, **mixer)
        self.head = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1), lrelu,
                                  nn.Conv2d(c // 2, c // 4, 3, padding=1), lrelu,
                                  nn.Conv2d(c // 4, 1, 3, padding=1))

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        return self._run(t1, t2, None)

    @torch.no_grad()
    def features(self, t1: torch.Tensor, t2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate maps: stem_t{1,2}, extract_t{1,2}, swap_t{1,2}, cross_t{1,2}, fused0, m3, w12, w21, de,
        recon, output (those the configuration has). Maps are (B, C, H, W); w12, w21 (B, C, 1, 1)."""
        feats: dict[str, torch.Tensor] = {}
        self._run(t1, t2, feats)
        return feats

    def _run(self, t1: torch.Tensor, t2: torch.Tensor, feats: dict | None) -> torch.Tensor:
        if t1.dim() != 4 or t1.shape[1] != 1 or t1.shape != t2.shape:
            raise ValueError(f"fusion.FusionModule: expects T1 and T2 of one shape (B, 1, H, W), got "
                             f"{tuple(t1.shape)} and {tuple(t2.shape)}")
        h, w = t1.shape[-2:]

        def record(name, value):
            if feats is not None:
                feats[name] = value.detach()

        x1, x2 = self.stem(t1), self.stem(t2)  # (B, C, H, W)
        record("stem_t1", x1)
        record("stem_t2", x2)
        if self.cfg.mamba:
            s1, r1 = self.extract1(self.embed_norm(map_to_sequence(x1)))  # (B, L, C)
            s2, r2 = self.extract2(self.embed_norm(map_to_sequence(x2)))
            record("extract_t1", sequence_to_map(close_stream(s1, r1), h, w))
            record("extract_t2", sequence_to_map(close_stream(s2, r2), h, w))
            for block in self.swap:
                s1, s2, r1, r2 = run_block(block, s1, s2, r1, r2, checkpoint=self.cfg.checkpoint)
            x1 = sequence_to_map(close_stream(s1, r1), h, w)  # (B, C, H, W)
            x2 = sequence_to_map(close_stream(s2, r2), h, w)
            record("swap_t1", x1)
            record("swap_t2", x2)
            x1, x2 = self.cross(x1, x2)
            record("cross_t1", x1)
            record("cross_t2", x2)
            f = (x1 + x2) / 2
            record("fused0", f)
            q1, q2 = self.embed_norm(map_to_sequence(x1)), self.embed_norm(map_to_sequence(x2))  # (B, L, C)
            g, rg = self.embed_norm(map_to_sequence(f)), None
            for block in self.m3:
                g, rg = run_block(block, q1, q2, g, rg, h, w, checkpoint=self.cfg.checkpoint)
            f = sequence_to_map(close_stream(g, rg), h, w)  # F_M3: (B, C, H, W)
            record("m3", f)
        else:
            f = (x1 + x2) / 2  # Φ_0
            record("fused0", f)
        if self.cfg.de:
            if feats is not None:
                w12, w21 = difference_attention(x1, x2)
                record("w12", w12)
                record("w21", w21)
            f = self.de(x1, x2, f)
            record("de", f)
        if self.cfg.mamba:
            g, rg = self.recon(self.embed_norm(map_to_sequence(f)))
            f = sequence_to_map(close_stream(g, rg), h, w)
            record("recon", f)
        out = torch.tanh(self.head(f))  # (B, 1, H, W)
        record("output", out)
        return out


def parameter_table(module: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per top-level component of ``module`` (in definition order), plus "total"."""
    table = {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
             for name, child in module.named_children()}
    table["total"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return table
