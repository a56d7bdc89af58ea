"""The T = 4 adversarial-diffusion schedule of SynDiff (docs/method.md §2.2, §2.8), separate from the networks.

Levels t_k = k/T (1 - eps) + eps, k = 0..T, of the variance-preserving SDE with beta(s) = beta_min + s (beta_max -
beta_min); sigma^2(t) = 1 - exp(-t^2 (beta_max - beta_min) / 2 - t beta_min); alpha_bar_k = 1 - sigma^2(t_k);
beta_k = 1 - alpha_bar_k / alpha_bar_{k-1} (k = 1..T), beta_0 = 1e-8.

* Forward pairs (§2.2), t ~ U{0..T-1}:
      x_t     = sqrt(prod_{j<=t} (1 - beta_j)) x_0 + sqrt(1 - prod_{j<=t} (1 - beta_j)) eps
      x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps'
  (the product starts at beta_0 = 1e-8, so x_0 carries 1e-4 noise, as in SynDiff).
* Posterior q(x_t | x_{t+1}, x̂_0), t = 0..T-1, built from beta_1..T with a'_t = prod_{j=1..t} (1 - beta_j):
      mean = c1_t x̂_0 + c2_t x_{t+1},  c1_t = beta_{t+1} sqrt(a'_t) / (1 - a'_{t+1}),
      c2_t = (1 - a'_t) sqrt(1 - beta_{t+1}) / (1 - a'_{t+1}),  var_t = beta_{t+1} (1 - a'_t) / (1 - a'_{t+1}),
  sampled as mean + exp(log(max(var, 1e-20)) / 2) z, without noise at t = 0.
* ``DiffusionSchedule.sample`` is the T-step reverse sampler of §2.8. The networks take the *integer* t (0..T-1)
  although their input is x_{t+1}.

Coefficients are computed in float64 and stored as float32 buffers (non-persistent: not in state_dicts).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn

EPS_SMALL = 1e-3  # lowest level of the VP grid
BETA_0 = 1e-8     # prepended beta (SynDiff)

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]   # G(cat[x_{t+1}, source], t, z)
LatentFn = Callable[[int, "torch.Generator | None"], torch.Tensor]               # z_fn(batch, generator) -> (B, nz)


def vp_alpha_bars(num_timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """alpha_bar at the T + 1 levels of the VP grid (§2.2): (T + 1,) float64."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps * (1.0 - EPS_SMALL) + EPS_SMALL
    var = 1.0 - torch.exp(-0.5 * t ** 2 * (beta_max - beta_min) - t * beta_min)
    return 1.0 - var


def _extract(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """coef[t] shaped for broadcasting over images: t (B,) -> (B, 1, 1, 1)."""
    return coef[t][:, None, None, None]


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class DiffusionSchedule(nn.Module):
    """Forward pairs, posterior coefficients and sampling for the T-step schedule (§2.2, §2.8).

    Buffers (float32): ``alpha_bars`` (T+1,) VP levels; ``betas`` (T+1,) with beta_0 = 1e-8;
    ``sqrt_alphas_cumprod`` / ``sqrt_one_minus_alphas_cumprod`` (T+1,) of prod_{j<=k}(1 - beta_j) (forward);
    ``posterior_mean_coef1`` (c1), ``posterior_mean_coef2`` (c2), ``posterior_variance`` (var),
    ``posterior_log_variance_clipped`` (T,), indexed by t = 0..T-1.
    """

    def __init__(self, num_timesteps: int = 4, beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__()
        self.num_timesteps = num_timesteps
        alpha_bars = vp_alpha_bars(num_timesteps, beta_min, beta_max)  # (T+1,)
        betas = torch.cat([torch.tensor([BETA_0], dtype=torch.float64), 1.0 - alpha_bars[1:] / alpha_bars[:-1]])
        cumprod = torch.cumprod(1.0 - betas, 0)  # (T+1,), forward process
        b = betas[1:]  # (T,) posterior uses beta_1..T
        a_cum = torch.cumprod(1.0 - b, 0)  # a'_{t+1}, t = 0..T-1
        a_cum_prev = torch.cat([torch.ones(1, dtype=torch.float64), a_cum[:-1]])  # a'_t
        var = b * (1.0 - a_cum_prev) / (1.0 - a_cum)
        buffers = {
            "alpha_bars": alpha_bars,
            "betas": betas,
            "sqrt_alphas_cumprod": cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - cumprod).sqrt(),
            "posterior_mean_coef1": b * a_cum_prev.sqrt() / (1.0 - a_cum),
            "posterior_mean_coef2": (1.0 - a_cum_prev) * (1.0 - b).sqrt() / (1.0 - a_cum),
            "posterior_variance": var,
            "posterior_log_variance_clipped": var.clamp(min=1e-20).log(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    # ------------------------------------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for t (B,) in [0, T]: (B, C, H, W) -> (B, C, H, W)."""
        return (_extract(self.sqrt_alphas_cumprod, t) * x0
                + _extract(self.sqrt_one_minus_alphas_cumprod, t) * _randn(x0, generator))

    def q_sample_pairs(self, x0: torch.Tensor, t: torch.Tensor,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, x_{t+1}) for t (B,) in [0, T-1] (§2.2): each (B, C, H, W)."""
        x_t = self.q_sample(x0, t, generator)
        beta = _extract(self.betas, t + 1)
        x_tp1 = (1.0 - beta).sqrt() * x_t + beta.sqrt() * _randn(x0, generator)
        return x_t, x_tp1

    # ------------------------------------------------------------------------------------------- posterior
    def posterior(self, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (B, C, H, W) and variance (B, 1, 1, 1) of q(x_t | x_{t+1}, x̂_0), t (B,) in [0, T-1]."""
        mean = _extract(self.posterior_mean_coef1, t) * x0 + _extract(self.posterior_mean_coef2, t) * x_tp1
        return mean, _extract(self.posterior_variance, t)

    def sample_posterior(self, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x_{t+1}, x̂_0); no noise where t == 0 (§2.2). Differentiable in x̂_0: (B, C, H, W)."""
        mean, _ = self.posterior(x0, x_tp1, t)
        std = torch.exp(0.5 * _extract(self.posterior_log_variance_clipped, t))
        nonzero = (t != 0).to(mean.dtype)[:, None, None, None]
        return mean + nonzero * std * _randn(x_tp1, generator)

    # ------------------------------------------------------------------------------------------- reverse sampler
    @torch.no_grad()
    def sample(self, G: Denoiser, source: torch.Tensor, z_fn: LatentFn, generator: torch.Generator | None = None,
               channels: int = 1) -> torch.Tensor:
        """The T-step reverse sampler (§2.8): x_T ~ N(0, I); for t = T-1 .. 0: x̂_0 = G(cat[x_{t+1}, source], t,
        z_fn(B, generator)), x_t ~ q(x_t | x_{t+1}, x̂_0). Returns x_0 = x̂_0 of the last step, (B, channels, H, W).

        ``source`` (B, C_s, H, W) is the conditioning image; all noise (x_T, z, posterior) comes from ``generator``
        (the global RNG if None), so a seeded generator gives identical samples.
        """
        b, _, h, w = source.shape
        x = torch.randn((b, channels, h, w), generator=generator, device=source.device, dtype=source.dtype)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((b,), i, dtype=torch.long, device=source.device)
            x0 = G(torch.cat([x, source], dim=1), t, z_fn(b, generator))[:, :channels]  # (B, channels, H, W)
            x = self.sample_posterior(x0, x, t, generator)
        return x


@functools.lru_cache(maxsize=8)
def _schedule(n_steps: int, beta_min: float, beta_max: float) -> DiffusionSchedule:
    return DiffusionSchedule(n_steps, beta_min, beta_max)


def sample(G: Denoiser, source: torch.Tensor, n_steps: int, z_fn: LatentFn, generator: torch.Generator | None = None,
           channels: int = 1, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """Functional form of ``DiffusionSchedule(n_steps, beta_min, beta_max).sample(...)`` (§2.8)."""
    return _schedule(n_steps, beta_min, beta_max).to(source.device).sample(G, source, z_fn, generator, channels)
