"""Training loops, one per family; TRAINERS maps RunConfig.family to its loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dlcv import checkpoint
from dlcv.config import RunConfig
from dlcv.training.classifier import train_classifier
from dlcv.training.common import run_dir
from dlcv.training.diffusion import train_diffusion
from dlcv.training.gan import train_gan
from dlcv.training.uda import train_uda
from dlcv.training.vae import train_vae

TRAINERS: dict[str, Callable[..., Path]] = {
    "classifier": train_classifier,
    "diffusion": train_diffusion,
    "gan": train_gan,
    "uda": train_uda,
    "vae": train_vae,
}


def train(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """Run the loop of cfg.family; returns the checkpoint folder it wrote."""
    if cfg.family not in TRAINERS:
        raise KeyError(f"unknown family {cfg.family!r}; choose from {sorted(TRAINERS)}")
    if out is not None:  # checked now, not after hours of training: the checkpoint replaces `out` whole
        here, folder = Path(out).resolve(), run_dir(cfg).resolve()
        if here == folder or here in folder.parents:
            raise ValueError(f"--out {out} would replace the run folder {run_dir(cfg)} (its state.pt and metrics); "
                             f"give a folder outside it, e.g. checkpoints/{cfg.name}, or leave --out out")
        checkpoint.check_replaceable(out)
    return TRAINERS[cfg.family](cfg, out=out)
