"""SynDiff / CycleGAN losses (docs/method.md §2.6, §8.4, §8.6): terms, R1 laziness, and where gradients go."""
from __future__ import annotations

import pytest
import torch

from mm2ct.losses import d_step_losses, frozen, g_step_losses, r1_penalty
from mm2ct.translators import Translator, build

NAMES = ("cyclegan_t1", "syndiff_t2", "mm2ct")


@pytest.fixture(scope="module")
def models(cfg) -> dict[str, Translator]:
    torch.manual_seed(0)
    return {name: build(name, cfg) for name in NAMES}


@pytest.fixture(scope="module")
def batch(make_images) -> dict[str, torch.Tensor]:
    return make_images(1)


def _grads(modules: list[torch.nn.Module]) -> list[tuple[str, torch.Tensor | None]]:
    return [(f"{type(m).__name__}.{n}", p.grad) for m in modules for n, p in m.named_parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_d_step_reaches_every_discriminator_parameter_and_no_generator(models, batch, cfg, name: str) -> None:
    tr = models[name]
    tr.zero_grad(set_to_none=True)
    loss, logs = d_step_losses(tr, batch, step=0, cfg=cfg.train)  # step 0: an R1 step
    loss.backward()
    missing = [n for n, g in _grads(tr.discriminators()) if g is None or not torch.isfinite(g).all() or not g.any()]
    assert not missing, f"{name}: discriminator parameters without gradient: {missing[:5]}"
    assert all(g is None for _, g in _grads(tr.generators())), "the D loss must not reach the generators"
    assert logs["d_total"].item() == pytest.approx(loss.item())
    tr.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_g_step_reaches_every_generator_parameter_and_no_discriminator(models, batch, cfg, name: str) -> None:
    tr = models[name]
    tr.zero_grad(set_to_none=True)
    loss, _ = g_step_losses(tr, batch, cfg.train)
    loss.backward()
    grads = _grads(tr.generators())
    missing = [n for n, g in grads if g is None or not torch.isfinite(g).all()]
    assert not missing, f"{name}: generator parameters without gradient: {missing[:5]}"
    zero = [n for n, g in grads if not g.any()]
    assert not zero, f"{name}: generator parameters with an all-zero gradient: {zero[:5]}"
    assert all(g is None for _, g in _grads(tr.discriminators())), "the G loss must not reach the discriminators"
    assert all(p.requires_grad for m in tr.discriminators() for p in m.parameters())  # restored after the step
    tr.zero_grad(set_to_none=True)


def test_d_losses_do_not_need_generator_gradients(models, batch, cfg) -> None:
    tr = models["mm2ct"]
    torch.manual_seed(5)
    reference, _ = d_step_losses(tr, batch, 0, cfg.train)
    with frozen(tr.generators()):
        torch.manual_seed(5)
        frozen_loss, _ = d_step_losses(tr, batch, 0, cfg.train)
    assert frozen_loss.item() == pytest.approx(reference.item(), rel=1e-6)


def test_r1_is_zero_off_lazy_steps_and_positive_on_them(models, batch, cfg) -> None:
    tr = models["syndiff_t2"]
    assert cfg.train.lazy_reg == 10
    for step, positive in ((1, False), (9, False), (10, True), (20, True)):
        _, logs = d_step_losses(tr, batch, step, cfg.train)
        for k in ("r1_a", "r1_b"):
            assert (logs[k].item() > 0) == positive, (step, k, logs[k].item())


def test_r1_penalty_formula() -> None:
    """gamma/2 * E||grad_x D||^2 for D(x) = <w, x>: gamma/2 * ||w||^2."""
    w = torch.randn(1, 2, 4, 4)
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    d = (w * x).sum(dim=(1, 2, 3))  # (B,)
    assert r1_penalty(d, x, gamma=1.0).item() == pytest.approx(0.5 * w.pow(2).sum().item(), rel=1e-5)


def test_loss_totals_follow_the_papers_weights(models, batch, cfg) -> None:
    lam = cfg.train.lambda_l1
    _, logs = g_step_losses(models["syndiff_t2"], batch, cfg.train)
    expected = lam * logs["g_cyc"] + logs["g_adv_diff"] + logs["g_adv_nd"] + lam * logs["g_l1_diff"]
    assert logs["g_total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["g_adv_diff"].item() == pytest.approx((logs["g_adv_diff_a"] + logs["g_adv_diff_b"]).item(), rel=1e-6)
    _, logs = g_step_losses(models["cyclegan_t1"], batch, cfg.train)
    expected = logs["g_adv_nd"] + cfg.train.lambda_cyc_cyclegan * logs["g_cyc"]
    assert logs["g_total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "g_adv_diff" not in logs
    _, logs = d_step_losses(models["mm2ct"], batch, 10, cfg.train)
    parts = [logs[f"d_diff_{k}_{s}"] for k in "ab" for s in ("real", "fake")] + [logs["r1_a"], logs["r1_b"]]
    assert logs["d_diff"].item() == pytest.approx(sum(p.item() for p in parts), rel=1e-6)
    assert logs["d_total"].item() == pytest.approx((logs["d_diff"] + logs["d_nd"]).item(), rel=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
