"""Batches from in-memory uint8 tensors, and the only two range conversions: [0,1] <-> [-1,1]."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, TensorDataset

from dlcv.config import DataConfig
from dlcv.data.digits import read_digits
from dlcv.data.faces import read_faces


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float [-1, 1] (what every dlcv model takes and returns)."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    return x * 2.0 - 1.0


def to_image_range(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> float [0, 1], clamped (what save_image and metrics take)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 1, H, W) grey -> (B, 3, H, W) by replication, or pass through when it already has `channels`."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"cannot turn {x.shape[1]}-channel images into {channels} channels; give grey or RGB images")


def make_loader(*tensors: torch.Tensor, batch_size: int, seed: int, shuffle: bool = True,
                drop_last: bool = True) -> DataLoader:
    """A DataLoader over in-memory tensors (no decoding per step); its shuffling is seeded by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator, num_workers=0)


def infinite(loader: Iterable) -> Iterator:
    """Cycle a loader forever so a training loop counts steps, never epochs."""
    while True:
        yield from loader


def load_split(cfg: DataConfig, split: str, domain: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 images (N, C, H, W) and int64 labels of one split named by a DataConfig.

    Digits: labels are the digit. Faces: labels are `cfg.attribute` (faces without that annotation are dropped),
    or None when no attribute is asked for.
    """
    if cfg.dataset == "digits":
        data = read_digits(cfg.root, domain or cfg.domain, split, channels=None, image_size=cfg.image_size)
        return to_channels(data.images, cfg.channels).contiguous(), data.labels
    faces = read_faces(cfg.root, split, image_size=cfg.image_size)
    if not cfg.attribute:
        return faces.images, None
    labels = faces.labels(cfg.attribute)
    known = labels >= 0
    return faces.images[known], labels[known]
