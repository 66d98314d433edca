"""Writing images and figures: sample folders in the course's file names, grids, the reverse-process strip."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from dlcv.data.loaders import to_image_range
from dlcv.fileio import atomic_dir


def digit_names(per_class: int, num_classes: int = 10) -> list[str]:
    """The course's file names for conditional digits: {digit}_{index:03d}.png, index 001..per_class."""
    return [f"{d}_{i:03d}.png" for d in range(num_classes) for i in range(1, per_class + 1)]


def write_image_folder(images: torch.Tensor, names: list[str], folder: str | os.PathLike, force: bool = False) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as PNGs named `names`; the folder ends up holding exactly these files.

    An existing non-empty folder is refused unless `force`; it is then replaced whole (never half-written).
    """
    folder = Path(folder)
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise FileExistsError(f"{folder} is not empty; pass --force to replace it or choose another --out")
    with atomic_dir(folder) as tmp:
        for image, name in zip(to_image_range(images.float()), names):
            save_image(image, tmp / name)
    return folder


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int) -> Path:
    """A grid PNG of (N, C, H, W) images in [-1, 1], `nrow` images per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(to_image_range(images.float()), nrow=nrow, padding=2, pad_value=1.0), path)
    return path


def plot_guidance_curve(rows: list[dict], path: str | os.PathLike) -> Path:
    """Accuracy and digit-FID against the guidance weight w (rows: {"guidance", "accuracy", "digit_fid"})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["guidance"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(w, [r["accuracy"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("accuracy (course classifier)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(w, [r["digit_fid"] for r in rows], "s--", color="tab:red")
    ax2.set_ylabel("digit-FID (classifier features)", color="tab:red")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_strip(frames: list[torch.Tensor], captions: list[str], path: str | os.PathLike, scale: int = 4) -> Path:
    """One row of (C, H, W) images in [-1, 1] with a caption under each (e.g. the reverse process at six t)."""
    from PIL import Image, ImageDraw

    tiles = [to_image_range(f.float()).mul(255).round().byte().permute(1, 2, 0).numpy() for f in frames]
    h, w = tiles[0].shape[:2]
    H, W, pad, text_h = h * scale, w * scale, 6, 16
    canvas = Image.new("RGB", (len(tiles) * (W + pad) + pad, H + 2 * pad + text_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        img = Image.fromarray(tile.squeeze(-1) if tile.shape[-1] == 1 else tile).resize((W, H), Image.NEAREST)
        x = pad + i * (W + pad)
        canvas.paste(img, (x, pad))
        draw.text((x + 2, H + pad + 2), caption, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
