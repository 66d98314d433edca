"""DCGAN generator and discriminator (Radford et al. 2016), shared by DCGAN, SNGAN, WGAN-GP and ACGAN.

The variants differ by flags: the discriminator's `norm` and `spectral_norm`, and `num_classes > 0` for ACGAN
(a class embedding or class-conditional batch norm in G, an auxiliary class head in D, Odena et al. 2017). Only the
generator is shipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from dlcv.config import check_at_least, check_choice, check_literals

# image_size -> side of the first feature map; every later layer doubles it (64: 4->8->16->32->64, 28: 7->14->28)
START_SIZE = {64: 4, 28: 7}


def num_upsamplings(image_size: int) -> int:
    """How many stride-2 layers lie between the start feature map and the image: 4 for 64x64, 2 for 28x28."""
    return (image_size // START_SIZE[image_size]).bit_length() - 1


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016, sec. 4: conv weights ~ N(0, 0.02); norm scales ~ N(1, 0.02), shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@dataclass
class GeneratorConfig:
    """Enough to rebuild the generator: noise size, image shape, width, classes (0 = unconditional)."""

    z_dim: int = 100
    image_size: int = 64  # 64 (faces) or 28 (digits)
    channels: int = 3
    width: int = 64  # channels of the last hidden layer; deeper layers have 2x, 4x, 8x this
    num_classes: int = 0  # > 0: ACGAN, conditioned on the class as `conditioning` says
    # concat / multiply: a learned class embedding e_y meets z as [z, e_y] / z * e_y; cbn: z alone enters and every
    # batch norm takes its gain and shift from the class (ConditionalBatchNorm2d)
    conditioning: Literal["concat", "multiply", "cbn"] = "concat"

    def __post_init__(self) -> None:
        check_choice("model.image_size", self.image_size, tuple(START_SIZE))
        check_literals(self, "model")
        check_at_least(self, "model", 1, "z_dim", "channels", "width")
        check_at_least(self, "model", 0, "num_classes")


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose per-channel gain gamma_y and shift beta_y are looked up by class y (de Vries et al. 2017, the
    generator of Miyato & Koyama 2018 and BigGAN). The class only restyles channels that z has laid out, so one z with
    Smiling off and on keeps much more of its face (pose, hair) than with z * e_y (docs/methods.md, "Conditioning")."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        # DCGAN's batch-norm init for every class (gamma ~ N(1, 0.02), beta = 0): the classes start almost alike
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gain, shift = self.gain(y)[:, :, None, None], self.shift(y)[:, :, None, None]  # (B, C) -> (B, C, 1, 1)
        return self.norm(x) * gain.to(x.dtype) + shift.to(x.dtype)


class Generator(nn.Module):
    """G(z, y): z (B, z_dim), y (B,) class indices or None -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        n_up = num_upsamplings(config.image_size)
        widths = [config.width * 2 ** (n_up - 1 - i) for i in range(n_up)]  # 64: 8w, 4w, 2w, w; 28: 2w, w
        z_in = config.z_dim
        self.embed = None
        if config.num_classes > 0 and config.conditioning != "cbn":
            self.embed = nn.Embedding(config.num_classes, config.z_dim)
            z_in = 2 * config.z_dim if config.conditioning == "concat" else config.z_dim
        cbn = config.num_classes > 0 and config.conditioning == "cbn"

        def norm(channels: int) -> nn.Module:
            return ConditionalBatchNorm2d(channels, config.num_classes) if cbn else nn.BatchNorm2d(channels)

        # a 1x1 "image" of z becomes the start feature map, as in the DCGAN paper's projection
        layers = [nn.ConvTranspose2d(z_in, widths[0], START_SIZE[config.image_size], 1, 0, bias=False),
                  norm(widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), norm(c_out), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(widths[-1], config.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    @property
    def z_dim(self) -> int:
        """Size of the noise vector that sampling draws."""
        return self.config.z_dim

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.num_classes > 0 and y is None:
            raise ValueError(f"this generator is class-conditional: pass y, (B,) ints in "
                             f"[0, {self.config.num_classes})")
        if self.embed is not None:
            e = self.embed(y)
            z = torch.cat([z, e], dim=1) if self.config.conditioning == "concat" else z * e
        h = z[:, :, None, None]  # (B, z_in) -> (B, z_in, 1, 1)
        for layer in self.net:
            h = layer(h, y) if isinstance(layer, ConditionalBatchNorm2d) else layer(h)
        return h


@dataclass
class DiscriminatorConfig:
    """Built by the training loop from the generator's shape and cfg.method; never shipped."""

    image_size: int = 64
    channels: int = 3
    width: int = 64  # channels of the first layer; deeper layers have 2x, 4x, 8x this
    num_classes: int = 0  # > 0: an auxiliary class head (ACGAN)
    norm: Literal["batch", "layer", "none"] = "batch"  # WGAN-GP needs no batch norm (the penalty is per sample)
    spectral_norm: bool = False  # Miyato et al. 2018 (SNGAN)
    class_head_spectral_norm: bool = True  # False: the class head stays free, so its logits can grow confident

    def __post_init__(self) -> None:
        check_choice("discriminator image_size", self.image_size, tuple(START_SIZE))
        check_literals(self, "discriminator")
        check_at_least(self, "discriminator", 1, "channels", "width")
        check_at_least(self, "discriminator", 0, "num_classes")


class Discriminator(nn.Module):
    """D(x): images (B, C, H, W) in [-1, 1] -> (real/fake logits (B,), class logits (B, K) or None)."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        n_down = num_upsamplings(config.image_size)
        widths = [config.width * 2**i for i in range(n_down)]  # 64: w, 2w, 4w, 8w; 28: w, 2w
        layers, c_in = [], config.channels
        for i, c_out in enumerate(widths):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=config.norm != "batch"))
            if i > 0:  # DCGAN: no normalisation on the first layer
                layers.append(self._norm(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        start = START_SIZE[config.image_size]
        # both heads read the same final feature map with a conv over all of it (B, C, s, s) -> (B, out, 1, 1)
        self.head = nn.Conv2d(c_in, 1, start, 1, 0)
        self.class_head = nn.Conv2d(c_in, config.num_classes, start, 1, 0) if config.num_classes > 0 else None
        self.apply(dcgan_init)
        if config.spectral_norm:  # after the init: the parametrisation starts its power iteration from these weights
            for module in self.modules():
                if isinstance(module, nn.Conv2d) and (module is not self.class_head or config.class_head_spectral_norm):
                    spectral_norm(module)

    def _norm(self, channels: int) -> nn.Module:
        if self.config.norm == "batch":
            return nn.BatchNorm2d(channels)
        if self.config.norm == "layer":
            return nn.GroupNorm(1, channels)  # one group = layer norm over (C, H, W), as Gulrajani et al. suggest
        return nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.features(x)
        logits = self.head(h).flatten()  # (B, 1, 1, 1) -> (B,)
        class_logits = self.class_head(h).flatten(1) if self.class_head is not None else None  # -> (B, K)
        return logits, class_logits
