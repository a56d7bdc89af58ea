"""The T = 4 schedule, forward pairs, posterior and reverse sampler against docs/method.md §2.2 and §2.8."""
from __future__ import annotations

import pytest
import torch

from mm2ct.diffusion import DiffusionSchedule, sample, vp_alpha_bars


@pytest.fixture(scope="module")
def sched() -> DiffusionSchedule:
    return DiffusionSchedule(4, 0.1, 20.0)


def _close(actual: torch.Tensor, expected: list[float], atol: float) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def test_schedule_matches_method_md_numbers(sched: DiffusionSchedule) -> None:
    # §2.2 "Numbers [derived]", to the digits printed there
    _close(sched.alpha_bars, [0.99989, 0.52169, 0.078667, 0.0034285, 4.3186e-5], atol=6e-6)
    _close(sched.betas[1:], [0.47826, 0.84921, 0.95642, 0.98740], atol=6e-6)
    assert sched.betas[0].item() == pytest.approx(1e-8)
    _close(sched.sqrt_alphas_cumprod, [1.0000, 0.7223, 0.2805, 0.0586, 0.0066], atol=6e-5)
    _close(sched.sqrt_one_minus_alphas_cumprod, [1e-4, 0.6916, 0.9599, 0.9983, 0.99998], atol=6e-5)
    _close(sched.posterior_mean_coef1, [1, 0.6658, 0.2692, 0.0578], atol=6e-5)
    _close(sched.posterior_mean_coef2, [0, 0.2016, 0.1930, 0.1119], atol=6e-5)
    _close(sched.posterior_variance, [0, 0.4408, 0.8842, 0.9841], atol=6e-5)
    assert sched.posterior_log_variance_clipped[0].item() == pytest.approx(torch.log(torch.tensor(1e-20)).item())


def test_vp_levels_follow_the_sde_formula() -> None:
    t = torch.tensor([1e-3, 0.25075, 0.5005, 0.75025, 1.0], dtype=torch.float64)
    expected = torch.exp(-0.5 * t ** 2 * 19.9 - 0.1 * t)
    torch.testing.assert_close(vp_alpha_bars(4, 0.1, 20.0), expected)


def test_posterior_is_the_bayes_posterior_of_the_forward_steps(sched: DiffusionSchedule) -> None:
    """q(x_t | x_{t+1}, x_0) ∝ N(x_{t+1}; sqrt(1-b) x_t, b) N(x_t; sqrt(a') x_0, 1 - a'), a' = prod_{j<=t}(1-b_j)."""
    b = sched.betas[1:].double()
    a_prev = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - b, 0)[:-1]])
    for t in range(1, 4):  # t = 0: a' = 1 has zero variance, the posterior is x_0 itself (checked below)
        prec = 1 / (1 - a_prev[t]) + (1 - b[t]) / b[t]
        assert sched.posterior_variance[t].item() == pytest.approx((1 / prec).item(), rel=1e-5)
        assert sched.posterior_mean_coef1[t].item() == pytest.approx((a_prev[t].sqrt() / (1 - a_prev[t]) / prec).item(), rel=1e-5)
        assert sched.posterior_mean_coef2[t].item() == pytest.approx(((1 - b[t]).sqrt() / b[t] / prec).item(), rel=1e-5)
    x0, xt1 = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    zero = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(sched.sample_posterior(x0, xt1, zero), x0)  # no noise at t = 0


def test_q_sample_pairs_marginals(sched: DiffusionSchedule) -> None:
    """x_t and x_{t+1} have the Gaussian marginals of the forward process (empirical moments over many pixels)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 1, 128, 128), 0.5)
    for t in range(4):
        tt = torch.full((4,), t, dtype=torch.long)
        x_t, x_tp1 = sched.q_sample_pairs(x0, tt, generator=g)
        assert x_t.shape == x_tp1.shape == x0.shape and x_t.dtype == torch.float32
        for x, k in ((x_t, t), (x_tp1, t + 1)):
            assert x.mean().item() == pytest.approx(0.5 * sched.sqrt_alphas_cumprod[k].item(), abs=0.01)
            assert x.std().item() == pytest.approx(sched.sqrt_one_minus_alphas_cumprod[k].item(), rel=0.02, abs=1e-3)


def test_reverse_sampler_calls_G_with_integer_t_and_returns_last_x0(sched: DiffusionSchedule) -> None:
    """§2.8: T calls with t = 3, 2, 1, 0 on cat[x_{t+1}, source]; the last step is deterministic, so an oracle G
    that always predicts x0 returns x0 exactly."""
    source, x0 = torch.randn(3, 2, 16, 16), torch.rand(3, 1, 16, 16)
    calls = []

    def oracle(x_in, t, z):
        calls.append((x_in.shape, t.tolist(), z.shape))
        torch.testing.assert_close(x_in[:, 1:], source)
        return x0

    out = sched.sample(oracle, source, lambda n, g: torch.randn(n, 5, generator=g), torch.Generator().manual_seed(1))
    assert [c[1] for c in calls] == [[3] * 3, [2] * 3, [1] * 3, [0] * 3]
    assert all(c[0] == (3, 3, 16, 16) and c[2] == (3, 5) for c in calls)
    torch.testing.assert_close(out, x0)


def test_sampler_is_deterministic_for_a_seed(sched: DiffusionSchedule) -> None:
    source = torch.randn(2, 1, 8, 8)

    def G(x_in, t, z):  # depends on the noise so that the seed matters
        return torch.tanh(x_in[:, :1] + z.mean(1)[:, None, None, None])

    def run(seed: int) -> torch.Tensor:
        return sample(G, source, 4, lambda n, g: torch.randn(n, 4, generator=g), torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.equal(run(3), run(4))
    torch.testing.assert_close(run(3), sched.sample(G, source, lambda n, g: torch.randn(n, 4, generator=g),
                                                    torch.Generator().manual_seed(3)), rtol=0, atol=0)


def test_schedule_buffers_move_and_stay_out_of_state_dict() -> None:
    sched = DiffusionSchedule()
    assert sched.state_dict() == {} and not list(sched.parameters())
    assert sched.to(torch.float64).posterior_variance.dtype == torch.float64
