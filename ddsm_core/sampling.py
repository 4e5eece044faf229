"""Step-aware samplers over one denoiser interface (k-diffusion style).

Every sampler is a small pure function ``sample_xxx(denoiser, x, sigmas, strategy, *, ...)``:

- ``denoiser(x, sigma, width, y) -> x0_hat`` works in the variance-exploding (VE) view,
  ``x = x0 + sigma * eps`` (Karras et al. 2022, "EDM"); :class:`VPDenoiser` wraps a DDPM epsilon
  network into it, :class:`GuidedDenoiser` adds classifier-free guidance to any denoiser (the
  samplers do not know about it).
- ``sigmas`` is the noise grid, built once by :func:`get_sigmas`: ``steps + 1`` decreasing values
  ending with 0. Sampler step ``i`` goes from ``sigmas[i]`` to ``sigmas[i + 1]`` and calls the
  network at ``strategy.width_at(i)`` (EDM Heun: both of its evaluations).
- Randomness enters only as arguments: the initial ``x`` and ``noise(i)``, the standard normal noise of
  step ``i`` (ancestral samplers). :func:`sample` draws both from per-sample seeds with a
  counter-based scheme, so a sample depends on its seed only: not on the batch size, nor on which
  other samples share its batch, and every strategy sees the same noise for the same seeds (common
  random numbers).
- Progress goes through ``callback(dict)`` once per sampler step, after its first network call, with
  keys ``i``, ``steps``, ``x`` (state before the step), ``sigma``, ``sigma_next``, ``width``,
  ``denoised`` (``x0_hat``) and ``state`` (the :class:`SamplerState` before the step).
- One loop per sampler, started anywhere: given a :class:`SamplerState` (step index, ``x`` and a
  multistep sampler's memory) a sampler goes on from it exactly as the uninterrupted run would (the
  noise is a function of the step index). The evaluation's prefix cache resumes from such states.

Grids (``steps`` = N, each ends with an appended 0):

- ``ddpm`` / ``ddim``: the sigmas of N timesteps evenly spaced over ``[0, T-1]`` including both ends
  (``round(linspace(T-1, 0, N))``); N = T is the full DDPM chain. The last step runs at t = 0.
- ``edm``: Karras et al.'s grid (EDM eq. 5, rho = 7) between the schedule's ``sigma_min`` (t = 0) and
  ``sigma_max`` (t = T-1).
- ``dpmpp``: uniform in log-SNR (``lambda = -2 log sigma``) between the same ``sigma_max`` and
  ``sigma_min`` (DPM-Solver++'s "logSNR" skip type, which its authors recommend for low resolutions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ddsm_core.errors import ConfigError, StrategyError
from ddsm_core.schedules import EpsModel, NoiseSchedule
from ddsm_core.strategy import Strategy, canonical_sampler

NoiseFn = Callable[[int], Tensor]
"""``noise(i)``: standard normal noise shaped like ``x`` for sampler step ``i``."""
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SamplerState:
    """Where a sampler stands before step ``i``: everything it needs to go on from there.

    The noise needs no state of its own: ``noise(i)`` is a function of the step index (and, with
    :class:`SeededNoise`, of the seeds), so resuming at ``i`` with the same noise function draws what
    the uninterrupted run would. Every sampler reports this state to ``callback`` as ``info["state"]``
    and accepts it back as ``start``: a resumed sample equals the uninterrupted one bit for bit.

    :param i: the next sampler step (0 = not started).
    :param x: ``[N, C, H, W]`` state at ``sigmas[i]``.
    :param denoised: the previous step's ``x0_hat`` (DPM-Solver++(2M)'s multistep memory), else None.
    """

    i: int
    x: Tensor
    denoised: Tensor | None = None

    def nbytes(self) -> int:
        tensors = [self.x] if self.denoised is None else [self.x, self.denoised]
        return sum(t.numel() * t.element_size() for t in tensors)


class Denoiser(Protocol):
    """``denoiser(x [N,C,H,W], sigma [N], width, y [N] | None) -> x0_hat [N,C,H,W]`` (VE view)."""

    def __call__(self, x: Tensor, sigma: Tensor, width: float, y: Tensor | None = None) -> Tensor: ...


class VPDenoiser:
    """Wraps a DDPM epsilon network and its schedule into the VE denoiser interface.

    For ``x = x0 + sigma * eps`` the VP input is ``x_t = x / sqrt(1 + sigma^2)`` (as
    ``abar = 1 / (1 + sigma^2)``) at the fractional timestep ``t = schedule.sigma_to_t(sigma)``, and
    ``x0_hat = x - sigma * eps_theta(x_t, t)`` (EDM Table 1, VP preconditioning; k-diffusion's
    ``DiscreteEpsDDPMDenoiser``).

    :param model: epsilon network ``model(x_t, t, width=..., y=...)``.
    :param schedule: the schedule the network was trained with.
    :param clip_denoised: clamp ``x0_hat`` to [-1, 1] (guided-diffusion's ``clip_denoised``).
    :raises ConfigError: when called with an ``nn.Module`` in training mode: its dropout would draw
        from the global RNG and break seeded, batch-independent sampling (call ``model.eval()``).
    """

    def __init__(self, model: EpsModel, schedule: NoiseSchedule, *, clip_denoised: bool = False) -> None:
        self.model = model
        self.schedule = schedule
        self.clip_denoised = clip_denoised

    def __call__(self, x: Tensor, sigma: Tensor, width: float, y: Tensor | None = None) -> Tensor:
        """:param x: ``[N, C, H, W]`` VE state. :param sigma: ``[N]``. :return: ``x0_hat`` like ``x``."""
        if getattr(self.model, "training", False):
            raise ConfigError("the model is in training mode: call model.eval() before sampling")
        sigma = sigma.to(device=x.device, dtype=torch.float64)
        # 1. c_in = 1 / sqrt(1 + sigma^2) turns the VE state into the VP input x_t
        c_in = (1.0 + sigma**2).rsqrt()
        # 2. t(sigma): fractional DDPM timestep, linear in log sigma
        t = self.schedule.sigma_to_t(sigma)
        eps = self.model(x * _bcast(c_in, x), t.to(x.dtype), width=width, y=y)
        # 3. x0_hat = x - sigma * eps_theta
        denoised = x - _bcast(sigma, x) * eps
        return denoised.clamp(-1.0, 1.0) if self.clip_denoised else denoised


class GuidedDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) over any denoiser, at the step's width.

    One inner call on the batch ``[x, x]`` with labels ``[y, null]`` gives the conditional and the
    unconditional ``x0_hat`` (``d_c``, ``d_u``); the result is ``d_u + w (d_c - d_u)``. ``x0_hat`` is
    affine in ``eps_hat`` at a fixed ``x`` and sigma (``x0_hat = x - sigma eps_hat``), so this is the
    paper's ``(1 + w') eps_c - w' eps_u`` with ``w = 1 + w'``. ``torch.lerp`` returns its end exactly at
    weight 1: ``guidance = 1`` is the conditional model bit for bit, ``0`` the unconditional one. Both
    passes always run (twice the FLOPs of one call: ``strategy_gflops(..., passes=2)``).

    :param inner: the denoiser to guide (e.g. a :class:`VPDenoiser` of a model with a null label).
    :param guidance: ``w`` (>= 0; 1 = no guidance).
    :param null_label: the label of the unconditional model (``UNetConfig.null_class``).
    """

    passes = 2

    def __init__(self, inner: Denoiser, guidance: float, null_label: int) -> None:
        if not (math.isfinite(guidance) and guidance >= 0):
            raise ConfigError(f"guidance must be a finite number >= 0, got {guidance}")
        self.inner, self.guidance, self.null_label = inner, float(guidance), int(null_label)

    @property
    def schedule(self) -> NoiseSchedule | None:
        return getattr(self.inner, "schedule", None)

    def __call__(self, x: Tensor, sigma: Tensor, width: float, y: Tensor | None = None) -> Tensor:
        """:param x: ``[N, C, H, W]``. :param sigma: ``[N]``. :param y: ``[N]`` labels (required)."""
        if y is None:
            raise ConfigError("classifier-free guidance needs class labels y")
        null = torch.full_like(y, self.null_label)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), width, torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return torch.lerp(uncond, cond, self.guidance)


def seed_labels(seeds: Sequence[int], num_classes: int, label: int | None = None) -> Tensor:
    """Class labels ``[N]`` (long) for images drawn from ``seeds``: ``label`` for all, or by default
    ``seed % num_classes`` (a function of the image's seed only, like its noise; every class alike)."""
    if label is not None:
        if not 0 <= int(label) < num_classes:
            raise ConfigError(f"class {label} is out of range: 0..{num_classes - 1}")
        return torch.full((len(seeds),), int(label), dtype=torch.long)
    return torch.tensor([int(s) % num_classes for s in seeds], dtype=torch.long)


def model_denoiser(
    model: EpsModel, schedule: NoiseSchedule, *, guidance: float | None = None
) -> VPDenoiser | GuidedDenoiser:
    """The denoiser of an epsilon network: a :class:`VPDenoiser`, guided when ``guidance`` is set.

    :raises ConfigError: guidance on a model without a null label (train it with label dropout).
    """
    denoiser = VPDenoiser(model, schedule)
    if guidance is None:
        return denoiser
    null = getattr(getattr(model, "config", None), "null_class", None)
    if null is None:
        raise ConfigError(
            "guidance needs a class-conditional model with a null label: train it with --class-cond "
            "--label-dropout 0.1"
        )
    return GuidedDenoiser(denoiser, guidance, null)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` in ``x``'s dtype, to broadcast against ``x``."""
    return v.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


# ---------------------------------------------------------------------------------------- grids
def respaced_timesteps(T: int, steps: int) -> Tensor:
    """``steps`` DDPM timesteps evenly spaced over ``[0, T-1]``, descending, including ``T-1`` and 0.

    ``steps == T`` gives every timestep (the full ancestral chain). Long tensor ``[steps]``.
    """
    if not 1 <= steps <= T:
        raise StrategyError(f"a DDPM/DDIM sampler can run 1..{T} steps on a {T}-step schedule, got {steps}")
    if steps == 1:
        return torch.tensor([T - 1])
    return torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()


def get_sigmas_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: ``sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, then 0."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1).double()
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def get_sigmas_logsnr(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log-SNR (equivalently geometric in sigma) from ``sigma_max`` to ``sigma_min``, then 0."""
    log_sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64)
    return _append_zero(log_sigmas.exp())


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas(strategy: Strategy | str, schedule: NoiseSchedule, steps: int | None = None) -> Tensor:
    """The noise grid of a sampler: float64 ``[steps + 1]``, decreasing, ending with 0.

    :param strategy: a :class:`Strategy` (its sampler and steps) or a sampler name (then ``steps``).
    :param schedule: the model's noise schedule (for the DDPM timesteps and the sigma range).
    """
    if isinstance(strategy, Strategy):
        sampler, n = strategy.sampler, strategy.steps if steps is None else steps
    else:
        sampler, n = canonical_sampler(strategy), steps
    if n is None or n < 1:
        raise StrategyError(f"get_sigmas needs steps >= 1, got {n}")
    if sampler in ("ddpm", "ddim"):
        return _append_zero(schedule.sigmas[respaced_timesteps(schedule.T, n)])
    if sampler == "edm":
        return get_sigmas_karras(n, schedule.sigma_min, schedule.sigma_max)
    return get_sigmas_logsnr(n, schedule.sigma_min, schedule.sigma_max)


# ---------------------------------------------------------------------------------------- samplers
def _check(sigmas: Tensor, strategy: Strategy, start: int = 0) -> None:
    if sigmas.ndim != 1 or len(sigmas) != strategy.steps + 1:
        raise StrategyError(
            f"the sigma grid has {len(sigmas) - 1} steps but the strategy has {strategy.steps}: "
            "build the grid with get_sigmas(strategy, schedule)"
        )
    if not 0 <= start <= strategy.steps:
        raise StrategyError(f"a start step must be in 0..{strategy.steps}, got {start}")


def _call(denoiser: Denoiser, x: Tensor, sigma: float, width: float, y: Tensor | None) -> Tensor:
    """One network evaluation at a scalar ``sigma`` for the whole batch."""
    return denoiser(x, torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device), width, y)


def _step_start(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    strategy: Strategy,
    i: int,
    y: Tensor | None,
    callback: Callback | None,
    memory: Tensor | None = None,
) -> tuple[float, float, float, Tensor]:
    """The first evaluation of sampler step ``i``, shared by every sampler.

    Calls the denoiser at ``sigmas[i]`` and the strategy's width of step ``i``, reports progress (with
    the :class:`SamplerState` before the step: ``x`` and the sampler's ``memory``), and returns
    ``(sigma, sigma_next, width, denoised)``.
    """
    sigma, sigma_next, width = float(sigmas[i]), float(sigmas[i + 1]), strategy.width_at(i)
    denoised = _call(denoiser, x, sigma, width, y)
    if callback is not None:
        callback(
            {
                "i": i,
                "steps": strategy.steps,
                "x": x,
                "sigma": sigma,
                "sigma_next": sigma_next,
                "width": width,
                "denoised": denoised,
                "state": SamplerState(i, x, memory),
            }
        )
    return sigma, sigma_next, width, denoised


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step ``sigma -> sigma_next`` into a deterministic part and fresh noise.

    DDIM (Song et al. 2021, eq. 16) with ``sigma_eta^2 = eta^2 (1-abar')/(1-abar) (1-abar/abar')``
    becomes, in the VE view, ``sigma_up = eta * sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)`` and
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)`` (k-diffusion's ``get_ancestral_step``).

    :return: ``(sigma_down, sigma_up)``.
    """
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    strategy: Strategy,
    *,
    eta: float = 0.0,
    noise: NoiseFn | None = None,
    y: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
) -> Tensor:
    """DDIM (Song et al. 2021) in the VE view; ``eta = 0`` is deterministic, ``eta = 1`` is DDPM.

    :param x: ``[N, C, H, W]`` state at ``sigmas[start]`` (the initial noise when ``start == 0``).
    :param sigmas: ``[steps + 1]`` grid from :func:`get_sigmas` (DDPM timesteps).
    :param noise: ``noise(i)`` standard normal like ``x``; required when ``eta > 0``.
    :param start: the first step to run (resuming a :class:`SamplerState`).
    :return: ``[N, C, H, W]`` samples at sigma = ``sigmas[-1]`` (0).
    """
    _check(sigmas, strategy, start)
    if eta > 0 and noise is None:
        raise ValueError("sample_ddim with eta > 0 needs noise=... (a function of the step index)")
    for i in range(start, strategy.steps):
        sigma, sigma_next, width, denoised = _step_start(denoiser, x, sigmas, strategy, i, y, callback)
        # 1. eps_hat = (x - x0_hat) / sigma;  x' = x0_hat + sigma_down * eps_hat  (DDIM eq. 12, VE view)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + (sigma_down / sigma) * (x - denoised)
        # 2. fresh noise: + sigma_up * z  (DDIM eq. 12's sigma_t * eps_t, divided by sqrt(abar'))
        if sigma_up > 0:
            x = x + sigma_up * noise(i)  # type: ignore[misc]
    return x


def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    strategy: Strategy,
    *,
    noise: NoiseFn,
    y: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on the (respaced) timestep grid.

    DDIM with ``eta = 1`` samples exactly DDPM's posterior ``q(x_{t'} | x_t, x0_hat)`` (mean eq. 7,
    variance ``beta_tilde = (1 - abar')/(1 - abar) (1 - abar/abar')``); with all ``T`` steps it is the
    original 1000-step chain. Arguments as in :func:`sample_ddim`.
    """
    return sample_ddim(
        denoiser, x, sigmas, strategy, eta=1.0, noise=noise, y=y, callback=callback, start=start
    )


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    strategy: Strategy,
    *,
    y: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
) -> Tensor:
    """EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Alg. 1, no churn).

    Step ``i`` evaluates the denoiser at ``sigmas[i]`` and, unless ``sigmas[i+1] == 0`` (the last
    step, plain Euler), again at ``sigmas[i+1]``; **both at the strategy's width of step i**.
    Arguments as in :func:`sample_ddim`; ``2 * steps - 1`` network calls.
    """
    _check(sigmas, strategy, start)
    for i in range(start, strategy.steps):
        sigma, sigma_next, width, denoised = _step_start(denoiser, x, sigmas, strategy, i, y, callback)
        # 1. d_i = (x_i - D(x_i; sigma_i)) / sigma_i  (Alg. 1, l. 5-6)
        #    Euler: x' = x_i + (sigma_{i+1} - sigma_i) d_i  (Alg. 1, l. 7)
        d = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * d
        if sigma_next > 0:
            # 2. 2nd-order correction: d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1},
            #    x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d') / 2  (Alg. 1, l. 8-11)
            d_next = (x_next - _call(denoiser, x_next, sigma_next, width, y)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    strategy: Strategy,
    *,
    y: Tensor | None = None,
    callback: Callback | None = None,
    start: int = 0,
    old_denoised: Tensor | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep 2nd order, data prediction.

    With ``lambda = -log sigma`` and ``h = lambda' - lambda``:
    ``x' = (sigma'/sigma) x - (e^{-h} - 1) D_i`` where ``D_i = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``,
    ``r = h_{i-1} / h`` (first step: ``D_0 = x0_0``); the last step (sigma' = 0) returns ``x0_hat``.
    Arguments as in :func:`sample_ddim`; one network call per step. Resuming at ``start > 0`` needs
    ``old_denoised``, the ``x0_hat`` of step ``start - 1`` (:attr:`SamplerState.denoised`).
    """
    _check(sigmas, strategy, start)
    if start > 0 and old_denoised is None:
        raise StrategyError("resuming DPM-Solver++(2M) after step 0 needs the previous step's denoised")
    for i in range(start, strategy.steps):
        sigma, sigma_next, width, denoised = _step_start(
            denoiser, x, sigmas, strategy, i, y, callback, memory=old_denoised
        )
        if sigma_next == 0:
            # 1. final step to sigma = 0: lambda' = inf, the update reduces to x' = x0_hat
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            d = denoised
            if old_denoised is not None:
                # 2. second-order multistep correction (Alg. 2, l. 5-6)
                r = math.log(float(sigmas[i - 1]) / sigma) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            # 3. x' = (sigma'/sigma) x - expm1(-h) D  (DPM-Solver++ eq. 10 in the VE view)
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_denoised = denoised
    return x


# ---------------------------------------------------------------------------------------- noise
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    """SplitMix64 finalizer (Steele et al. 2014): a bijective 64-bit mixer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def noise_seed(seed: int, draw: int) -> int:
    """The generator seed of draw ``draw`` of sample ``seed`` (0 = initial noise, i + 1 = step i)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (draw & _MASK64))


class SeededNoise:
    """Counter-based per-sample noise: draw ``k`` of sample ``s`` depends only on ``(s, k)``.

    ``initial()`` is draw 0; ``self(i)`` is the noise of sampler step ``i`` (draw ``i + 1``). Draws come
    in blocks of ``B = max(1, 4096 // numel(shape))`` consecutive draws: block ``b`` of sample ``s`` is
    ``torch.randn((B, *shape))`` from a CPU generator seeded with ``noise_seed(s, b)`` (for images,
    ``B = 1``: one seeded generator call per draw; tiny toy shapes share a call across many steps). The
    batch is the stack of its samples' draws, moved to ``device``, so results do not depend on batching.

    :param seeds: one integer seed per sample.
    :param shape: per-sample shape, e.g. ``(C, H, W)``.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        shape: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.seeds = [int(s) for s in seeds]
        self.shape = tuple(int(d) for d in shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.block = max(1, 4096 // max(1, math.prod(self.shape)))
        self._generator = torch.Generator()
        self._cache: tuple[int, Tensor] | None = None  # (block index, [N, B, *shape]) memo

    def _block(self, b: int) -> Tensor:
        if self._cache is None or self._cache[0] != b:
            out = torch.empty((len(self.seeds), self.block, *self.shape))
            for row, seed in zip(out, self.seeds, strict=True):
                self._generator.manual_seed(noise_seed(seed, b))
                torch.randn((self.block, *self.shape), generator=self._generator, out=row)
            self._cache = (b, out)
        return self._cache[1]

    def draw(self, k: int) -> Tensor:
        """Draw ``k`` of every sample: ``[N, *shape]``."""
        b, offset = divmod(k, self.block)
        return self._block(b)[:, offset].to(device=self.device, dtype=self.dtype)

    def initial(self) -> Tensor:
        """The initial noise ``[N, *shape]`` (draw 0)."""
        return self.draw(0)

    def __call__(self, i: int) -> Tensor:
        """The noise of sampler step ``i`` ``[N, *shape]`` (draw ``i + 1``)."""
        return self.draw(i + 1)


# ---------------------------------------------------------------------------------------- entry point
def run_sampler(
    denoiser: Denoiser,
    x: Tensor | SamplerState,
    sigmas: Tensor,
    strategy: Strategy,
    *,
    noise: NoiseFn | None = None,
    eta: float | None = None,
    y: Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Dispatch to the sampler the strategy names (``eta`` applies to ``ddim`` only; default 0).

    :param x: the initial state at ``sigmas[0]``, or a :class:`SamplerState` to go on from.
    """
    state = x if isinstance(x, SamplerState) else SamplerState(0, x)
    x = state.x
    common: dict[str, Any] = {"y": y, "callback": callback, "start": state.i}
    if eta is not None and strategy.sampler != "ddim":
        raise ConfigError(f"eta applies to the ddim sampler only, not {strategy.sampler}")
    if strategy.sampler == "ddpm":
        return sample_ddpm(denoiser, x, sigmas, strategy, noise=noise, **common)  # type: ignore[arg-type]
    if strategy.sampler == "ddim":
        return sample_ddim(denoiser, x, sigmas, strategy, eta=eta or 0.0, noise=noise, **common)
    if strategy.sampler == "edm":
        return sample_heun(denoiser, x, sigmas, strategy, **common)
    return sample_dpmpp_2m(denoiser, x, sigmas, strategy, old_denoised=state.denoised, **common)


def sample(
    denoiser: Denoiser,
    strategy: Strategy,
    shape: Sequence[int],
    seeds: Sequence[int],
    *,
    y: Tensor | None = None,
    callback: Callback | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    schedule: NoiseSchedule | None = None,
    eta: float | None = None,
    clip: bool = True,
    dtype: torch.dtype = torch.float32,
    start: SamplerState | None = None,
) -> Tensor:
    """Sample ``len(seeds)`` images with a step-aware strategy.

    The initial state is ``sqrt(1 + sigma_max^2) z`` (DDPM's prior ``x_T ~ N(0, I)`` in the VE view),
    ``z`` and every per-step noise drawn from the sample's seed (:class:`SeededNoise`).

    :param denoiser: VE denoiser (e.g. :class:`VPDenoiser`); its ``.schedule`` is used unless given.
    :param shape: per-image shape ``(C, H, W)``; a full ``(N, C, H, W)`` with ``N == len(seeds)`` is
        accepted too.
    :param seeds: one integer per image.
    :param y: class labels ``[N]`` (long) aligned with ``seeds``, or None.
    :param callback: called once per sampler step with the sampler's dict plus ``batch`` (index),
        ``batches``, ``start`` (index of the batch's first image) and ``n`` (total images).
    :param batch_size: images per batch (default: all at once); the result does not depend on it.
    :param eta: DDIM's eta (``ddim`` only; default 0).
    :param clip: clamp the result to [-1, 1].
    :param start: go on from this state (``callback``'s ``info["state"]`` of a run with the same seeds,
        labels and first ``start.i`` widths) instead of the initial noise; all seeds in one batch.
    :return: ``[N, C, H, W]`` tensor on ``device``.
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        if shape[0] != n:
            raise ConfigError(f"shape {shape} is for {shape[0]} images but {n} seeds were given")
        shape = shape[1:]
    if y is not None and len(y) != n:
        raise ConfigError(f"{len(y)} class labels for {n} seeds")
    schedule = schedule if schedule is not None else getattr(denoiser, "schedule", None)
    if schedule is None:
        raise ConfigError("sample() needs a noise schedule: pass schedule=... or a denoiser with .schedule")
    sigmas = get_sigmas(strategy, schedule)
    batch_size = n if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    batches = math.ceil(n / batch_size)
    if start is not None and (batches != 1 or len(start.x) != n):
        raise ConfigError(f"a start state holds {len(start.x)} images: sample all {n} seeds in one batch")
    outputs = []
    for b, first in enumerate(range(0, n, batch_size)):
        noise = SeededNoise(seeds[first : first + batch_size], shape, device, dtype)
        x: Tensor | SamplerState = (
            noise.initial() * math.sqrt(1.0 + float(sigmas[0]) ** 2) if start is None else start
        )
        y_batch = None if y is None else y[first : first + batch_size].to(device)
        cb = None
        if callback is not None:
            extra = {"batch": b, "batches": batches, "start": first, "n": n}

            def cb(info: dict[str, Any], extra: dict[str, Any] = extra) -> None:
                callback(info | extra)

        x = run_sampler(denoiser, x, sigmas, strategy, noise=noise, eta=eta, y=y_batch, callback=cb)
        outputs.append(x.clamp(-1.0, 1.0) if clip else x)
    return torch.cat(outputs) if outputs else torch.empty((0, *shape), device=device, dtype=dtype)
