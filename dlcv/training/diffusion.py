"""The diffusion family: class-conditional DDPM with label dropout for classifier-free guidance and an EMA copy.

L_simple = || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t, y) ||^2 (Ho et al. 2020 eq. 14),
with y replaced by the null class with probability p_uncond (Ho & Salimans 2022).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dlcv.config import RunConfig, from_dict, to_dict
from dlcv.data.loaders import load_split, to_model_range
from dlcv.diffusion import NoiseSchedule, ScheduleConfig, q_sample
from dlcv.metadata import SamplingConfig
from dlcv.models import build_model
from dlcv.sampling import sample_diffusion
from dlcv.training.common import run_record
from dlcv.training.engine import Algorithm, Context


@dataclass
class DiffusionMethod:
    """cfg.method of a diffusion run (a key that is not a field raises)."""

    p_uncond: float = 0.1  # probability that a label is replaced by the null class (classifier-free guidance)
    guidance: float = 2.0  # the guidance weight w the checkpoint records for sampling
    warmup_steps: int = 200  # linear learning-rate warm-up
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_uncond <= 1.0 or self.warmup_steps < 0:
            raise ValueError(f"method.p_uncond must be in [0, 1] and method.warmup_steps >= 0, got {self.p_uncond}, "
                             f"{self.warmup_steps}")


def schedule_config(cfg: RunConfig) -> ScheduleConfig:
    """The run's forward process (method.schedule)."""
    return from_dict(DiffusionMethod, dict(cfg.method)).schedule


class Diffusion(Algorithm):
    """eps-prediction with AdamW, gradient clipping at 1 and an EMA (train.ema_decay) that is what ships."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.method = from_dict(DiffusionMethod, dict(cfg.method))
        self.schedule = NoiseSchedule(self.method.schedule)
        self.x_train, self.y_train = load_split(cfg.data, "train")
        if self.y_train is None:
            raise ValueError("class-conditional diffusion needs labels: use a digits domain")
        self.model = ctx.precision.place(build_model(cfg.architecture, cfg.model))
        self.ema = ctx.ema(self.model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                     weight_decay=cfg.train.weight_decay)
        warmup = max(1, self.method.warmup_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: min(1.0, (step + 1) / warmup))

    def state_modules(self) -> dict[str, Any]:
        ema = {"ema": self.ema} if self.ema is not None else {}
        return {"model": self.model, **ema, "opt": self.opt, "sched": self.sched}

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        self.gen = torch.Generator().manual_seed(self.ctx.seed(1 + start))  # t, eps and label dropout, on the CPU
        self.model.train()

    def train_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train

    def update(self, step: int, batches) -> dict[str, torch.Tensor]:
        x0, y = next(batches)
        b, device, fmt = x0.shape[0], self.ctx.device, self.ctx.precision.fmt
        x0 = to_model_range(x0)
        t = torch.randint(0, self.schedule.num_timesteps, (b,), generator=self.gen)
        eps = torch.randn(x0.shape, generator=self.gen)
        drop = torch.rand(b, generator=self.gen) < self.method.p_uncond
        y = torch.where(drop, torch.full_like(y, self.model.config.null_class), y)
        x_t = q_sample(self.schedule, x0, t, eps)
        x_t, t, y, eps = x_t.to(device, memory_format=fmt), t.to(device), y.to(device), eps.to(device)
        with self.ctx.precision.autocast():
            eps_hat = self.model(x_t, t, y)
        loss = F.mse_loss(eps_hat.float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return {"loss": loss}

    def sample(self) -> tuple[torch.Tensor, int]:
        """Eight DDIM-25 samples per digit (rows = digits) from a fixed seed."""
        network, was = self.shipped()[0], self.shipped()[0].training
        labels = torch.arange(10).repeat_interleave(8)
        images, _ = sample_diffusion(network, self.schedule, labels, seed=0, steps=25, device=self.ctx.device,
                                     amp=self.cfg.train.amp)
        network.train(was)
        return images, 8

    def shipped(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        network = self.ema.module if self.ema is not None else self.model
        return network, {"schedule": to_dict(self.schedule.config),
                         "sampling": asdict(SamplingConfig(guidance=self.method.guidance))}

    def export(self, out, done: int):
        from dlcv import checkpoint

        network, meta = self.shipped()
        return checkpoint.save(network, out, {"schedule": meta["schedule"], "run": run_record(self.cfg),
                                              "sampling": meta["sampling"]})
