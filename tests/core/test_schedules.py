"""Noise schedules: tables, forward noising, sigma <-> t, epsilon loss."""

from __future__ import annotations

import math

import pytest
import torch

from ddsm_core.errors import ConfigError
from ddsm_core.schedules import NoiseSchedule, eps_loss, get_schedule


def test_linear_schedule_matches_ddpm() -> None:
    s = NoiseSchedule.linear()
    assert s.T == 1000 and s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    expected = math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 999) for i in range(1000))
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-9)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=0.01)


def test_sigmas_and_log_snr_follow_alphas_cumprod() -> None:
    for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
        a = s.alphas_cumprod
        torch.testing.assert_close(s.sigmas, ((1 - a) / a).sqrt())
        torch.testing.assert_close(s.log_snr, torch.log(a / (1 - a)))
        assert bool((s.sigmas[1:] > s.sigmas[:-1]).all())
        assert s.sigma_min == s.sigmas[0].item() and s.sigma_max == s.sigmas[-1].item()


def test_cosine_schedule_matches_improved_ddpm() -> None:
    s = NoiseSchedule.cosine(T=1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alphas_cumprod[499].item() == pytest.approx(f(500) / f(0), rel=1e-9)
    assert s.betas.max().item() <= 0.999


def test_q_sample_is_the_ve_view_scaled() -> None:
    s = NoiseSchedule.linear()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 2, 3, 3, generator=gen), torch.randn(4, 2, 3, 3, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    x_t = s.q_sample(x0, t, noise)
    abar = s.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t / abar.sqrt(), x0 + s.sigmas[t].float().reshape(-1, 1, 1, 1) * noise)


def test_sigma_to_t_inverts_t_to_sigma() -> None:
    s = NoiseSchedule.linear()
    t_int = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.sigmas), t_int, rtol=0, atol=1e-9)
    t_frac = torch.tensor([0.0, 0.25, 3.5, 498.75, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t_frac)), t_frac, rtol=0, atol=1e-9)
    # halfway in log sigma between two entries is t + 0.5
    mid = (0.5 * (s.log_sigmas[10] + s.log_sigmas[11])).exp().reshape(1)
    assert s.sigma_to_t(mid).item() == pytest.approx(10.5, abs=1e-9)
    # outside the table: clamped
    out = s.sigma_to_t(torch.tensor([1e-6, 1e6], dtype=torch.float64))
    assert out.tolist() == [0.0, 999.0]
    assert s.sigma_to_t(torch.tensor([1.0])).dtype == torch.float32


def test_eps_loss_is_zero_for_the_true_noise_predictor() -> None:
    s = NoiseSchedule.linear()
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 1, 4, 4, generator=gen), torch.randn(3, 1, 4, 4, generator=gen)
    t = torch.tensor([1, 400, 999])
    seen = {}

    def oracle(x_t: torch.Tensor, tt: torch.Tensor, width: float = 1.0, y=None) -> torch.Tensor:
        seen.update(width=width, t=tt, y=y)
        abar = s.alphas_cumprod[tt.long()].float().reshape(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()

    y = torch.tensor([0, 1, 2])
    assert eps_loss(oracle, x0, t, noise, 0.5, y, schedule=s).item() == pytest.approx(0.0, abs=1e-8)
    assert seen["width"] == 0.5 and seen["y"] is y and seen["t"].dtype == torch.float32
    loss = s.eps_loss(lambda x, tt, width=1.0, y=None: torch.zeros_like(x), x0, t, noise, 1.0)
    assert loss.item() == pytest.approx(noise.pow(2).mean().item())


def test_schedule_dict_round_trip_and_errors() -> None:
    for s in (NoiseSchedule.linear(T=50), NoiseSchedule.cosine()):
        assert NoiseSchedule.from_dict(s.to_dict()) == s
    assert NoiseSchedule.linear() != NoiseSchedule.cosine()
    with pytest.raises(ConfigError, match=r"unknown noise schedule 'sqrt'; allowed: linear, cosine"):
        get_schedule("sqrt")
    with pytest.raises(ConfigError, match="unknown noise schedule keys"):
        NoiseSchedule.from_dict({"kind": "linear", "betas": [1]})
    with pytest.raises(ConfigError, match="T >= 2"):
        NoiseSchedule.linear(T=1)
