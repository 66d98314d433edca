"""ARCHITECTURES: what a checkpoint can rebuild, name -> (config dataclass, nn.Module class); build_model."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from dlcv.models.classifier import Classifier, ClassifierConfig
from dlcv.models.gan import Generator, GeneratorConfig
from dlcv.models.uda import UDANet, UDANetConfig
from dlcv.models.unet import UNet, UNetConfig
from dlcv.models.vae import VAE, VAEConfig

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "classifier": (ClassifierConfig, Classifier),
    "unet": (UNetConfig, UNet),
    "generator": (GeneratorConfig, Generator),
    "uda_net": (UDANetConfig, UDANet),
    "vae": (VAEConfig, VAE),
}


def model_config_class(architecture: str) -> type:
    """The config dataclass of an architecture, with a clear error for unknown names."""
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture][0]


def architecture_of(config: Any) -> str:
    """The registry name of a model config instance."""
    for name, (config_cls, _) in ARCHITECTURES.items():
        if type(config) is config_cls:
            return name
    raise KeyError(f"{type(config).__name__} is not in ARCHITECTURES; add it to dlcv/models/__init__.py")


def build_model(architecture: str, config: Any) -> nn.Module:
    """Instantiate an architecture from its config."""
    config_cls, model_cls = ARCHITECTURES[architecture] if architecture in ARCHITECTURES else (None, None)
    if model_cls is None:
        raise KeyError(f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}")
    if not isinstance(config, config_cls):
        raise TypeError(f"{architecture} needs a {config_cls.__name__}, got {type(config).__name__}")
    return model_cls(config)
