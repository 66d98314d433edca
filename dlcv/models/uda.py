"""The digit network for unsupervised domain adaptation: the DIRT-T-style small CNN (Shu et al. 2018) or Ganin &
Lempitsky's MNIST network, with per-domain input normalisation and per-domain batch-norm statistics, both carried by
the checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlcv.config import check_at_least, check_literals
from dlcv.models.blocks import DomainBatchNorm2d, Segments, conv_norm_act, instance_standardize

SOURCE, TARGET = 0, 1  # domain indices of the normalisation buffers and batch-norm statistics


@dataclass
class UDANetConfig:
    """arch "dirtt", width w: 3x3 convs w, w | pool | 2w, 2w | pool | 2w, 2w | global average -> features (B, 2w)
    -> linear logits. arch "ganin" (Ganin et al. 2016's MNIST network; w=32 is the paper's): 5x5 convs w | pool |
    3w/2 | pool -> flattened features (B, 3w/2*4*4) -> FC 100, 100 -> logits; ~1/20 of dirtt's FLOPs at w=64. arch
    "svhn" (Haeusser et al. 2017's digit network, the one associative DA's authors use; w=64 is theirs): 3x3 convs
    w/2 x3 | pool | w x3 | pool | 2w x3 | pool -> flattened -> FC 2w + ELU = features (B, 2w), the embedding the
    association walks on -> linear logits; ~0.6 of dirtt's FLOPs at w=64."""

    in_channels: int = 3
    image_size: int = 28
    num_classes: int = 10
    width: int = 64
    arch: Literal["dirtt", "ganin", "svhn"] = "dirtt"
    domain_bn: bool = True  # separate BN statistics for source and target (AdaBN); False: one shared set
    # per-domain channel mean/std; per-image standardising; that of the luminance (colour-blind); or "auto", which
    # train_uda resolves from the data: grey when the labelled domain is grey and the other colour, else instance
    input_norm: Literal["domain", "instance", "grey", "auto"] = "domain"
    dropout: float = 0.3

    def __post_init__(self) -> None:
        check_literals(self, "model")
        check_at_least(self, "model", 1, "in_channels", "image_size", "num_classes", "width")
        if self.arch == "ganin" and self.image_size != 28:
            raise ValueError(f"model.arch='ganin' takes 28x28 images, not {self.image_size}; use model.arch='dirtt'")
        if self.in_channels not in (1, 3):
            raise ValueError(f"model.in_channels={self.in_channels}; use 3 (grey domains are replicated) or 1")


class UDANet(nn.Module):
    """Takes images in [-1, 1] (B, C, H, W), grey ones replicated. forward(x) / features(x) use the *target*
    domain's statistics by default, since a shipped UDA model predicts on the target domain."""

    def __init__(self, config: UDANetConfig) -> None:
        super().__init__()
        if config.input_norm == "auto":
            raise ValueError("model.input_norm='auto' is resolved by the UDA training loop from the domains' channels; "
                             "build a UDANet with 'grey', 'instance' or 'domain'")
        self.config = config
        w, c = config.width, config.in_channels
        domains = 2 if config.domain_bn else 1
        if config.arch == "ganin":
            widths, kernel, padding = [(c, w), (w, 3 * w // 2)], 5, 0
            self.feature_dim = 3 * w // 2 * 4 * 4  # 28 -conv-> 24 -pool-> 12 -conv-> 8 -pool-> 4
            self.head: nn.Module = nn.Sequential(
                nn.Linear(self.feature_dim, 100), nn.ReLU(inplace=True), nn.Dropout(config.dropout),
                nn.Linear(100, 100), nn.ReLU(inplace=True), nn.Linear(100, config.num_classes))
        elif config.arch == "svhn":
            channels = [c] + [w // 2] * 3 + [w] * 3 + [2 * w] * 3
            widths, kernel, padding = list(zip(channels[:-1], channels[1:])), 3, 1
            self.feature_dim = 2 * w
            side = config.image_size // 8  # three 2x2 pools, floored: 28 -> 14 -> 7 -> 3
            self.embedding = nn.Sequential(nn.Linear(2 * w * side * side, 2 * w), nn.ELU())
            self.head = nn.Linear(2 * w, config.num_classes)
        else:
            widths, kernel, padding = [(c, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w)], 3, 1
            self.feature_dim = 2 * w
            self.head = nn.Linear(2 * w, config.num_classes)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, padding=padding, bias=False) for a, b in widths)
        self.norms = nn.ModuleList(DomainBatchNorm2d(b, domains) for _, b in widths)
        # (domain, C): the input statistics of each domain in [-1, 1] units, set by the training loop
        self.register_buffer("input_mean", torch.zeros(2, c))
        self.register_buffer("input_std", torch.ones(2, c))

    def set_input_stats(self, domain: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store a domain's per-channel mean and std (in model range) for domain input normalisation."""
        self.input_mean[domain] = mean.to(self.input_mean)
        self.input_std[domain] = std.clamp_min(1e-3).to(self.input_std)

    def _normalize(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        if x.shape[1] == 1 and self.config.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.config.input_norm == "grey":  # the channel mean, replicated: the first conv keeps its 3 inputs
            return instance_standardize(x.mean(dim=1, keepdim=True)).expand(-1, x.shape[1], -1, -1)
        if self.config.input_norm == "instance":
            return instance_standardize(x)
        mean = torch.cat([self.input_mean[d].expand(n, -1) for d, n in segments])  # (B, C)
        std = torch.cat([self.input_std[d].expand(n, -1) for d, n in segments])
        return (x - mean[:, :, None, None]) / std[:, :, None, None]

    def trunk(self, x: torch.Tensor, segments: Segments) -> torch.Tensor:
        """Features (B, feature_dim) of a batch made of per-domain chunks, e.g. ((SOURCE, 64), (TARGET, 64))."""
        x = self._normalize(x, segments)
        pools = {"ganin": (0, 1), "svhn": (2, 5, 8)}.get(self.config.arch, (1, 3))
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = conv_norm_act(conv, norm, x, segments)
            if i in pools:
                x = F.dropout(F.max_pool2d(x, 2), self.config.dropout, self.training)
        if self.config.arch == "ganin":
            return x.flatten(1)  # (B, 3w/2, 4, 4) -> (B, 24w)
        if self.config.arch == "svhn":
            return self.embedding(x.flatten(1))  # (B, 2w, 3, 3) -> (B, 2w)
        return x.mean(dim=(2, 3))  # (B, 2w, 7, 7) -> (B, 2w)

    def features(self, x: torch.Tensor, domain: int = TARGET) -> torch.Tensor:
        """Features (B, feature_dim) of a one-domain batch: what the domain classifier and t-SNE see."""
        return self.trunk(x, ((domain, x.shape[0]),))

    embed = features  # the name dlcv.metrics.embed calls

    def forward(self, x: torch.Tensor, domain: int = TARGET) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.features(x, domain))


# ---------------------------------------------------------------- GTA: generator and discriminator (not shipped)


class GTAGenerator(nn.Module):
    """G(phi, z, c) of Generate to Adapt (Sankaranarayanan et al. 2018): an embedding phi (B, feature_dim), noise z
    (B, z_dim) and a code c (B, K + 1: one-hot source class, or the extra index K for a target image) -> a source-like
    image (B, 3, H, W) in [-1, 1]. H = W = image_size, a multiple of 4: a linear map to (4w, H/4, W/4), then two
    stride-2 transposed convs."""

    def __init__(self, feature_dim: int, num_classes: int, z_dim: int = 512, width: int = 64,
                 image_size: int = 28) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"GTA's generator makes images whose side is a multiple of 4, not {image_size}")
        self.num_classes, self.z_dim, self.side = num_classes, z_dim, image_size // 4
        w = width
        self.fc = nn.Sequential(nn.Linear(feature_dim + z_dim + num_classes + 1, 4 * w * self.side ** 2, bias=False),
                                nn.BatchNorm1d(4 * w * self.side ** 2), nn.ReLU(inplace=True))
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, 3, 3, padding=1), nn.Tanh())

    def forward(self, phi: torch.Tensor, z: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([phi, z, F.one_hot(code, self.num_classes + 1).to(phi.dtype)], dim=1))
        return self.net(h.view(h.shape[0], -1, self.side, self.side))


class GTADiscriminator(nn.Module):
    """D(x) -> (real/fake logit (B,), class logits (B, K)): GTA's two-headed discriminator, whose data head tells source
    images from generated ones and whose class head is an auxiliary classifier trained on real source labels."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, inplace=True))
        self.data_head = nn.Linear(4 * w, 1)
        self.class_head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x).mean(dim=(2, 3))  # (B, 4w)
        return self.data_head(h).squeeze(1), self.class_head(h)
