"""The optional auxiliary fusion loss (docs/method.md §3.5, open choice 24): its terms against scikit-image and
hand values, and how it enters MM2CT's generator loss (only with train.lambda_fusion > 0, only into Φ)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from skimage.metrics import structural_similarity

from mm2ct.fusion_loss import W_GRADIENT, W_INTENSITY, W_SSIM, fusion_loss, sobel_gradient, ssim
from mm2ct.losses import g_step_losses
from mm2ct.translators import build


def test_ssim_matches_scikit_image_gaussian_ssim() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 24, 20, generator=g, dtype=torch.float64)
    b = (0.6 * a + 0.4 * torch.rand(3, 1, 24, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        ref = structural_similarity(a[i, 0].numpy(), b[i, 0].numpy(), data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, K1=0.01, K2=0.03)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))


def test_sobel_gradient_of_a_step_edge() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0  # vertical edge between columns 3 and 4
    grad = sobel_gradient(x)
    # interior rows: |Sobel_x| = 1 + 2 + 1 = 4 on both columns beside the edge, 0 elsewhere; |Sobel_y| = 0
    assert torch.equal(grad[0, 0, 3], torch.tensor([0, 0, 0, 4, 4, 0, 0, 4.0]))  # last: the zero padding's edge
    assert torch.equal(sobel_gradient(torch.zeros(1, 1, 5, 5)), torch.zeros(1, 1, 5, 5))


def test_fusion_loss_terms_and_weights() -> None:
    g = torch.Generator().manual_seed(1)
    t1, t2 = (torch.rand(2, 1, 16, 16, generator=g) * 2 - 1 for _ in range(2))
    best = torch.maximum(t1, t2)
    loss, logs = fusion_loss(best, t1, t2)
    assert logs["fuse_int"].item() == 0.0  # the intensity target is max(T1, T2)
    expected = (W_INTENSITY * logs["fuse_int"] + W_GRADIENT * logs["fuse_grad"] + W_SSIM * logs["fuse_ssim"])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # on [0, 1]: a fused image 0.1 above the target everywhere costs 20 * 0.1 in intensity (gradient unchanged
    # away from the border)
    _, shifted = fusion_loss((best + 0.2).clamp(max=1.0), t1, t2)
    gap = (((best + 0.2).clamp(max=1.0) - best) / 2).mean()
    assert shifted["fuse_int"].item() == pytest.approx(gap.item(), rel=1e-5)
    # a constant fused image scores worse than the sources' maximum on every term
    _, flat = fusion_loss(torch.zeros_like(t1), t1, t2)
    assert all(flat[k] > logs[k] for k in logs)


@pytest.fixture(scope="module")
def mm2ct(cfg):
    torch.manual_seed(0)
    return build("mm2ct", cfg)


def test_lambda_fusion_adds_the_loss_to_mm2ct_only(mm2ct, cfg, make_images) -> None:
    batch = make_images(3)
    assert cfg.train.lambda_fusion == 0.0  # the paper names no fusion loss
    torch.manual_seed(5)
    off, logs_off = g_step_losses(mm2ct, batch, cfg.train)
    assert "g_fuse" not in logs_off
    tc = dataclasses.replace(cfg.train, lambda_fusion=0.25)
    torch.manual_seed(5)
    on, logs_on = g_step_losses(mm2ct, batch, tc)
    phi = mm2ct.condition(torch.cat([batch["t1"], batch["t2"]], dim=1))
    expected, _ = fusion_loss(phi, batch["t1"], batch["t2"])
    assert logs_on["g_fuse"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert on.item() == pytest.approx(off.item() + 0.25 * expected.item(), rel=1e-5)
    torch.manual_seed(5)
    _, logs = g_step_losses(build("syndiff_t2", cfg), batch, tc)
    assert "g_fuse" not in logs  # no Φ, no fusion loss


def test_fusion_loss_trains_only_the_fusion_module(mm2ct, make_images) -> None:
    batch = make_images(4)
    mm2ct.zero_grad(set_to_none=True)
    loss, _ = fusion_loss(mm2ct.condition(torch.cat([batch["t1"], batch["t2"]], dim=1)), batch["t1"], batch["t2"])
    loss.backward()
    grads = {n: p.grad for n, p in mm2ct.named_parameters()}
    assert all(g is None for n, g in grads.items() if not n.startswith("fusion."))
    silent = [n for n, g in grads.items() if n.startswith("fusion.") and (g is None or not g.any())]
    assert not silent, f"fusion parameters the loss does not reach: {silent[:5]}"
    mm2ct.zero_grad(set_to_none=True)
