"""Discrete-time VP noise schedules (DDPM), their VE view, and the epsilon-prediction loss.

A schedule of ``T`` steps defines, for the integer timestep ``t`` in ``[0, T-1]``:

- ``betas[t]`` and ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])``  (DDPM, Ho et al. 2020, eq. 4);
- the forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``;
- its variance-exploding view ``x_ve = x_t / sqrt(abar_t) = x_0 + sigma_t eps`` with
  ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (Karras et al. 2022, "EDM", Table 1, VP column);
- the log signal-to-noise ratio ``lambda_t = log(abar_t / (1 - abar_t)) = -2 log sigma_t``.

Every table is a float64 CPU tensor of length ``T``. Samplers work on the VE sigmas; a network trained
on integer ``t`` is asked about a sigma between two table entries at a fractional ``t`` found by
linear interpolation in ``log sigma`` (as k-diffusion's ``DiscreteSchedule.sigma_to_t`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from ddsm_core.errors import ConfigError, choices_message

ScheduleKind = Literal["linear", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine")


class EpsModel(Protocol):
    """An epsilon-prediction network: ``model(x_t [N,C,H,W], t [N] float, width, y [N] | None)``."""

    def __call__(self, x: Tensor, t: Tensor, width: float = 1.0, y: Tensor | None = None) -> Tensor: ...


def _linear_betas(T: int, beta_start: float, beta_end: float) -> Tensor:
    # DDPM (Ho et al. 2020, sec. 4): betas linear from 1e-4 to 0.02 over T = 1000 steps.
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def _cosine_betas(T: int, s: float, max_beta: float = 0.999) -> Tensor:
    # Improved DDPM (Nichol & Dhariwal 2021, eq. 17):
    # abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2);
    # beta_t = 1 - abar(t+1)/abar(t), clipped at 0.999 to avoid the singularity at t = T.
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A DDPM noise schedule and its derived float64 tables (each of shape ``[T]``).

    Build it with :meth:`linear`, :meth:`cosine` or :meth:`from_dict`; two schedules are equal when
    their parameters are.

    :param kind: ``"linear"`` or ``"cosine"``.
    :param T: number of discrete timesteps.
    :param beta_start, beta_end: linear schedule's first and last beta.
    :param cosine_s: cosine schedule's offset ``s``.
    """

    kind: ScheduleKind = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    cosine_s: float = 0.008
    betas: Tensor = field(init=False, repr=False)
    alphas_cumprod: Tensor = field(init=False, repr=False)
    sigmas: Tensor = field(init=False, repr=False)
    log_sigmas: Tensor = field(init=False, repr=False)
    log_snr: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(choices_message("noise schedule", self.kind, SCHEDULES))
        if isinstance(self.T, bool) or not isinstance(self.T, int) or self.T < 2:
            raise ConfigError(f"schedule needs an integer T >= 2, got {self.T!r}")
        if self.kind == "linear":
            if not 0.0 < self.beta_start <= self.beta_end < 1.0:
                raise ConfigError(
                    "linear schedule needs 0 < beta_start <= beta_end < 1, "
                    f"got {self.beta_start}, {self.beta_end}"
                )
            betas = _linear_betas(self.T, self.beta_start, self.beta_end)
        else:
            betas = _cosine_betas(self.T, self.cosine_s)
        # abar_t = prod_{s <= t} (1 - beta_s)  (DDPM eq. 4)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # sigma_t = sqrt((1 - abar_t) / abar_t)  (EDM Table 1, VP)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()
        for name, value in (
            ("betas", betas),
            ("alphas_cumprod", alphas_cumprod),
            ("sigmas", sigmas),
            ("log_sigmas", sigmas.log()),
            ("log_snr", -2.0 * sigmas.log()),  # lambda_t = log(abar / (1 - abar))
        ):
            object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """DDPM's linear schedule (betas 1e-4 .. 0.02 over T = 1000 steps)."""
        return cls("linear", T, beta_start, beta_end)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> NoiseSchedule:
        """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021)."""
        return cls("cosine", T, cosine_s=s)

    def to_dict(self) -> dict[str, Any]:
        """The parameters, JSON-serializable (for checkpoint manifests)."""
        if self.kind == "linear":
            return {"kind": "linear", "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end}
        return {"kind": "cosine", "T": self.T, "cosine_s": self.cosine_s}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseSchedule:
        """Inverse of :meth:`to_dict`."""
        allowed = ("kind", "T", "beta_start", "beta_end", "cosine_s")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown noise schedule keys {unknown}; allowed: {', '.join(allowed)}")
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    # ----------------------------------------------------------------------------------- views
    @property
    def sigma_min(self) -> float:
        """Smallest VE sigma (t = 0)."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """Largest VE sigma (t = T-1)."""
        return float(self.sigmas[-1])

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward noising ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (DDPM eq. 4).

        :param x0: clean data, ``[N, ...]``.
        :param t: integer timesteps, ``[N]`` long in ``[0, T-1]``.
        :param noise: standard normal noise shaped like ``x0``.
        :return: ``x_t`` shaped like ``x0``, in ``x0``'s dtype.
        """
        abar = self.alphas_cumprod.to(x0.device)[t.long()]
        abar = abar.reshape(-1, *([1] * (x0.ndim - 1)))
        return (abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise).to(x0.dtype)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of a VE sigma, linear in ``log sigma`` between table entries.

        Sigmas outside ``[sigma_min, sigma_max]`` are clamped to ``t = 0`` / ``t = T-1``.

        :param sigma: ``[N]`` (any shape) positive sigmas.
        :return: float timesteps in ``[0, T-1]``, same shape, dtype and device as ``sigma``.
        """
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(torch.float64).log()
        # 1. low = index of the last table entry <= log sigma (log_sigmas increase with t)
        low = (torch.searchsorted(log_sigmas, log_sigma.contiguous(), right=True) - 1).clamp(0, self.T - 2)
        # 2. interpolation weight between low and low + 1, clamped to the table's range
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (low.to(torch.float64) + w).to(sigma.dtype)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """VE sigma of a (fractional) timestep, linear in ``log sigma``; inverse of :meth:`sigma_to_t`.

        :param t: timesteps in ``[0, T-1]``, any shape.
        :return: sigmas, same shape and device, float64 for integer input, else ``t``'s dtype.
        """
        log_sigmas = self.log_sigmas.to(t.device)
        t64 = t.to(torch.float64).clamp(0, self.T - 1)
        low = t64.floor().long().clamp(max=self.T - 2)
        w = t64 - low
        log_sigma = (1.0 - w) * log_sigmas[low] + w * log_sigmas[low + 1]
        dtype = t.dtype if t.is_floating_point() else torch.float64
        return log_sigma.exp().to(dtype)

    def eps_loss(
        self, model: EpsModel, x0: Tensor, t: Tensor, noise: Tensor, width: float, y: Tensor | None = None
    ) -> Tensor:
        """See :func:`eps_loss`."""
        return eps_loss(model, x0, t, noise, width, y, schedule=self)


def eps_loss(
    model: EpsModel,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    width: float,
    y: Tensor | None = None,
    *,
    schedule: NoiseSchedule,
) -> Tensor:
    """Plain epsilon-prediction MSE (DDPM eq. 14, "L_simple"): ``mean ||eps - eps_theta(x_t, t)||^2``.

    :param model: epsilon network ``model(x_t, t, width=..., y=...)``.
    :param x0: clean images ``[N, C, H, W]`` in [-1, 1].
    :param t: integer timesteps ``[N]`` (long) in ``[0, T-1]``.
    :param noise: standard normal ``[N, C, H, W]``.
    :param width: the width to run the model at.
    :param y: class labels ``[N]`` (long) or None.
    :param schedule: the noise schedule (also available as ``schedule.eps_loss(model, x0, ...)``).
    :return: scalar loss tensor (mean over every element).
    """
    x_t = schedule.q_sample(x0, t, noise)
    eps_hat = model(x_t, t.to(x0.dtype), width=width, y=y)
    return torch.mean((eps_hat - noise) ** 2)


def get_schedule(name: str, T: int = 1000) -> NoiseSchedule:
    """A schedule by name (``"linear"`` or ``"cosine"``); :class:`ConfigError` listing allowed otherwise."""
    if name == "linear":
        return NoiseSchedule.linear(T)
    if name == "cosine":
        return NoiseSchedule.cosine(T)
    raise ConfigError(choices_message("noise schedule", name, SCHEDULES))
