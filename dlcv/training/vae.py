"""The VAE family: the negative ELBO with a KL weight (losses.vae_loss), optional linear KL warm-up, val reconstruction
MSE at eval points. The whole VAE ships (the demo and the figures reconstruct faces, which needs the encoder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from dlcv.config import from_dict
from dlcv.data.images import DataError
from dlcv.data.loaders import load_split, to_model_range
from dlcv.losses import vae_loss
from dlcv.metrics import reconstruction_mse
from dlcv.models import build_model
from dlcv.sampling import sample_vae
from dlcv.training.common import run_record
from dlcv.training.engine import Algorithm, Context

log = logging.getLogger(__name__)


@dataclass
class VAEMethod:
    """cfg.method of a VAE run (a key that is not a field raises)."""

    kl_weight: float = 1.0  # beta
    kl_warmup_steps: int = 0  # > 0: beta grows linearly from 0 over these steps (Bowman et al. 2016)

    def __post_init__(self) -> None:
        if self.kl_weight < 0 or self.kl_warmup_steps < 0:
            raise ValueError(f"method.kl_weight and method.kl_warmup_steps must be >= 0, "
                             f"got {self.kl_weight}, {self.kl_warmup_steps}")


class VAETrainer(Algorithm):
    """Adam on the negative ELBO; the whole VAE ships, with its val MSE."""

    REFUSES = {"ema_decay": "the VAE ships its trained weights"}

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.method = from_dict(VAEMethod, dict(cfg.method))
        self.x_train, _ = load_split(cfg.data, "train")
        try:
            self.x_val, _ = load_split(cfg.data, "val")
        except DataError as err:  # a data root without val (a trimmed copy) still trains; the metric is then missing
            log.warning("no validation faces (%s): val MSE will not be measured", err)
            self.x_val = None
        self.model = ctx.precision.place(build_model(cfg.architecture, cfg.model))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                    weight_decay=cfg.train.weight_decay)
        self.pixels = cfg.model.channels * cfg.model.image_size**2
        self.scores: dict[str, float] = {}

    def state_modules(self) -> dict[str, Any]:
        return {"model": self.model, "opt": self.opt}

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        self.model.train()

    def train_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, torch.zeros(len(self.x_train))

    def update(self, step: int, batches) -> dict[str, torch.Tensor]:
        x, _ = next(batches)
        x = to_model_range(x).to(self.ctx.device, memory_format=self.ctx.precision.fmt)
        method = self.method
        beta = method.kl_weight * min(1.0, (step + 1) / method.kl_warmup_steps) if method.kl_warmup_steps else \
            method.kl_weight
        with self.ctx.precision.autocast():
            x_hat, mu, logvar = self.model(x)
        loss, recon, kl = vae_loss(x_hat, x, mu, logvar, beta)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # recon is a per-image sum in [-1, 1] units; / (4 * pixels) gives the per-pixel MSE in [0, 1] units
        return {"loss": loss, "recon": recon, "kl": kl, "train_mse": recon / (4 * self.pixels)}

    def evaluate(self, step: int) -> dict[str, float]:
        if self.x_val is None:
            return {}
        self.scores = {"val_mse": reconstruction_mse(self.model, self.x_val, device=self.ctx.device)}
        self.model.train()
        return self.scores

    @torch.no_grad()
    def sample(self) -> tuple[torch.Tensor, int]:
        """Row 1: eight training faces; row 2: their reconstructions; rows 3-4: samples from a fixed seed."""
        model, device = self.model, self.ctx.device
        model.eval()
        x = to_model_range(self.x_train[:8]).to(device)
        recon = model.decode(model.encode(x)[0]).float().cpu()
        images = torch.cat([x.float().cpu(), recon, sample_vae(model, 16, seed=0, device=device)])
        model.train()
        return images, 8

    def shipped(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        return self.model, {}

    def export(self, out, done: int):
        from dlcv import checkpoint

        return checkpoint.save(self.model, out, {"run": run_record(self.cfg), "trained_steps": done,
                                                 "metrics": self.scores})
