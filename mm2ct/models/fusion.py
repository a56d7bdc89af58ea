"""The MM2CT fusion module Φ(T1, T2) -> fused image (paper §3.2, Fig. 1-3; docs/method.md §3.2, §8.2-8.3).

Pipeline (C = cfg.embed_dim; maps (B, C, H, W), tokens (B, L = H*W, C) in raster order, §6.3):

    1. stem (shared by both modalities): conv3x3(1 -> C/2), LReLU(0.2), conv3x3(C/2 -> C), LReLU(0.2)
    2. tokens + shared LayerNorm (MambaDFuse's patch-embed norm); n_extract Mamba blocks per modality (§3.1)
    3. shallow fusion: n_swap channel-swapping Mamba blocks (§3.3), continuing the residual streams; streams
       closed and mapped back; X1 = conv3x3(cat[X1, X2]) + X1, then X2 = conv3x3(cat[X2, X1]) + X2 (the updated
       X1); F0 = (X1 + X2) / 2
    4. deep fusion: tokens (shared LayerNorm) of X1, X2, F0; n_m3 M3 blocks (§3.4) update F; closed -> F_M3
    5. final fusion (Fig. 3, §8.3): (F1, F2) = DFEM(F_M3, X1, X2) with DE on (cfg.de), (X1, X2) with DE off;
       F_out = F_M3 + Y + ECA(Y), Y = M3(F_M3; LN(F1), LN(F2))
    6. reconstruction: tokens (shared LayerNorm), n_recon Mamba blocks, closed; conv3x3 C -> C/2 -> C/4 -> 1
       (LReLU between), tanh (open choice 8), so the output lives in [-1, 1] like SynDiff's source channel.

"Closed" is ``close_stream``: h alone (MambaDFuse's code, the default) or h + r with ``cfg.close_residual``.

Ablations (Table 2): ``cfg.de = False`` keeps every block and feeds X1, X2 to the final block instead of F1, F2, so
it removes exactly the two LDCs (the difference-aware attention has no parameters). ``cfg.mamba = False`` is this
project's conv-only fusion (an extra row beside the paper's three): F0 = (stem(T1) + stem(T2)) / 2 with the same
shared stem, then the same output convs and tanh, and no SSM parameter anywhere; it has no DE, because the final
block is a Mamba block.

Choices that differ from the sources (the README's deviations list): tanh on the output (MambaDFuse has no output
activation; its images are in [0, 1]); DE sits once, after the M3 stack, inside a CMFM-style final block built from
MM2CT's own M3 block (Fig. 3 is not in the text we have; open choice 12).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mm2ct.config import FusionConfig
from mm2ct.models.channel_swap import TokenSwapMamba
from mm2ct.models.cross_modal import M3Block
from mm2ct.models.enhance import DFEM, FinalFusion, difference_attention
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
        if cfg.de and not cfg.mamba:
            raise ValueError("fusion.FusionModule: de=True needs mamba=True (the final fusion block that reads the "
                             "enhanced maps is an M3 Mamba block); the conv-only fusion has no DE")
        self.cfg = cfg
        lrelu = nn.LeakyReLU(0.2)
        self.stem = nn.Sequential(nn.Conv2d(1, c // 2, 3, padding=1), lrelu, nn.Conv2d(c // 2, c, 3, padding=1), lrelu)
        if cfg.mamba:
            mixer = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand, "backend": backend}
            m3_mixer = {**mixer, "aux_dt_init": cfg.aux_dt_init}
            self.embed_norm = nn.LayerNorm(c)
            self.extract1 = MambaStack(c, cfg.n_extract, cfg.checkpoint, **mixer)
            self.extract2 = MambaStack(c, cfg.n_extract, cfg.checkpoint, **mixer)
            self.swap = nn.ModuleList(TokenSwapMamba(c, **mixer) for _ in range(cfg.n_swap))
            self.cross = CrossConvFusion(c)
            self.m3 = nn.ModuleList(M3Block(c, **m3_mixer) for _ in range(cfg.n_m3))
            if cfg.de:
                self.de = DFEM(c)
            self.final = FinalFusion(c, **m3_mixer)
            self.recon = MambaStack(c, cfg.n_recon, cfg.checkpoint, **mixer)
        self.head = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1), lrelu,
                                  nn.Conv2d(c // 2, c // 4, 3, padding=1), lrelu,
                                  nn.Conv2d(c // 4, 1, 3, padding=1))

    def forward(self, t1: torch.Tensor, t2: torch.Tensor,
                attention: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Φ(T1, T2). ``attention`` = (w12, w21) replaces the difference-aware attention weights (DE on only)."""
        return self._run(t1, t2, None, attention)

    @torch.no_grad()
    def features(self, t1: torch.Tensor, t2: torch.Tensor,
                 attention: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Intermediate maps: stem_t{1,2}, extract_t{1,2}, swap_t{1,2}, cross_t{1,2}, fused0, m3, w12, w21, f1, f2,
        final, recon, output (those the configuration has). Maps are (B, C, H, W); w12, w21 (B, C, 1, 1)."""
        feats: dict[str, torch.Tensor] = {}
        self._run(t1, t2, feats, attention)
        return feats

    def _run(self, t1: torch.Tensor, t2: torch.Tensor, feats: dict | None, attention) -> torch.Tensor:
        if attention is not None and not self.cfg.de:
            raise ValueError("fusion.FusionModule: attention weights given, but this module has no DE (cfg.de)")
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
            record("extract_t1", sequence_to_map(close_stream(s1, r1, self.cfg.close_residual), h, w))
            record("extract_t2", sequence_to_map(close_stream(s2, r2, self.cfg.close_residual), h, w))
            for block in self.swap:
                s1, s2, r1, r2 = run_block(block, s1, s2, r1, r2, checkpoint=self.cfg.checkpoint)
            x1 = sequence_to_map(close_stream(s1, r1, self.cfg.close_residual), h, w)  # (B, C, H, W)
            x2 = sequence_to_map(close_stream(s2, r2, self.cfg.close_residual), h, w)
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
            f = sequence_to_map(close_stream(g, rg, self.cfg.close_residual), h, w)  # F_M3: (B, C, H, W)
            record("m3", f)
            f1, f2 = x1, x2  # DE off: the final block reads the modality maps themselves
            if self.cfg.de:
                weights = difference_attention(x1, x2) if attention is None else attention  # (B, C, 1, 1) each
                record("w12", weights[0])
                record("w21", weights[1])
                f1, f2 = self.de(f, x1, x2, weights)
                record("f1", f1)
                record("f2", f2)
            f = run_block(self.final, f, f1, f2, checkpoint=self.cfg.checkpoint)  # F_out: (B, C, H, W)
            record("final", f)
            g, rg = self.recon(self.embed_norm(map_to_sequence(f)))
            f = sequence_to_map(close_stream(g, rg, self.cfg.close_residual), h, w)
            record("recon", f)
        else:
            f = (x1 + x2) / 2  # Φ_0
            record("fused0", f)
        out = torch.tanh(self.head(f))  # (B, 1, H, W)
        record("output", out)
        return out


def parameter_table(module: nn.Module) -> dict[str, int]:
    """Trainable parameter counts per top-level component of ``module`` (in definition order), plus "total"."""
    table = {name: sum(p.numel() for p in child.parameters() if p.requires_grad)
             for name, child in module.named_children()}
    table["total"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return table
