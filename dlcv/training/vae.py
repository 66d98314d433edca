"""train_vae: the negative ELBO with a KL weight (losses.vae_loss), optional linear KL warm-up, val reconstruction
MSE at eval points. The whole VAE ships (the demo and the figures reconstruct faces, which needs the encoder)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from dlcv import checkpoint
from dlcv.config import RunConfig, from_dict, to_dict
from dlcv.data.images import DataError
from dlcv.data.loaders import infinite, load_split, make_loader, to_image_range, to_model_range
from dlcv.losses import vae_loss
from dlcv.metrics import reconstruction_mse
from dlcv.models import build_model
from dlcv.runtime import autocast, memory_format, pick_device, seed_everything, set_deterministic
from dlcv.sampling import sample_vae
from dlcv.training.common import Deadline, MetricLog, every, load_state, run_dir, save_state, snapshot_dir

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


def train_vae(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """Train the VAE on face/train; ship it to `out` or runs/<name>/checkpoint with its val MSE; return the path."""
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    fmt = memory_format(cfg.train.channels_last)
    method = from_dict(VAEMethod, dict(cfg.method))
    x_train, _ = load_split(cfg.data, "train")
    try:
        x_val, _ = load_split(cfg.data, "val")
    except DataError as err:  # a data root without val (a trimmed copy) still trains; the metric is then missing
        log.warning("no validation faces (%s): val MSE will not be measured", err)
        x_val = None
    model = build_model(cfg.architecture, cfg.model).to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                           weight_decay=cfg.train.weight_decay)
    start, _ = load_state(cfg, {"model": model, "opt": opt})
    batches = infinite(make_loader(x_train, torch.zeros(len(x_train)), batch_size=cfg.train.batch_size,
                                   seed=cfg.train.seed + start))
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=cfg.name,
               disable=not cfg.train.progress)
    metrics = MetricLog(run_dir(cfg) / "metrics.jsonl", bar, start)
    deadline = Deadline(cfg.train.max_minutes)
    pixels = cfg.model.channels * cfg.model.image_size**2
    scores, done = {}, start
    model.train()
    for step in bar:
        x, _ = next(batches)
        x = to_model_range(x).to(device, memory_format=fmt)
        beta = method.kl_weight * min(1.0, (step + 1) / method.kl_warmup_steps) if method.kl_warmup_steps else \
            method.kl_weight
        with autocast(device, cfg.train.amp):
            x_hat, mu, logvar = model(x)
        loss, recon, kl = vae_loss(x_hat, x, mu, logvar, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # recon is a per-image sum in [-1, 1] units; / (4 * pixels) gives the per-pixel MSE in [0, 1] units
        metrics.add({"loss": loss, "recon": recon, "kl": kl, "train_mse": recon / (4 * pixels)})
        last = step + 1 == cfg.train.steps or deadline.passed()
        extra = {}
        if x_val is not None and (every(step, cfg.train.eval_every) or last):
            scores = {"val_mse": reconstruction_mse(model, x_val, device=device)}
            extra = scores
            model.train()
        if every(step, cfg.train.log_every) or last or extra:
            metrics.flush(step + 1, extra)
        if every(step, cfg.train.sample_every) or last:
            save_samples(model, x_train[:8], run_dir(cfg) / "samples" / f"step_{step + 1:06d}.png", device)
            model.train()
        if every(step, cfg.train.snapshot_every):
            checkpoint.save(model, snapshot_dir(cfg, step + 1), {"run": to_dict(cfg), "trained_steps": step + 1})
        if every(step, cfg.train.save_every) or last:
            save_state(cfg, step + 1, {"model": model, "opt": opt})
        done = step + 1
        if last:
            break
    out = Path(out) if out else run_dir(cfg) / "checkpoint"
    checkpoint.save(model, out, {"run": to_dict(cfg), "trained_steps": done, "metrics": scores})
    log.info("%s -> %s", cfg.name, out)
    return out


@torch.no_grad()
def save_samples(model: torch.nn.Module, real: torch.Tensor, path: Path, device: torch.device) -> None:
    """Row 1: eight training faces; row 2: their reconstructions; rows 3-4: samples from a fixed seed."""
    model.eval()
    x = to_model_range(real).to(device)
    recon = model.decode(model.encode(x)[0]).float().cpu()
    images = torch.cat([x.float().cpu(), recon, sample_vae(model, 16, seed=0, device=device)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_image_range(images), path, nrow=8)
