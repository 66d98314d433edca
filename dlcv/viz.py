"""Writing images and figures: sample folders in the course's file names, grids, the reverse-process strip."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from dlcv.data.loaders import to_image_range
from dlcv.fileio import atomic_dir, listing


def digit_names(per_class: int, num_classes: int = 10) -> list[str]:
    """The course's file names for conditional digits: {digit}_{index:03d}.png, index 001..per_class."""
    return [f"{d}_{i:03d}.png" for d in range(num_classes) for i in range(1, per_class + 1)]


def check_out_folder(folder: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output folder that is a file, or that holds files unless `force`; `force` replaces only a folder
    of PNG images (an earlier output), never one holding anything else. Checked before the work."""
    folder = Path(folder)
    folder = folder if folder.name else folder.resolve()  # ".": the finished folder is swapped in under its name
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; choose another --out")
    held = sorted(folder.iterdir()) if folder.exists() else []
    others = [p.name + ("/" if p.is_dir() else "") for p in held
              if not (p.is_file() and (p.suffix.lower() == ".png" or p.name.startswith(".")))]
    if others:
        raise FileExistsError(f"{folder} holds {listing(others)}, which are not images this would write; choose a "
                              f"new or empty folder")
    if held and not force:
        raise FileExistsError(f"{folder} already holds images; choose another folder (`python -m dlcv sample` "
                              f"replaces them with --force)")
    return folder


def write_image_folder(images: torch.Tensor, names: list[str], folder: str | os.PathLike, force: bool = False) -> Path:
    """Save (N, C, H, W) images in [-1, 1] as PNGs named `names`; the folder ends up holding exactly these files.

    An existing non-empty folder is refused unless `force`; it is then replaced whole (never half-written).
    """
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    folder = check_out_folder(folder, force)
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


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fid_curve(curves: dict[str, list[dict]], references: dict[str, float], path: str | os.PathLike,
                   targets: tuple[float, ...] = (), fits: dict[str, tuple[float, float, float] | None] | None = None,
                   ) -> Path:
    """FID against training hours, one line per run ({"train_hours", "fid"} records), a dashed line per reference
    model (its recorded FID), a dotted one per target and, per run in `fits`, its fitted a + b h^-c drawn on to where
    it meets the lowest target (or to 4x the run's length), thin and dashed."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for label, records in curves.items():
        points = sorted((r["train_hours"], r["fid"]) for r in records)
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=1.2, label=label)
        fit = (fits or {}).get(label)
        if fit is not None and points:
            a, b, c = fit
            reach = [(b / (t - a)) ** (1 / c) for t in targets if t > a]
            end = min(max(reach, default=4 * points[-1][0]), 20 * points[-1][0])
            h = np.geomspace(points[0][0], max(end, points[-1][0]), 200)
            ax.plot(h, a + b * h ** -c, ls="--", lw=0.8, color=line.get_color(), label=f"{label} fit (extrapolated)")
    for label, fid in references.items():
        ax.axhline(fid, ls="--", lw=1, color="grey")
        ax.annotate(f"{label}: {fid:.2f}", (0.99, fid), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=7, color="grey")
    for target in targets:
        ax.axhline(target, ls=":", lw=1, color="tab:red")
    ax.set_xlabel("training time (hours, wall clock)")
    ax.set_ylabel("FID (1000 samples vs face/val)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    """Tight layout, write the PNG (creating its folder), free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_guidance_curve(rows: list[dict], path: str | os.PathLike) -> Path:
    """Accuracy and digit-FID against the guidance weight w (rows: {"guidance", "accuracy", "digit_fid"})."""
    plt = _pyplot()

    w = [r["guidance"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(w, [r["accuracy"] for r in rows], "o-", color="tab:blue")
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("accuracy (course classifier)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(w, [r["digit_fid"] for r in rows], "s--", color="tab:red")
    ax2.set_ylabel("digit-FID (classifier features)", color="tab:red")
    ax.grid(alpha=0.3)
    return _save_figure(fig, path)


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


def _tsne(features: torch.Tensor, seed: int) -> Any:
    """(N, D) features -> (N, 2) t-SNE points (scikit-learn, PCA init, perplexity at most 30)."""
    from sklearn.manifold import TSNE

    x = features.detach().float().cpu().flatten(1).numpy()  # (N, ...) -> (N, D)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)


def _scatter(ax: Any, points: Any, labels: torch.Tensor, title: str, label_names: list[str] | None) -> None:
    """Points coloured by integer label (tab10, or tab20 past ten labels), with a legend and no ticks."""
    plt = _pyplot()
    y = labels.detach().cpu().numpy().astype(int)
    classes = sorted(set(y.tolist()))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, c in enumerate(classes):
        keep = y == c
        name = label_names[c] if label_names is not None and c < len(label_names) else str(c)
        ax.scatter(points[keep, 0], points[keep, 1], s=4, alpha=0.7, color=cmap(i % cmap.N), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)


def plot_tsne(features: torch.Tensor, labels: torch.Tensor, path: str | os.PathLike, title: str,
              label_names: list[str] | None = None, seed: int = 0) -> Path:
    """2-D t-SNE (scikit-learn, PCA init) of (N, D) features, one colour per integer label; e.g. labels = digit
    class, or domain with label_names=["source", "target"]. Sub-sample beforehand to keep N to a few thousand."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    _scatter(ax, _tsne(features, seed), labels, title, label_names)
    return _save_figure(fig, path)


def plot_tsne_columns(features: list[torch.Tensor], classes: torch.Tensor, domains: torch.Tensor,
                      titles: list[str], path: str | os.PathLike, domain_names: list[str], seed: int = 0) -> Path:
    """One column per feature set (e.g. one model at several training steps; each its own t-SNE), coloured by class
    in the top row and by domain in the bottom row; every set has the same N images, so classes / domains (N,)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(features), figsize=(3.6 * len(features), 7), dpi=110, squeeze=False)
    for col, (feats, title) in enumerate(zip(features, titles)):
        points = _tsne(feats, seed)
        _scatter(axes[0, col], points, classes, f"{title}: by class", None)
        _scatter(axes[1, col], points, domains, f"{title}: by domain", domain_names)
    return _save_figure(fig, path)


def save_captioned_rows(rows: list[torch.Tensor], captions: list[list[str]], path: str | os.PathLike,
                        scale: int = 2) -> Path:
    """Rows of (N, C, H, W) images in [-1, 1], each image with a caption under it ("" for none): e.g. faces over
    their VAE reconstructions with the per-image MSE under each."""
    from PIL import Image, ImageDraw

    h, w = rows[0].shape[-2:]
    H, W, pad, text_h = h * scale, w * scale, 6, 14
    n = max(len(r) for r in rows)
    canvas = Image.new("RGB", (n * (W + pad) + pad, len(rows) * (H + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (images, texts) in enumerate(zip(rows, captions)):
        y = pad + r * (H + text_h + pad)
        for i, image in enumerate(images):
            tile = to_image_range(image.float()).mul(255).round().byte().permute(1, 2, 0).numpy()
            x = pad + i * (W + pad)
            canvas.paste(Image.fromarray(tile.squeeze(-1) if tile.shape[-1] == 1 else tile).resize((W, H)), (x, y))
            if i < len(texts) and texts[i]:
                draw.text((x + 2, y + H + 1), texts[i], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def plot_curves(records: list[dict], keys: list[str], path: str | os.PathLike, title: str = "") -> Path:
    """Learning curves: one panel per key of metrics.jsonl records ({"step": ..., key: ...}) against step."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)
