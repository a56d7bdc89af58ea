"""Training losses of the translators, in SynDiff's order and terms (docs/method.md §2.6, §8.4, §8.6).

One training step of a SynDiff / MM2CT translator ``tr`` on a batch {"t1", "t2", "ct"} (each (B, 1, H, W) in
[-1, 1]; "a" = MR = ``tr.mr(batch)``, "b" = CT = batch["ct"], unpaired):

    loss, logs = d_step_losses(tr, batch, step, cfg.train)   # backward, then step the optimisers of
                                                            # tr.discriminators() (D_diff_a, D_diff_b, D_nd_a, D_nd_b)
    loss, logs = g_step_losses(tr, batch, cfg.train)         # backward, then step the optimisers of
                                                            # tr.generators() (G_nd_ab, G_nd_ba, G_diff_a, G_diff_b,
                                                            # and fusion for MM2CT); EMA on the same modules

The same two calls train CycleGAN (§8.6: non-diffusive half only, cycle weight ``lambda_cyc_cyclegan``).

Gradient flow: the D losses see the generators' outputs computed under ``torch.no_grad`` (they leave no gradient
on generator parameters, and cost no generator backward); the G loss runs the discriminators with
``requires_grad`` switched off for their parameters, so its backward leaves no gradient on them. Each backward
therefore touches exactly the modules its optimiser updates; zero those modules' gradients before it.

``d_step_losses`` = ``diffusive_d_losses`` (§2.6 step 1) + ``non_diffusive_d_losses`` (step 2). SynDiff steps the
diffusive and non-diffusive discriminators one after the other; the two losses share no parameters and both
read the same (unchanged) generators, so one summed backward gives the same gradients.
Every function returns (scalar loss, logs): logs maps component names to detached scalar tensors.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from mm2ct.fusion_loss import fusion_loss
from mm2ct.translators import SynDiff, Translator

Batch = Mapping[str, torch.Tensor]
Logs = dict[str, torch.Tensor]


@contextlib.contextmanager
def frozen(modules: list[nn.Module]) -> Iterator[None]:
    """Switch ``requires_grad`` off for the parameters of ``modules`` while building a graph (restored after):
    the graph then carries no gradient into them."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _domains(tr: Translator, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_a (B, C_A, H, W) MR, x_b (B, 1, H, W) CT)."""
    return tr.mr(batch), batch["ct"]


def _draw_t(tr: SynDiff, x: torch.Tensor) -> torch.Tensor:
    """t ~ U{0..T-1}: (B,)."""
    return torch.randint(0, tr.schedule.num_timesteps, (x.shape[0],), device=x.device)


def r1_penalty(d_real: torch.Tensor, x_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (§2.6): gamma / 2 * E_batch ||grad_{x_t} D(x_t, t, x_{t+1})||^2, differentiable in D's parameters."""
    (grad,) = torch.autograd.grad(d_real.sum(), x_t, create_graph=True)
    return gamma / 2 * grad.flatten(1).pow(2).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------- discriminator steps
def diffusive_d_losses(tr: SynDiff, batch: Batch, step: int, cfg) -> tuple[torch.Tensor, Logs]:
    """§2.6 step 1, for both domains k in (a, b), t ~ U{0..T-1}, (x_t, x_{t+1}) ~ q:

        softplus(-D_diff_k(x_t, t, x_{t+1})) + [step % lazy_reg == 0] R1_k
        + softplus(D_diff_k(x̃_t, t, x_{t+1})),   x̃_t ~ q(x_t | x_{t+1}, x̂_0^k)

    with x̂_0^a = G_diff_a(cat[x^a_{t+1}, CT'], t, z), CT' = G_nd_ab(condition(x_a)), and
    x̂_0^b = G_diff_b(cat[x^b_{t+1}, condition(MR')], t, z), MR' = G_nd_ba(x_b). Updates D_diff_a, D_diff_b.
    ``cfg``: TrainConfig (r1_gamma, lazy_reg).
    """
    x_a, x_b = _domains(tr, batch)
    lazy = cfg.lazy_reg > 0 and step % cfg.lazy_reg == 0
    with torch.no_grad():
        ct_fake = tr.G_nd_ab(tr.condition(x_a))  # (B, 1, H, W)
        mr_fake_cond = tr.condition(tr.G_nd_ba(x_b))  # (B, condition_channels, H, W)
    domains = (("a", x_a, ct_fake, tr.G_diff_a, tr.D_diff_a), ("b", x_b, mr_fake_cond, tr.G_diff_b, tr.D_diff_b))
    logs: Logs = {}
    total = x_a.new_zeros(())
    for k, x0, source, G, D in domains:
        t = _draw_t(tr, x0)
        x_t, x_tp1 = tr.schedule.q_sample_pairs(x0, t)
        x_t.requires_grad_(lazy)
        d_real = D(x_t, t, x_tp1)  # (B,)
        real = F.softplus(-d_real).mean()
        r1 = r1_penalty(d_real, x_t, cfg.r1_gamma) if lazy else x0.new_zeros(())
        with torch.no_grad():
            x0_pred = G(torch.cat([x_tp1, source], dim=1), t, tr.latent(x0.shape[0]))
            x_pos = tr.schedule.sample_posterior(x0_pred, x_tp1, t)  # (B, C_k, H, W)
        fake = F.softplus(D(x_pos, t, x_tp1)).mean()
        total = total + real + r1 + fake
        logs.update({f"d_diff_{k}_real": real.detach(), f"d_diff_{k}_fake": fake.detach(), f"r1_{k}": r1.detach()})
    logs["d_diff"] = total.detach()
    return total, logs


def non_diffusive_d_losses(tr: Translator, batch: Batch, cfg=None) -> tuple[torch.Tensor, Logs]:
    """§2.6 step 2: softplus(-D_nd_k(x_k)) + softplus(D_nd_k(G_nd_{other->k}(x_other))) for k in (a, b), averaged
    over patches and batch. Updates D_nd_a, D_nd_b. ``cfg`` is unused (uniform signature)."""
    x_a, x_b = _domains(tr, batch)
    with torch.no_grad():
        ct_fake = tr.G_nd_ab(tr.condition(x_a))  # (B, 1, H, W)
        mr_fake = tr.G_nd_ba(x_b)  # (B, C_A, H, W)
    logs: Logs = {}
    total = x_a.new_zeros(())
    for k, real_x, fake_x, D in (("a", x_a, mr_fake, tr.D_nd_a), ("b", x_b, ct_fake, tr.D_nd_b)):
        real = F.softplus(-D(real_x)).mean()
        fake = F.softplus(D(fake_x)).mean()
        total = total + real + fake
        logs.update({f"d_nd_{k}_real": real.detach(), f"d_nd_{k}_fake": fake.detach()})
    logs["d_nd"] = total.detach()
    return total, logs


def d_step_losses(tr: Translator, batch: Batch, step: int, cfg) -> tuple[torch.Tensor, Logs]:
    """All discriminator losses of one step (diffusive + non-diffusive; CycleGAN: non-diffusive only).
    Backward, then step the optimisers of ``tr.discriminators()``."""
    loss, logs = non_diffusive_d_losses(tr, batch, cfg)
    if isinstance(tr, SynDiff):
        diff, diff_logs = diffusive_d_losses(tr, batch, step, cfg)
        loss, logs = diff + loss, {**diff_logs, **logs}
    logs["d_total"] = loss.detach()
    return loss, logs


# ----------------------------------------------------------------------------------------------- generator steps
def syndiff_g_losses(tr: SynDiff, batch: Batch, cfg) -> tuple[torch.Tensor, Logs]:
    """§2.6 step 3 (fresh t, z): L_G = lambda L_cyc + L_adv,diff + L_adv,nd + lambda L_diffL1, lambda = lambda_l1.

        L_adv,diff = sum_k softplus(-D_diff_k(x̃_t^k, t, x^k_{t+1}))
        L_adv,nd   = softplus(-D_nd_a(MR')) + softplus(-D_nd_b(CT'))
        L_diffL1   = |x̂_0^a - x_a|_1 + |x̂_0^b - x_b|_1        (means over pixels; both MR channels for MM2CT)
        L_cyc      = |G_nd_ba(CT') - x_a|_1 + |G_nd_ab(condition(MR')) - x_b|_1

    with CT' = G_nd_ab(condition(x_a)), MR' = G_nd_ba(x_b). Updates ``tr.generators()`` (fusion included).
    MM2CT with ``cfg.lambda_fusion > 0`` adds lambda_fusion * L_fuse(Phi(T1, T2), T1, T2) on the real MR
    (``mm2ct.fusion_loss``, method.md §3.5; logged as ``g_fuse`` and its three terms).
    """
    x_a, x_b = _domains(tr, batch)
    cond = tr.condition(x_a)  # (B, condition_channels, H, W): Phi(T1, T2) for MM2CT
    ct_fake = tr.G_nd_ab(cond)  # (B, 1, H, W)
    mr_fake = tr.G_nd_ba(x_b)  # (B, C_A, H, W)
    mr_fake_cond = tr.condition(mr_fake)  # (B, condition_channels, H, W)
    mr_cycle = tr.G_nd_ba(ct_fake)  # (B, C_A, H, W)
    ct_cycle = tr.G_nd_ab(mr_fake_cond)  # (B, 1, H, W)

    logs: Logs = {}
    adv_diff, l1 = x_a.new_zeros(()), x_a.new_zeros(())
    with frozen(tr.discriminators()):
        for k, x0, source, G, D in (("a", x_a, ct_fake, tr.G_diff_a, tr.D_diff_a),
                                    ("b", x_b, mr_fake_cond, tr.G_diff_b, tr.D_diff_b)):
            t = _draw_t(tr, x0)
            _, x_tp1 = tr.schedule.q_sample_pairs(x0, t)
            x0_pred = G(torch.cat([x_tp1, source], dim=1), t, tr.latent(x0.shape[0]))  # (B, C_k, H, W)
            x_pos = tr.schedule.sample_posterior(x0_pred, x_tp1, t)
            adv_k = F.softplus(-D(x_pos, t, x_tp1)).mean()
            l1_k = F.l1_loss(x0_pred, x0)
            adv_diff, l1 = adv_diff + adv_k, l1 + l1_k
            logs.update({f"g_adv_diff_{k}": adv_k.detach(), f"g_l1_diff_{k}": l1_k.detach()})
        adv_nd_a = F.softplus(-tr.D_nd_a(mr_fake)).mean()
        adv_nd_b = F.softplus(-tr.D_nd_b(ct_fake)).mean()
    adv_nd = adv_nd_a + adv_nd_b
    cyc_a, cyc_b = F.l1_loss(mr_cycle, x_a), F.l1_loss(ct_cycle, x_b)
    cyc = cyc_a + cyc_b
    loss = cfg.lambda_l1 * cyc + adv_diff + adv_nd + cfg.lambda_l1 * l1
    if tr.family == "mm2ct" and cfg.lambda_fusion > 0:  # optional, off in the paper profile (open choice 24)
        fuse, fuse_logs = fusion_loss(cond, x_a[:, 0:1], x_a[:, 1:2])
        loss = loss + cfg.lambda_fusion * fuse
        logs.update({**fuse_logs, "g_fuse": fuse.detach()})
    logs.update({"g_adv_nd_a": adv_nd_a.detach(), "g_adv_nd_b": adv_nd_b.detach(), "g_cyc_a": cyc_a.detach(),
                 "g_cyc_b": cyc_b.detach(), "g_adv_diff": adv_diff.detach(), "g_adv_nd": adv_nd.detach(),
                 "g_l1_diff": l1.detach(), "g_cyc": cyc.detach(), "g_total": loss.detach()})
    return loss, logs


def cyclegan_g_losses(tr: Translator, batch: Batch, cfg) -> tuple[torch.Tensor, Logs]:
    """CycleGAN baseline (§8.6), SynDiff's non-diffusive half alone:
    L_G = L_adv,nd + lambda_cyc_cyclegan * L_cyc (same terms as in ``syndiff_g_losses``). Updates G_nd_ab, G_nd_ba.
    """
    x_a, x_b = _domains(tr, batch)
    ct_fake = tr.G_nd_ab(tr.condition(x_a))  # (B, 1, H, W)
    mr_fake = tr.G_nd_ba(x_b)  # (B, C_A, H, W)
    with frozen(tr.discriminators()):
        adv_nd_a = F.softplus(-tr.D_nd_a(mr_fake)).mean()
        adv_nd_b = F.softplus(-tr.D_nd_b(ct_fake)).mean()
    cyc_a = F.l1_loss(tr.G_nd_ba(ct_fake), x_a)
    cyc_b = F.l1_loss(tr.G_nd_ab(tr.condition(mr_fake)), x_b)
    adv_nd, cyc = adv_nd_a + adv_nd_b, cyc_a + cyc_b
    loss = adv_nd + cfg.lambda_cyc_cyclegan * cyc
    logs = {"g_adv_nd_a": adv_nd_a.detach(), "g_adv_nd_b": adv_nd_b.detach(), "g_cyc_a": cyc_a.detach(),
            "g_cyc_b": cyc_b.detach(), "g_adv_nd": adv_nd.detach(), "g_cyc": cyc.detach(),
            "g_total": loss.detach()}
    return loss, logs


def g_step_losses(tr: Translator, batch: Batch, cfg) -> tuple[torch.Tensor, Logs]:
    """The generator loss of one step for any translator; backward, then step the optimisers of
    ``tr.generators()``. ``cfg``: TrainConfig (lambda_l1, lambda_cyc_cyclegan)."""
    return syndiff_g_losses(tr, batch, cfg) if isinstance(tr, SynDiff) else cyclegan_g_losses(tr, batch, cfg)
