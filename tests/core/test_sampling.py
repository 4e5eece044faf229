"""Contract tests run against every sampler with an analytic denoiser.

Data x0 ~ N(mu, Sigma) in 3 dimensions (shaped [N, 3, 1, 1]) has the exact denoiser
D(x, sigma) = mu + Sigma (Sigma + sigma^2 I)^-1 (x - mu), and its probability-flow ODE maps a start
x_T at sigma_max to mu + Sigma^1/2 (Sigma + sigma_max^2 I)^-1/2 (x_T - mu) in closed form.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.sampling import (
    SamplerState,
    SeededNoise,
    VPDenoiser,
    get_sigmas,
    noise_seed,
    respaced_timesteps,
    run_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_heun,
)
from ddsm_core.schedules import NoiseSchedule
from ddsm_core.strategy import SAMPLERS, Strategy

SCHEDULE = NoiseSchedule.linear()
MU = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.1, 0.0], [0.1, 0.3, -0.05], [0.0, -0.05, 0.1]], dtype=torch.float64)
LAM, Q = torch.linalg.eigh(SIGMA)  # eigenvalues 0.087, 0.271, 0.542
SHAPE = (3, 1, 1)

# "Enough steps" per sampler for the moment test, and the sampler's (first or second) order.
ENOUGH_STEPS = {"ddpm": 1000, "ddim": 200, "edm": 50, "dpmpp": 50}
N_MOMENTS = 10_000
# Standard errors of the sample mean / covariance entries at N = 10_000 are <= 0.0074 / 0.0077 (the
# largest eigenvalue is 0.54): the tolerance is about 4 standard errors. Discretization bias at these
# step counts is below 0.01 (DDPM's variance shrinkage is first order in the step: -0.025 at 200 steps).
MOMENT_TOL = 0.03


class GaussianDenoiser:
    """Exact denoiser of N(MU, SIGMA) data; records (sigma, width, y) of every call."""

    schedule = SCHEDULE

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []
        self.ys: list[torch.Tensor | None] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, width: float, y=None) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls.append((float(sigma[0]), width))
        self.ys.append(y)
        z = (x.movedim(1, -1).double() - MU) @ Q  # [N, H, W, 3]: every pixel is one 3-d Gaussian
        z = z * LAM / (LAM + sigma.double().reshape(-1, 1, 1, 1) ** 2)
        return (MU + z @ Q.T).to(x.dtype).movedim(-1, 1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def _random_strategy(sampler: str, steps: int, seed: int = 0) -> Strategy:
    rng = random.Random(seed)
    return Strategy.uniform(sampler, steps, 0).with_genes([rng.randrange(7) for _ in range(steps)])


# ------------------------------------------------------------------------------------ contract suite
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_match_gaussian_mean_and_covariance(sampler: str) -> None:
    strategy = Strategy.uniform(sampler, ENOUGH_STEPS[sampler], -1)
    x = _flat(sample(GaussianDenoiser(), strategy, SHAPE, range(N_MOMENTS), clip=False))
    assert (x.mean(0) - MU).abs().max().item() < MOMENT_TOL
    assert (torch.cov(x.T) - SIGMA).abs().max().item() < MOMENT_TOL


def _ode_error(sampler: str, steps: int, n: int = 500) -> float:
    """Max abs distance of deterministic samples from the exact probability-flow ODE endpoint."""
    strategy = Strategy.uniform(sampler, steps, -1)
    x = _flat(sample(GaussianDenoiser(), strategy, SHAPE, range(n), clip=False))
    sigma_max = float(get_sigmas(strategy, SCHEDULE)[0])
    x_t = _flat(SeededNoise(range(n), SHAPE).initial()) * math.sqrt(1 + sigma_max**2)
    exact = MU + (((x_t - MU) @ Q) * (LAM / (LAM + sigma_max**2)).sqrt()) @ Q.T
    return (x - exact).abs().max().item()


@pytest.mark.parametrize(
    ("sampler", "steps", "tol", "order"),
    [("ddim", 200, 0.05, 1), ("edm", 50, 0.03, 2), ("dpmpp", 50, 0.015, 2)],
)
def test_deterministic_samplers_solve_the_probability_flow_ode(
    sampler: str, steps: int, tol: float, order: int
) -> None:
    err, err2 = _ode_error(sampler, steps), _ode_error(sampler, 2 * steps)
    assert err < tol
    # Doubling the steps divides the error by about 2**order (first order DDIM, second order Heun/2M).
    assert err2 < err / (2**order) * 1.4


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_network_is_called_at_exactly_the_strategy_widths(sampler: str) -> None:
    strategy = _random_strategy(sampler, 7)
    denoiser, steps_seen = GaussianDenoiser(), []
    sample(denoiser, strategy, SHAPE, [0, 1], callback=steps_seen.append)
    assert [w for _, w in denoiser.calls] == strategy.network_calls()
    sigmas = get_sigmas(strategy, SCHEDULE).tolist()
    if sampler == "edm":  # Heun: sigma_i, then sigma_{i+1} for the correction, none at sigma = 0
        expected = [s for i in range(6) for s in (sigmas[i], sigmas[i + 1])] + [sigmas[6]]
    else:
        expected = sigmas[:-1]
    assert [s for s, _ in denoiser.calls] == pytest.approx(expected, rel=1e-12)
    assert [info["i"] for info in steps_seen] == list(range(7))
    assert [info["width"] for info in steps_seen] == list(strategy.width_per_step)
    assert steps_seen[0]["n"] == 2 and steps_seen[0]["batches"] == 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_is_deterministic_and_independent_of_batch_size(sampler: str) -> None:
    strategy = _random_strategy(sampler, 12)
    seeds = [3, 1, 4, 1, 5, 9, 2]
    full = sample(GaussianDenoiser(), strategy, SHAPE, seeds, clip=False)
    assert torch.equal(full, sample(GaussianDenoiser(), strategy, SHAPE, seeds, clip=False))
    for batch_size in (1, 3):
        batched = sample(GaussianDenoiser(), strategy, SHAPE, seeds, batch_size=batch_size, clip=False)
        assert torch.equal(batched, full)  # bitwise
    # a sample depends on its own seed only
    torch.testing.assert_close(full[1], full[3], rtol=0, atol=0)
    assert torch.equal(sample(GaussianDenoiser(), strategy, SHAPE, seeds[4:], clip=False), full[4:])
    other = sample(GaussianDenoiser(), strategy, SHAPE, [10, 11], clip=False)
    assert not torch.allclose(other[0], other[1])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_strategy_sees_the_same_noise_for_the_same_seeds(sampler: str) -> None:
    # The analytic denoiser ignores the width, so equal outputs mean equal initial and step noise.
    a = sample(GaussianDenoiser(), Strategy.uniform(sampler, 9, 0), SHAPE, range(5), clip=False)
    b = sample(GaussianDenoiser(), _random_strategy(sampler, 9, seed=1), SHAPE, range(5), clip=False)
    assert torch.equal(a, b)


def test_ddpm_step_is_the_ddpm_posterior() -> None:
    """DDIM with eta = 1 samples q(x_t' | x_t, x0_hat) (Ho et al. eq. 6-7), full chain and respaced."""
    gen = torch.Generator().manual_seed(0)
    for t, t_prev in ((500, 499), (999, 888)):
        abar, abar_prev = SCHEDULE.alphas_cumprod[t].item(), SCHEDULE.alphas_cumprod[t_prev].item()
        x_vp = torch.randn(4, *SHAPE, generator=gen, dtype=torch.float64)
        z = torch.randn(4, *SHAPE, generator=gen, dtype=torch.float64)
        sigmas = SCHEDULE.sigmas[[t, t_prev]]
        denoiser = GaussianDenoiser()
        x0_hat = denoiser(x_vp / math.sqrt(abar), sigmas[:1].expand(4), 1.0)
        out = sample_ddpm(
            denoiser, x_vp / math.sqrt(abar), sigmas, Strategy.uniform("ddpm", 1, -1), noise=lambda i, z=z: z
        )
        # posterior of the (respaced) step: beta = 1 - abar/abar', alpha = abar/abar'
        beta, alpha = 1 - abar / abar_prev, abar / abar_prev
        mean = (math.sqrt(abar_prev) * beta / (1 - abar)) * x0_hat + (
            math.sqrt(alpha) * (1 - abar_prev) / (1 - abar)
        ) * x_vp
        var = (1 - abar_prev) / (1 - abar) * beta
        torch.testing.assert_close(out * math.sqrt(abar_prev), mean + math.sqrt(var) * z)


def test_ddim_eta_zero_is_the_ddim_update() -> None:
    """Song et al. eq. 12 with sigma_t = 0: x' = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat."""
    t, t_prev = 700, 600
    abar, abar_prev = SCHEDULE.alphas_cumprod[t].item(), SCHEDULE.alphas_cumprod[t_prev].item()
    x_vp = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = SCHEDULE.sigmas[[t, t_prev]]
    x0_hat = GaussianDenoiser()(x_vp / math.sqrt(abar), sigmas[:1].expand(4), 1.0)
    eps_hat = (x_vp - math.sqrt(abar) * x0_hat) / math.sqrt(1 - abar)
    out = sample_ddim(GaussianDenoiser(), x_vp / math.sqrt(abar), sigmas, Strategy.uniform("ddim", 1, -1))
    expected = math.sqrt(abar_prev) * x0_hat + math.sqrt(1 - abar_prev) * eps_hat
    torch.testing.assert_close(out * math.sqrt(abar_prev), expected)


# ------------------------------------------------------------------------------------ denoiser
def test_vp_denoiser_recovers_the_exact_denoiser_from_an_eps_model() -> None:
    seen = {}

    def eps_model(x_t: torch.Tensor, t: torch.Tensor, width: float = 1.0, y=None) -> torch.Tensor:
        seen.update(t=t, width=width, y=y)
        return _gaussian_eps_model(x_t, t, width)

    vp = VPDenoiser(eps_model, SCHEDULE)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    sigma = torch.tensor([SCHEDULE.sigmas[10].item(), 0.7, 40.0], dtype=torch.float64)
    y = torch.tensor([1, 2, 3])
    torch.testing.assert_close(vp(x, sigma, 0.5, y), GaussianDenoiser()(x, sigma, 0.5))
    assert seen["t"][0].item() == pytest.approx(10.0) and seen["width"] == 0.5 and seen["y"] is y
    clipped = VPDenoiser(eps_model, SCHEDULE, clip_denoised=True)(x * 100, sigma, 1.0)
    assert clipped.abs().max().item() <= 1.0


def _gaussian_eps_model(x_t: torch.Tensor, t: torch.Tensor, width: float = 1.0, y=None) -> torch.Tensor:
    """The epsilon prediction of the exact denoiser at (fractional) timestep t."""
    sigma = SCHEDULE.t_to_sigma(t.double())
    abar = (1 / (1 + sigma**2)).reshape(-1, 1, 1, 1)
    x0 = GaussianDenoiser()(x_t / abar.sqrt(), sigma, width).to(x_t.dtype)
    return (x_t - abar.sqrt().to(x_t.dtype) * x0) / (1 - abar).sqrt().to(x_t.dtype)


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 1000), ("ddim", 50), ("edm", 50), ("dpmpp", 50)])
def test_vp_denoiser_path_matches_the_exact_denoiser_sample_for_sample(sampler: str, steps: int) -> None:
    """eps model -> VPDenoiser (c_in, fractional t) -> sampler gives the same samples, seed for seed."""
    strategy = Strategy.uniform(sampler, steps, -1)
    via_eps = sample(VPDenoiser(_gaussian_eps_model, SCHEDULE), strategy, SHAPE, range(64), clip=False)
    direct = sample(GaussianDenoiser(), strategy, SHAPE, range(64), clip=False)
    torch.testing.assert_close(via_eps, direct, rtol=0, atol=1e-4)


def test_vp_denoiser_runs_the_slimmable_unet_and_refuses_training_mode() -> None:
    from ddsm_core.config import UNetConfig
    from ddsm_core.unet import SlimmableUNet

    torch.manual_seed(0)  # test-only: initial weights
    model = SlimmableUNet(UNetConfig.digits())
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    strategy = Strategy.piecewise("dpmpp", 2, [0, len(cfg.widths) - 1], widths=cfg.widths)
    with pytest.raises(ConfigError, match=r"model\.eval\(\)"):
        sample(VPDenoiser(model, SCHEDULE), strategy, shape, [0, 1])
    model.eval()
    out = sample(VPDenoiser(model, SCHEDULE), strategy, shape, [0, 1, 2], batch_size=2)
    assert out.shape == (3, *shape) and bool(out.isfinite().all())
    torch.testing.assert_close(out[2:], sample(VPDenoiser(model, SCHEDULE), strategy, shape, [2]))


def test_class_labels_follow_their_seeds_through_batches() -> None:
    denoiser = GaussianDenoiser()
    y = torch.tensor([7, 8, 9])
    sample(denoiser, Strategy.uniform("ddim", 2, -1), SHAPE, [0, 1, 2], y=y, batch_size=2)
    assert [t.tolist() for t in denoiser.ys] == [[7, 8], [7, 8], [9], [9]]


def test_sample_clips_to_unit_range_by_default() -> None:
    out = sample(GaussianDenoiser(), Strategy.uniform("ddim", 5, -1), (3, 4, 4), range(8))
    assert out.shape == (8, 3, 4, 4) and out.abs().max().item() <= 1.0
    full_shape = sample(GaussianDenoiser(), Strategy.uniform("ddim", 5, -1), (8, 3, 4, 4), range(8))
    assert torch.equal(out, full_shape)


# ------------------------------------------------------------------------------------ grids
def test_respaced_timesteps_include_both_ends() -> None:
    assert torch.equal(respaced_timesteps(1000, 1000), torch.arange(999, -1, -1))
    ts = respaced_timesteps(1000, 10)
    assert ts.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert respaced_timesteps(1000, 1).tolist() == [999]
    assert len(set(respaced_timesteps(1000, 999).tolist())) == 999
    with pytest.raises(StrategyError, match=r"1\.\.1000 steps"):
        respaced_timesteps(1000, 1001)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_grids_decrease_from_sigma_max_to_zero(sampler: str) -> None:
    sigmas = get_sigmas(sampler, SCHEDULE, 20)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (21,)
    assert sigmas[-1].item() == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    assert sigmas[0].item() == pytest.approx(SCHEDULE.sigma_max)
    assert sigmas[-2].item() == pytest.approx(SCHEDULE.sigma_min)


def test_karras_and_logsnr_grids() -> None:
    k = get_sigmas("edm-heun", SCHEDULE, 5)[:-1]
    ramp = k ** (1 / 7)
    torch.testing.assert_close(ramp[1:] - ramp[:-1], (ramp[1] - ramp[0]).expand(4))
    d = get_sigmas("dpm-solver++", SCHEDULE, 5)[:-1].log()
    torch.testing.assert_close(d[1:] - d[:-1], (d[1] - d[0]).expand(4))


# ------------------------------------------------------------------------------------ errors
def test_grid_that_does_not_fit_the_strategy_is_rejected() -> None:
    x = torch.zeros(2, *SHAPE)
    with pytest.raises(StrategyError, match="grid has 5 steps but the strategy has 4"):
        sample_heun(GaussianDenoiser(), x, get_sigmas("edm", SCHEDULE, 5), Strategy.uniform("edm", 4, 0))
    with pytest.raises(ValueError, match="needs noise"):
        ddim = Strategy.uniform("ddim", 4, 0)
        sample_ddim(GaussianDenoiser(), x, get_sigmas(ddim, SCHEDULE), ddim, eta=1)


def test_sample_argument_errors() -> None:
    s = Strategy.uniform("ddim", 3, 0)
    with pytest.raises(ConfigError, match="for 4 images but 2 seeds"):
        sample(GaussianDenoiser(), s, (4, 3, 1, 1), [0, 1])
    with pytest.raises(ConfigError, match="3 class labels for 2 seeds"):
        sample(GaussianDenoiser(), s, SHAPE, [0, 1], y=torch.tensor([0, 1, 2]))
    with pytest.raises(ConfigError, match="eta applies to the ddim sampler only"):
        sample(GaussianDenoiser(), Strategy.uniform("edm", 3, 0), SHAPE, [0], eta=0.5)
    with pytest.raises(ConfigError, match="needs a noise schedule"):
        sample(lambda x, s, w, y=None: x, s, SHAPE, [0])
    with pytest.raises(StrategyError, match=r"1\.\.1000 steps"):
        sample(GaussianDenoiser(), Strategy.uniform("ddpm", 1001, 0), SHAPE, [0])


def test_seeded_noise_is_counter_based() -> None:
    noise = SeededNoise([5, 6], SHAPE)
    assert torch.equal(noise(3), noise(3)) and not torch.equal(noise(3), noise(4))
    assert torch.equal(noise(3)[1], SeededNoise([6], SHAPE)(3)[0])
    assert not torch.equal(noise.initial(), noise(0))
    image_noise = SeededNoise([5], (3, 32, 32))
    assert image_noise.block == 1 and torch.equal(image_noise(2), SeededNoise([5], (3, 32, 32))(2))
    assert noise.block == 1365 and torch.equal(noise(1500), SeededNoise([5, 6], SHAPE)(1500))


def test_seeded_noise_golden_values() -> None:
    """Frozen: changing the noise scheme silently changes every stored search result."""
    assert noise_seed(0, 0) == 12035550249420947055
    assert noise_seed(12345, 3) == 16724985262440602820
    noise = SeededNoise([0, 12345], (3, 4, 4))
    expected_initial = [[-1.3532908, -0.8186129, 1.0930958], [1.7297103, 0.6353763, 1.2532002]]
    torch.testing.assert_close(noise.initial()[:, 0, 0, :3], torch.tensor(expected_initial))
    expected_step2 = [[0.0402668, -0.9790254], [-1.5353831, -0.1885800]]
    torch.testing.assert_close(noise(2)[:, 2, 3, :2], torch.tensor(expected_step2))


class WidthDenoiser(GaussianDenoiser):
    """The exact denoiser, pulled toward 0 by a width-dependent factor (so every gene matters)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, width: float, y=None) -> torch.Tensor:
        return super().__call__(x, sigma, width, y) * (0.9 + 0.1 * width)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_sample_resumed_from_a_saved_state_equals_the_uninterrupted_one(sampler: str) -> None:
    strategy = _random_strategy(sampler, 8, seed=3)
    seeds = [5, 6, 7]
    states: dict[int, SamplerState] = {}
    full = sample(
        WidthDenoiser(), strategy, SHAPE, seeds, clip=False,
        callback=lambda info: states.__setitem__(info["i"], info["state"]),
    )  # fmt: skip
    assert sorted(states) == list(range(8)) and states[0].i == 0
    for k in (1, 4, 7):
        denoiser = WidthDenoiser()
        resumed = sample(denoiser, strategy, SHAPE, seeds, clip=False, start=states[k])
        assert torch.equal(resumed, full), k  # bitwise
        assert len(denoiser.calls) == (8 - k) * (2 if sampler == "edm" else 1) - (sampler == "edm")
    # resuming from the state of another strategy's prefix gives that mix, not this strategy's sample
    other = strategy.with_genes([(g + 3) % 7 for g in strategy.genes[:4]] + list(strategy.genes[4:]))
    assert not torch.equal(sample(WidthDenoiser(), other, SHAPE, seeds, clip=False), full)


def test_run_sampler_goes_on_from_a_state_and_checks_it() -> None:
    strategy = _random_strategy("dpmpp", 6, seed=1)
    sigmas = get_sigmas(strategy, SCHEDULE)
    x0 = SeededNoise([1, 2], SHAPE).initial() * math.sqrt(1 + float(sigmas[0]) ** 2)
    states: dict[int, SamplerState] = {}
    full = run_sampler(
        WidthDenoiser(), x0, sigmas, strategy, callback=lambda i: states.__setitem__(i["i"], i["state"])
    )
    assert torch.equal(run_sampler(WidthDenoiser(), states[3], sigmas, strategy), full)
    assert states[3].denoised is not None and states[0].denoised is None
    with pytest.raises(StrategyError, match="previous step's denoised"):
        run_sampler(WidthDenoiser(), SamplerState(3, states[3].x), sigmas, strategy)
    with pytest.raises(StrategyError, match="start step"):
        run_sampler(WidthDenoiser(), SamplerState(9, x0), sigmas, strategy)
    with pytest.raises(ConfigError, match="one batch"):
        sample(WidthDenoiser(), strategy, SHAPE, [1, 2], batch_size=1, start=states[3])
