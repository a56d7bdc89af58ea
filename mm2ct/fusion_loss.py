"""The optional auxiliary fusion loss on Φ(T1, T2): MambaDFuse's medical-image-fusion loss (docs/method.md §3.5).

MM2CT trains Φ end to end through SynDiff's losses and names no fusion loss (open choice 24: default off,
``train.lambda_fusion = 0``). With the fused image F and the sources A = T1, B = T2, all mapped from [-1, 1] to
[0, 1] (MambaDFuse works on [0, 1] images):

    L_fuse = 20 |F - max(A, B)|_1 + 100 |∇F - max(∇A, ∇B)|_1 + 50 (1 - SSIM(A, F) / 2 - SSIM(B, F) / 2)

with ∇ = |Sobel_x| + |Sobel_y| (zero padding, so the map keeps its size) and |.|_1 the mean over pixels.
SSIM: Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, mean over the valid (unpadded)
windows, i.e. scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.

Why it exists (README, deviations): Φ starts as a near-constant image (std 0.002-0.07 on the demo profile, where T1
and T2 have 0.42 and 0.24; ``tools/fusion_init_spread.py``), so the generators that read it start almost
unconditioned; the loss makes Φ an MR-like fused image from the first steps.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

# MambaDFuse models/loss_med.py weights: intensity, gradient, SSIM
W_INTENSITY, W_GRADIENT, W_SSIM = 20.0, 100.0, 50.0
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """|Sobel_x * x| + |Sobel_y * x| with zero padding: (B, 1, H, W) -> (B, 1, H, W)."""
    kx = _SOBEL_X.to(x)[None, None]  # (1, 1, 3, 3)
    gx = F.conv2d(x, kx, padding=1)
    gy = F.conv2d(x, kx.transpose(-1, -2), padding=1)
    return gx.abs() + gy.abs()


def _gaussian_window(x: torch.Tensor) -> torch.Tensor:
    """Normalised separable Gaussian, (1, 1, SSIM_WINDOW, SSIM_WINDOW), dtype/device of ``x``."""
    r = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-r ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Differentiable SSIM of images on [0, 1] (data range 1): (B, 1, H, W) x 2 -> (B,), the mean over valid
    windows. Needs H, W >= 11."""
    if a.shape[-1] < SSIM_WINDOW or a.shape[-2] < SSIM_WINDOW:
        raise ValueError(f"fusion_loss.ssim: images must be at least {SSIM_WINDOW} x {SSIM_WINDOW}, "
                         f"got {tuple(a.shape[-2:])}")
    w = _gaussian_window(a)
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)  # (B, 1, H - 10, W - 10)
    var_a = F.conv2d(a * a, w) - mu_a ** 2
    var_b = F.conv2d(b * b, w) - mu_b ** 2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def fusion_loss(fused: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L_fuse (module docstring) for (B, 1, H, W) images in [-1, 1]. Returns (scalar, logs of the three terms
    before weighting: ``fuse_int``, ``fuse_grad``, ``fuse_ssim`` = 1 - mean SSIM).

    Always computed in float32 with autocast off: SSIM's variances E[x²] − E[x]² cancel catastrophically in
    bfloat16 (under bf16 autocast its gradient would be noise)."""
    with _autocast_off(fused.device):
        return _fusion_loss(fused.float(), t1.float(), t2.float())


def _autocast_off(device: torch.device):
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _fusion_loss(fused: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> tuple[torch.Tensor, dict]:
    f, a, b = (fused + 1) / 2, (t1 + 1) / 2, (t2 + 1) / 2  # [0, 1]
    intensity = F.l1_loss(f, torch.maximum(a, b))
    gradient = F.l1_loss(sobel_gradient(f), torch.maximum(sobel_gradient(a), sobel_gradient(b)))
    structure = 1 - (ssim(a, f) + ssim(b, f)).mean() / 2
    loss = W_INTENSITY * intensity + W_GRADIENT * gradient + W_SSIM * structure
    logs = {"fuse_int": intensity.detach(), "fuse_grad": gradient.detach(), "fuse_ssim": structure.detach()}
    return loss, logs
