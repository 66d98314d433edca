"""Training: FAMILIES maps RunConfig.family to its algorithm, which the one engine (training/engine.py) runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlcv import checkpoint
from dlcv.config import RunConfig, from_dict
from dlcv.training.classifier import Classifier, ClassifierMethod
from dlcv.training.common import run_dir
from dlcv.training.diffusion import Diffusion, DiffusionMethod
from dlcv.training.engine import Algorithm, fit
from dlcv.training.gan import GAN, GANMethod
from dlcv.training.uda import UDA, UDA_METHODS, UDAOptions, parse_options
from dlcv.training.vae import VAEMethod, VAETrainer

FAMILIES: dict[str, type[Algorithm]] = {
    "classifier": Classifier,
    "diffusion": Diffusion,
    "gan": GAN,
    "uda": UDA,
    "vae": VAETrainer,
}

METHODS: dict[str, type] = {  # each family's cfg.method dataclass (UDA's depends on method.name: UDA_METHODS)
    "classifier": ClassifierMethod,
    "diffusion": DiffusionMethod,
    "gan": GANMethod,
    "vae": VAEMethod,
}


def method_config(cfg: RunConfig) -> Any:
    """cfg.method as its family's typed dataclass; an unknown key or a bad value raises naming it."""
    return parse_method(cfg.family, cfg.method)


def parse_method(family: str, method: dict[str, Any]) -> Any:
    """A method section (a config's, or one a run recorded) as `family`'s typed dataclass."""
    if family == "uda":
        name = method.get("name", UDAOptions.name)
        if name not in UDA_METHODS:
            raise KeyError(f"unknown UDA method {name!r}; choose from {sorted(UDA_METHODS)} (--method.name=...)")
        return parse_options(UDA_METHODS[name].Options, dict(method), UDA_METHODS[name].__name__)
    return from_dict(METHODS[family], dict(method))


def train(cfg: RunConfig, out: str | Path | None = None, fresh: bool = False) -> Path:
    """Run cfg.family's algorithm in the engine; returns the checkpoint folder it wrote. `fresh` discards the run's
    saved state first (under the run's lock, so never while another process trains it)."""
    if cfg.family not in FAMILIES:
        raise KeyError(f"unknown family {cfg.family!r}; choose from {sorted(FAMILIES)}")
    method_config(cfg)  # a typo in --method.* fails now, not after the data has loaded
    if out is not None:  # checked now, not after hours of training: the checkpoint replaces `out` whole
        here, folder = Path(out).resolve(), run_dir(cfg).resolve()
        if here == folder or here in folder.parents:
            raise ValueError(f"--out {out} would replace the run folder {run_dir(cfg)} (its state.pt and metrics); "
                             f"give a folder outside it, e.g. checkpoints/{cfg.name}, or leave --out out")
        checkpoint.check_replaceable(out, cfg.architecture)
    return fit(cfg, FAMILIES[cfg.family], out=out, fresh=fresh)
