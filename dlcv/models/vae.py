"""Convolutional VAE (Kingma & Welling 2014) for 64x64 faces: q_phi(z|x) = N(mu, diag(sigma^2)), p_theta(x|z).

The encoder mirrors the DCGAN discriminator (stride-2 convs), the decoder the DCGAN generator (stride-2 transposed
convs), so the two families read alike. Only the latent is a vector (latent_dim), so it can be sampled from N(0, I),
interpolated and embedded with t-SNE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dlcv.config import check_at_least, check_choice
from dlcv.models.gan import START_SIZE, dcgan_init, num_upsamplings


@dataclass
class VAEConfig:
    """Enough to rebuild the weights: image shape, latent size, width."""

    image_size: int = 64
    channels: int = 3
    latent_dim: int = 128
    width: int = 32  # channels of the first encoder layer; deeper layers have 2x, 4x, 8x this

    def __post_init__(self) -> None:
        check_choice("model.image_size", self.image_size, tuple(START_SIZE))
        check_at_least(self, "model", 1, "channels", "latent_dim", "width")

    @property
    def z_dim(self) -> int:
        """The prior's dimension: what sampling draws (shared name with the GAN generator)."""
        return self.latent_dim


class VAE(nn.Module):
    """forward(x) -> (x_hat, mu, logvar); images in [-1, 1], x_hat through tanh."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        n = num_upsamplings(config.image_size)
        widths = [config.width * 2**i for i in range(n)]  # 64: w, 2w, 4w, 8w
        layers, c_in = [], config.channels
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, True)]
            c_in = c_out
        self.encoder = nn.Sequential(*layers)
        start = START_SIZE[config.image_size]
        # a conv over the whole start x start map is a linear layer on the flattened features
        self.to_stats = nn.Conv2d(c_in, 2 * config.latent_dim, start, 1, 0)  # -> (B, 2L, 1, 1): mu, log sigma^2
        layers = [nn.ConvTranspose2d(config.latent_dim, widths[-1], start, 1, 0, bias=False),
                  nn.BatchNorm2d(widths[-1]), nn.ReLU(True)]
        for c_in, c_out in zip(widths[::-1], widths[::-1][1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[0], config.channels, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        self.apply(dcgan_init)

    @property
    def z_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) -> mu, log sigma^2, each (B, L)."""
        stats = self.to_stats(self.encoder(x)).flatten(1).float()
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 5.0)  # keeps sigma in [0.007, 12]: early steps cannot blow the KL up

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> images (B, C, H, W) in [-1, 1]."""
        return self.decoder(z[:, :, None, None])

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised pass z = mu + sigma * eps (eps ~ N(0, I) unless given), decoded."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar
