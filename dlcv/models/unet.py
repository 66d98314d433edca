"""Class-conditional UNet for diffusion (Ho et al. 2020 layout, small): predicts the noise eps in x_t.

The class embedding has num_classes + 1 rows; the last row is the "no class" token that classifier-free guidance
(Ho & Salimans 2022) trains by dropping labels, so one network is both conditional and unconditional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlcv.config import check_at_least


@dataclass
class UNetConfig:
    """Enough to rebuild the weights: sizes, widths per level, attention level, classes."""

    in_channels: int = 3
    image_size: int = 28
    base_width: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2,)  # level index (0 = full size); 7x7 for a 28x28 input
    num_classes: int = 10
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_at_least(self, "model", 1, "in_channels", "image_size", "base_width", "blocks_per_level")
        check_at_least(self, "model", 0, "num_classes")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(f"model.image_size={self.image_size} must halve {len(self.channel_mults) - 1} times; "
                             f"change model.channel_mults")

    @property
    def null_class(self) -> int:
        """Label index meaning "unconditional"."""
        return self.num_classes


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, as in Ho et al. 2020): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding sets a per-channel scale and shift in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stable early training
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, 2C) -> 2 x (B, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over spatial positions (used at the smallest level only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)  # 3 x (B, HW, C)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, HW, C)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): x_t (B, C, H, W) in [-1, 1]-scaled noise space, t (B,) ints, y (B,) ints or null."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c0 = config.base_width
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim)
        self.stem = nn.Conv2d(config.in_channels, c0, 3, padding=1)
        widths = [c0 * m for m in config.channel_mults]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [c0], c0
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(c, width, emb_dim, config.dropout))
                c = width
                skips.append(c)
            self.down.append(blocks)
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if level < len(widths) - 1 else None)
            if level < len(widths) - 1:
                skips.append(c)
        self.attn_down = nn.ModuleDict({str(lv): Attention(widths[lv]) for lv in config.attention_levels})
        self.mid1, self.mid_attn, self.mid2 = ResBlock(c, c, emb_dim, config.dropout), Attention(c), \
            ResBlock(c, c, emb_dim, config.dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level + 1):
                blocks.append(ResBlock(c + skips.pop(), widths[level], emb_dim, config.dropout))
                c = widths[level]
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if level > 0 else None)
        self.attn_up = nn.ModuleDict({str(lv): Attention(widths[lv]) for lv in config.attention_levels})
        self.head = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, config.in_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predicted noise eps, same shape as x_t."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_width)) + self.class_emb(y)
        h = self.stem(x_t)
        hs = [h]
        levels = len(self.config.channel_mults)
        for level in range(levels):
            for block in self.down[level]:
                h = block(h, emb)
                if str(level) in self.attn_down:
                    h = self.attn_down[str(level)](h)
                hs.append(h)
            if self.downsample[level] is not None:
                h = self.downsample[level](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(reversed(range(levels))):
            for block in self.up[i]:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
                if str(level) in self.attn_up:
                    h = self.attn_up[str(level)](h)
            if self.upsample[i] is not None:
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)
