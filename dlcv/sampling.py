"""Images from trained models. Noise comes from per-image CPU generators (seed + i), so a seed gives the same
noise for image i on every machine and for every batch size; the global RNG is never touched."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from dlcv import precision
from dlcv.diffusion import (NoiseSchedule, ddim_step, ddpm_step, dpm_solver_2m_step, guided_eps, predict_x0,
                            sampler_timesteps)
from dlcv.metadata import SamplingConfig


def per_image_noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(generators), *shape) standard normal noise, row i drawn from generators[i] on the CPU."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """CPU generators for images start .. start+count-1 of a run seeded with `seed`."""
    return [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]


@torch.no_grad()
def predict_eps(model: nn.Module, x_t: torch.Tensor, t: int, labels: torch.Tensor, guidance: float,
                eps_uncond: torch.Tensor | None = None) -> torch.Tensor:
    """eps_theta(x_t, t, y) with classifier-free guidance; w = 0 runs the conditional model alone. A given
    `eps_uncond` is used instead of running the unconditional model (see sample_diffusion's uncond_every)."""
    return predict_eps_parts(model, x_t, t, labels, guidance, eps_uncond)[0]


def predict_eps_parts(model: nn.Module, x_t: torch.Tensor, t: int, labels: torch.Tensor, guidance: float,
                      eps_uncond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(guided eps, the eps_uncond it used), so that a sampler can reuse eps_uncond on the next step."""
    tt = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    if guidance == 0:
        return model(x_t, tt, labels).float(), None
    if eps_uncond is not None:
        return guided_eps(model(x_t, tt, labels).float(), eps_uncond, guidance), eps_uncond
    null = torch.full_like(labels, model.config.null_class)
    eps = model(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([labels, null])).float()
    eps_cond, eps_uncond = eps.chunk(2)
    return guided_eps(eps_cond, eps_uncond, guidance), eps_uncond


@torch.no_grad()
def sample_diffusion(model: nn.Module, schedule: NoiseSchedule, labels: torch.Tensor, seed: int = 0,
                     sampler: str = SamplingConfig.sampler, steps: int = SamplingConfig.steps,
                     eta: float = SamplingConfig.eta, guidance: float = SamplingConfig.guidance,
                     batch_size: int = 200, device: str | torch.device = "cpu", amp: str | bool = "auto",
                     keep: tuple[int, ...] = (), progress: Callable[[int, int], None] | None = None,
                     guidance_interval: tuple[int, int] | None = None,
                     uncond_every: int = SamplingConfig.uncond_every,
                     channels_last: str | bool = "auto") -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Generate one image per label, in [-1, 1] on the CPU (N, C, H, W).

    sampler="ddpm" runs all T ancestral steps; "ddim" runs `steps` DDIM steps with `eta`; "dpm++2m" runs `steps`
    steps of the second-order multistep DPM-Solver++(2M) (deterministic; `eta` does not apply), which needs fewer
    steps than DDIM for the same quality (Lu et al. 2022).
    `keep` lists timesteps whose x_t (before the step from t) is returned too, as {t: (N, C, H, W)}: the
    reverse-process figure. `guidance_interval=(lo, hi)` applies guidance only for lo <= t <= hi and runs the
    conditional model alone elsewhere (Kynkaanniemi et al. 2024): one network call instead of two on those steps.
    `uncond_every=k` runs the unconditional model on every k-th guided step only and reuses its last eps_uncond in
    between (it changes little from one DDIM step to the next): k = 2 makes 1.5 network calls per step instead of 2.
    k = 1 is exact classifier-free guidance. The default batch_size (200, so 400 through the network with
    guidance) is the fastest on a 2-core CPU: 1000 at once is 1.4x slower per image (caches).
    `amp` ("auto" | "bf16" | "fp32") and `channels_last` ("auto" | "true" | "false") pick precision and layout;
    auto settles them by a timed probe on this machine (dlcv.precision), cached.
    """
    SamplingConfig(sampler=sampler, steps=steps, eta=eta, guidance=guidance, uncond_every=uncond_every)  # checks
    c, size = model.config.in_channels, model.config.image_size
    timesteps = sampler_timesteps(sampler, schedule, steps)
    needs_noise = sampler == "ddpm" or (sampler == "ddim" and eta > 0)
    outputs, kept = [], {t: [] for t in keep}
    total = len(labels) * len(timesteps)
    done = 0
    model.eval()
    first = labels[:batch_size].to(device)
    probe_x = torch.zeros(len(first), c, size, size, device=device)
    choice = precision.for_inference(
        model, f"sample guidance={guidance > 0}", len(first),
        lambda c: predict_eps_parts(model, probe_x.contiguous(memory_format=c.memory_format), timesteps[0], first,
                                    guidance),
        device, amp, channels_last)
    for start in range(0, len(labels), batch_size):
        y = labels[start:start + batch_size].to(device)
        gens = image_generators(seed, start, len(y))
        x = per_image_noise(gens, (c, size, size)).to(device)  # x_T
        eps_uncond, guided_steps = None, 0
        x0_last = None  # DPM-Solver++(2M)'s previous data prediction
        for i, t in enumerate(timesteps):
            if t in kept:
                kept[t].append(x.float().cpu())  # x_t before the step from t
            with choice.autocast(device):
                in_interval = guidance_interval is None or guidance_interval[0] <= t <= guidance_interval[1]
                reuse = eps_uncond if guided_steps % uncond_every else None
                x_in = x.contiguous(memory_format=choice.memory_format)
                eps, eps_uncond = predict_eps_parts(model, x_in, t, y, guidance if in_interval else 0.0, reuse)
                guided_steps += eps_uncond is not None
            noise = per_image_noise(gens, (c, size, size)).to(device) if needs_noise and t > 0 else None
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else 0 if sampler == "dpm++2m" else -1
            if sampler == "ddpm":
                x = ddpm_step(schedule, x, t, eps, noise)
            elif sampler == "ddim":
                x = ddim_step(schedule, x, t, t_prev, eps, eta, noise)
            else:
                tt = torch.full((x.shape[0],), t, dtype=torch.long)
                x0 = predict_x0(schedule, x.float(), tt, eps).clamp(-1, 1)
                x = dpm_solver_2m_step(schedule, x.float(), t, t_prev, x0, x0_last, timesteps[i - 1] if i else None)
                x0_last = x0
            done += len(y)
            if progress is not None:
                progress(done, total)
        outputs.append(x.clamp(-1, 1).cpu())
    return torch.cat(outputs), {t: torch.cat(v) for t, v in kept.items() if v}


@torch.no_grad()
def sample_gan(generator: nn.Module, n: int, seed: int = 0, labels: torch.Tensor | None = None,
               batch_size: int = 500, device: str | torch.device = "cpu", truncation: float | None = None,
               amp: str | bool = "auto", channels_last: str | bool = "auto") -> torch.Tensor:
    """n images G(z_i, y_i) in [-1, 1] on the CPU (n, C, H, W); z_i comes from a CPU generator seeded seed + i.

    `labels` (n,) are required by a class-conditional generator. `truncation` resamples every entry of z with
    |z| > truncation until none is left (the truncation trick of Brock et al. 2019, sec. 3.1), per image.
    `amp` / `channels_last` as in sample_diffusion.
    """
    if generator.config.num_classes > 0 and (labels is None or len(labels) != n):
        raise ValueError(f"this generator is class-conditional: pass labels, (n={n},) ints in "
                         f"[0, {generator.config.num_classes})")
    if truncation is not None and truncation <= 0:
        raise ValueError(f"truncation={truncation} must be > 0, or None for no truncation")
    generator.eval()
    probe_z = torch.zeros(min(batch_size, n), generator.z_dim, device=device)
    probe_y = labels[:len(probe_z)].to(device) if labels is not None else None
    choice = precision.for_inference(generator, "sample", len(probe_z), lambda c: generator(probe_z, probe_y),
                                     device, amp, channels_last)
    outputs = []
    for start in range(0, n, batch_size):
        gens = image_generators(seed, start, min(batch_size, n - start))
        z = per_image_noise(gens, (generator.z_dim,))  # (B, z_dim)
        if truncation is not None:
            for z_i, g in zip(z, gens):  # resample from the image's own generator, so image i stays seed + i
                while (outside := z_i.abs() > truncation).any():
                    z_i[outside] = torch.randn(int(outside.sum()), generator=g)
        y = labels[start:start + len(gens)].to(device) if labels is not None else None
        with choice.autocast(device):
            outputs.append(generator(z.to(device), y).float().clamp(-1, 1).cpu())
    return torch.cat(outputs)


LATENT_PRIOR_NAME = "latent_prior.safetensors"  # next to a VAE's model.safetensors: {"mean", "scale_tril"}


@torch.no_grad()
def fit_latent_prior(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """A full-covariance Gaussian fitted to the posterior means mu(x) of training images (N, C, H, W) in [-1, 1]:
    the ex-post density estimate of Ghosh et al. 2020 (sec. 4), which samples where the decoder was trained
    instead of where N(0, I) puts mass the aggregate posterior leaves empty. {"mean": (D,), "scale_tril": (D, D)}."""
    model.eval()
    mu = torch.cat([model.encode(images[i:i + batch_size])[0].float() for i in range(0, len(images), batch_size)])
    mu = mu.flatten(1).double()  # (N, D)
    cov = torch.cov(mu.T) + 1e-5 * torch.eye(mu.shape[1], dtype=torch.float64)  # jitter keeps Cholesky stable
    return {"mean": mu.mean(0).float().contiguous(), "scale_tril": torch.linalg.cholesky(cov).float().contiguous()}


@torch.no_grad()
def sample_vae(model: nn.Module, n: int, seed: int = 0, batch_size: int = 500, device: str | torch.device = "cpu",
               temperature: float = 1.0, prior: dict[str, torch.Tensor] | None = None, amp: str | bool = "auto",
               channels_last: str | bool = "auto") -> torch.Tensor:
    """n images decode(z_i) in [-1, 1] on the CPU, z_i = temperature * e_i with e_i ~ N(0, I) from a CPU generator
    seeded seed + i; with a fitted `prior` (fit_latent_prior), z_i = mean + temperature * scale_tril e_i."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    model.eval()
    probe_z = torch.zeros(min(batch_size, n), model.z_dim, device=device)
    choice = precision.for_inference(model, "decode", len(probe_z), lambda c: model.decode(probe_z), device, amp,
                                     channels_last)
    outputs = []
    for start in range(0, n, batch_size):
        e = per_image_noise(image_generators(seed, start, min(batch_size, n - start)), (model.z_dim,))  # (B, D)
        z = temperature * e if prior is None else prior["mean"] + temperature * e @ prior["scale_tril"].T
        with choice.autocast(device):
            outputs.append(model.decode(z.to(device)).float().clamp(-1, 1).cpu())
    return torch.cat(outputs)
