"""Noise schedule and the DDPM / DDIM / DPM-Solver++(2M) update rules: maths only, no nn.Module, nothing stored
in checkpoints.

Notation of Ho et al. 2020 (DDPM) and Song et al. 2021 (DDIM): beta_t, alpha_t = 1 - beta_t,
alpha_bar_t = prod_{s<=t} alpha_s, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.
DPM-Solver++ (Lu et al. 2022) writes the same marginals as x_t = a_t x0 + s_t eps with a_t = sqrt(alpha_bar_t)
(the paper's alpha_t) and s_t = sqrt(1 - alpha_bar_t) (its sigma_t), and lambda_t = log(a_t / s_t), the half
log-SNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from dlcv.config import check_literals


@dataclass
class ScheduleConfig:
    """The forward process; the arrays are computed from this, so a checkpoint cannot override the schedule code."""

    num_timesteps: int = 1000
    kind: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4  # linear only (Ho et al. 2020)
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        check_literals(self, "schedule")


class NoiseSchedule:
    """betas, alphas and alpha_bar (float64 for accuracy, handed out as float32 on request)."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        T = config.num_timesteps
        if config.kind == "linear":
            betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
        else:  # Nichol & Dhariwal 2021 eq. (17), s = 0.008, betas clipped at 0.999
            s = 0.008
            steps = torch.arange(T + 1, dtype=torch.float64) / T
            f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)

    @property
    def num_timesteps(self) -> int:
        return self.config.num_timesteps

    def at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, 1, 1) to broadcast over images `like`."""
        return values.to(like.device)[t.to(like.device)].float().reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020 eq. 4)."""
    ab = schedule.at(schedule.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def predict_x0(schedule: NoiseSchedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 implied by a noise prediction: (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
    ab = schedule.at(schedule.alpha_bar, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()


def ddpm_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, eps: torch.Tensor, noise: torch.Tensor,
              clip: bool = True) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1}: the posterior q(x_{t-1} | x_t, x0_hat) of Ho et al. 2020 eqs. (6)-(7),
    with x0_hat from eps (clipped to [-1, 1]) and variance beta_tilde_t; no noise at t = 0."""
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
    x0 = predict_x0(schedule, x_t, tt, eps)
    if clip:
        x0 = x0.clamp(-1, 1)
    ab_t = schedule.alpha_bar[t]
    ab_prev = schedule.alpha_bar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    beta_t = schedule.betas[t]
    coef_x0 = float(ab_prev.sqrt() * beta_t / (1 - ab_t))
    coef_xt = float(schedule.alphas[t].sqrt() * (1 - ab_prev) / (1 - ab_t))
    mean = coef_x0 * x0 + coef_xt * x_t
    if t == 0:
        return mean
    var = float(beta_t * (1 - ab_prev) / (1 - ab_t))
    return mean + math.sqrt(var) * noise


def ddim_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, eps: torch.Tensor, eta: float,
              noise: torch.Tensor | None, clip: bool = True) -> torch.Tensor:
    """DDIM update x_t -> x_{t_prev}, Song et al. 2021 eq. (12) with sigma from eq. (16); eta=0 is deterministic,
    eta=1 matches DDPM's variance. t_prev = -1 means "to x0"."""
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long)
    x0 = predict_x0(schedule, x_t, tt, eps)
    if clip:
        x0 = x0.clamp(-1, 1)
        ab = schedule.at(schedule.alpha_bar, tt, x_t)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # keep eps consistent with the clipped x0
    ab_t = float(schedule.alpha_bar[t])
    ab_prev = float(schedule.alpha_bar[t_prev]) if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev))
    direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    x_prev = math.sqrt(ab_prev) * x0 + direction
    if sigma > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """`steps` timesteps from T-1 down to 0, evenly spaced (the "linspace" spacing of Song et al. 2021)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps={steps} must be between 1 and the schedule's {num_timesteps} timesteps")
    return [int(round(x)) for x in torch.linspace(num_timesteps - 1, 0, steps).tolist()]


def dpm_timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """The `steps` timesteps where DPM-Solver++ calls the network: `steps` + 1 points evenly spaced in half-log-SNR
    lambda_t from t = T-1 to t = 0 (Lu et al. 2022's "logSNR" spacing, their choice for low-resolution images; on the
    shipped digits model 8 steps reach accuracy 0.995 with it, 0.977 spaced evenly in t), each the nearest timestep,
    less the last, t_0 = 0, which the last update lands on without a network call (its x_0 is the sample)."""
    T = schedule.num_timesteps
    if not 1 <= steps < T:
        raise ValueError(f"steps={steps} must be between 1 and {T - 1} (the schedule's timesteps less one)")
    lam = torch.tensor([half_log_snr(schedule, t) for t in range(T)])  # (T,), decreasing in t
    targets = torch.linspace(float(lam[T - 1]), float(lam[0]), steps + 1)[:-1]
    ts = [int((lam - v).abs().argmin()) for v in targets]
    # neighbours can round to one timestep where lambda moves fast (near t = 0; near t = T-1 of a cosine schedule,
    # whose last beta is clipped): push them apart downwards from T-1, then upwards from 1, so they stay distinct
    for i in range(1, len(ts)):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    ts[-1] = max(ts[-1], 1)
    for i in range(len(ts) - 2, -1, -1):
        ts[i] = max(ts[i], ts[i + 1] + 1)
    return ts


def sampler_timesteps(sampler: str, schedule: NoiseSchedule, steps: int) -> list[int]:
    """The timesteps at which a sampler calls the network, from x_T's end down: all T for "ddpm"."""
    if sampler == "ddpm":
        return list(range(schedule.num_timesteps - 1, -1, -1))
    if sampler == "dpm++2m":
        return dpm_timesteps(schedule, steps)
    return ddim_timesteps(schedule.num_timesteps, steps)


def half_log_snr(schedule: NoiseSchedule, t: int) -> float:
    """lambda_t = log(a_t / s_t) = 0.5 log(alpha_bar_t / (1 - alpha_bar_t)); +inf for t = -1 (x0 itself)."""
    if t < 0:
        return math.inf
    ab = float(schedule.alpha_bar[t])
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def dpm_solver_2m_step(schedule: NoiseSchedule, x_t: torch.Tensor, t: int, t_prev: int, x0: torch.Tensor,
                       x0_last: torch.Tensor | None, t_last: int | None) -> torch.Tensor:
    """DPM-Solver++(2M) update x_t -> x_{t_prev} from data predictions, Lu et al. 2022 Algorithm 2:

        h = lambda_{t_prev} - lambda_t,  r = h_last / h,  D = (1 + 1/(2r)) x0 - 1/(2r) x0_last,
        x_{t_prev} = (s_{t_prev} / s_t) x_t - a_{t_prev} (e^{-h} - 1) D.

    `x0` = x0_theta(x_t, t), `x0_last` = x0_theta at the previous timestep `t_last` (None on the first step: D = x0,
    the first-order DPM-Solver++(1), which is DDIM with eta = 0). t_prev = -1 means "to x0" (s = 0, lambda = inf),
    where only the first-order step is defined: it returns x0.
    """
    if t_prev < 0:
        return x0
    lam_t, lam_prev = half_log_snr(schedule, t), half_log_snr(schedule, t_prev)
    h = lam_prev - lam_t
    a_prev = math.sqrt(float(schedule.alpha_bar[t_prev]))
    s_t, s_prev = math.sqrt(1 - float(schedule.alpha_bar[t])), math.sqrt(1 - float(schedule.alpha_bar[t_prev]))
    D = x0
    if x0_last is not None and t_last is not None:
        r = (lam_t - half_log_snr(schedule, t_last)) / h
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_last
    return (s_prev / s_t) * x_t - a_prev * math.expm1(-h) * D


def guided_eps(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance, Ho & Salimans 2022 eq. (6): eps = (1 + w) eps_cond - w eps_uncond."""
    return (1 + w) * eps_cond - w * eps_uncond
