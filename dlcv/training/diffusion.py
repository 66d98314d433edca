"""train_diffusion: class-conditional DDPM with label dropout for classifier-free guidance and an EMA copy.

L_simple = || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t, y) ||^2 (Ho et al. 2020 eq. 14),
with y replaced by the null class with probability p_uncond (Ho & Salimans 2022).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm

from dlcv import checkpoint
from dlcv.config import RunConfig, from_dict, to_dict
from dlcv.data.loaders import infinite, load_split, make_loader, to_image_range, to_model_range
from dlcv.diffusion import NoiseSchedule, ScheduleConfig, q_sample
from dlcv.metadata import SamplingConfig
from dlcv.models import build_model
from dlcv.runtime import autocast, memory_format, pick_device, seed_everything, set_deterministic
from dlcv.sampling import sample_diffusion
from dlcv.training.common import MetricLog, ema_copy, every, load_state, run_dir, save_state

log = logging.getLogger(__name__)


def schedule_config(cfg: RunConfig) -> ScheduleConfig:
    """The run's forward process, from cfg.method["schedule"] (a dict of ScheduleConfig fields)."""
    return from_dict(ScheduleConfig, dict(cfg.method.get("schedule", {})))


def train_diffusion(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """Train eps_theta on one digits domain; ship the EMA network with its schedule; return the checkpoint path."""
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    fmt = memory_format(cfg.train.channels_last)
    p_uncond = float(cfg.method.get("p_uncond", 0.1))
    schedule = NoiseSchedule(schedule_config(cfg))
    x_train, y_train = load_split(cfg.data, "train")
    if y_train is None:
        raise ValueError("class-conditional diffusion needs labels: use a digits domain")
    model = build_model(cfg.architecture, cfg.model).to(device, memory_format=fmt)
    ema = ema_copy(model, cfg.train.ema_decay or 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            weight_decay=cfg.train.weight_decay)
    warmup = max(1, int(cfg.method.get("warmup_steps", 200)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    start, _ = load_state(cfg, {"model": model, "ema": ema, "opt": opt, "sched": sched})
    batches = infinite(make_loader(x_train, y_train, batch_size=cfg.train.batch_size, seed=cfg.train.seed + start))
    gen = torch.Generator().manual_seed(cfg.train.seed + 1 + start)  # t, eps and label dropout, on the CPU
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=cfg.name,
               disable=not cfg.train.progress)
    metrics = MetricLog(run_dir(cfg) / "metrics.jsonl", bar, start)
    samples_dir = run_dir(cfg) / "samples"
    model.train()
    for step in bar:
        x0, y = next(batches)
        b = x0.shape[0]
        x0 = to_model_range(x0)
        t = torch.randint(0, schedule.num_timesteps, (b,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        drop = torch.rand(b, generator=gen) < p_uncond
        y = torch.where(drop, torch.full_like(y, model.config.null_class), y)
        x_t = q_sample(schedule, x0, t, eps)
        x_t, t, y, eps = x_t.to(device, memory_format=fmt), t.to(device), y.to(device), eps.to(device)
        with autocast(device, cfg.train.amp):
            eps_hat = model(x_t, t, y)
        loss = F.mse_loss(eps_hat.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        metrics.add({"loss": loss})
        last = step + 1 == cfg.train.steps
        if every(step, cfg.train.log_every) or last:
            metrics.flush(step + 1)
        if every(step, cfg.train.sample_every) or last:
            labels = torch.arange(10).repeat_interleave(8)  # rows = digits
            images, _ = sample_diffusion(ema.module, schedule, labels, seed=0, steps=25, device=device,
                                         amp=cfg.train.amp)
            samples_dir.mkdir(parents=True, exist_ok=True)
            save_image(to_image_range(images), samples_dir / f"step_{step + 1:06d}.png", nrow=8)
            ema.module.train(False)
        if every(step, cfg.train.save_every) or last:
            save_state(cfg, step + 1, {"model": model, "ema": ema, "opt": opt, "sched": sched})
    out = Path(out) if out else run_dir(cfg) / "checkpoint"
    checkpoint.save(ema.module, out, {"schedule": to_dict(schedule.config), "run": to_dict(cfg),
                               "sampling": asdict(SamplingConfig(guidance=float(cfg.method["guidance"]))
                                                  if "guidance" in cfg.method else SamplingConfig())})
    log.info("%s -> %s", cfg.name, out)
    return out
