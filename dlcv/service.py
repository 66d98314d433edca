"""Demo and grading facade: list shipped checkpoints, load one, classify an image. No Streamlit/Gradio here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlcv import hub
from dlcv.data.loaders import to_model_range

DIGIT_LABELS = [str(d) for d in range(10)]


def checkpoints_root() -> Path:
    """$DLCV_CHECKPOINTS, else the repository's checkpoints/ folder."""
    return Path(os.environ.get("DLCV_CHECKPOINTS", Path(__file__).resolve().parents[1] / "checkpoints"))


@dataclass
class ModelInfo:
    """What the demo lists about one checkpoint folder."""

    name: str
    path: Path
    architecture: str
    family: str
    metrics: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)


def list_models(root: str | Path | None = None) -> list[ModelInfo]:
    """Every loadable-looking checkpoint folder under `root` (config.json + model.safetensors), sorted by name."""
    root = Path(root) if root else checkpoints_root()
    infos = []
    for folder in sorted(p for p in root.glob("*") if (p / hub.CONFIG_NAME).is_file()) if root.is_dir() else []:
        try:
            document = hub.read_config(folder)
        except hub.CheckpointError:
            continue
        run = document.get("run", {})
        infos.append(ModelInfo(name=folder.name, path=folder, architecture=document.get("architecture", "?"),
                               family=run.get("family", document.get("architecture", "?")),
                               metrics=document.get("metrics", {}), labels=class_labels(document)))
    return infos


def class_labels(document: dict[str, Any]) -> list[str]:
    """Human names of a classifier's outputs: digits, or not-/attribute for a face attribute classifier."""
    attribute = document.get("run", {}).get("data", {}).get("attribute", "")
    n = document.get("config", {}).get("num_classes", 10)
    if attribute and n == 2:
        return [f"not {attribute}", attribute]
    return DIGIT_LABELS[:n] if n <= 10 else [str(i) for i in range(n)]


def load(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint folder on CPU (callers cache it: st.cache_resource, functools.cache)."""
    return hub.load(path)


def fit_image(image: Image.Image, size: int, channels: int) -> tuple[Image.Image, str]:
    """Convert an uploaded image to the model's size and channels; the note says what was changed."""
    changes = []
    mode = "RGB" if channels == 3 else "L"
    if image.mode != mode:
        changes.append(f"{image.mode} -> {mode}")
        image = image.convert(mode)
    if image.size != (size, size):
        changes.append(f"{image.size[0]}x{image.size[1]} -> {size}x{size}")
        image = image.resize((size, size), Image.BILINEAR)
    return image, ("converted " + ", ".join(changes)) if changes else ""


@torch.no_grad()
def classify(model: torch.nn.Module, image: Image.Image) -> tuple[np.ndarray, str]:
    """Class probabilities of one image, and the conversion note from fit_image."""
    image, note = fit_image(image, model.config.image_size, model.config.in_channels)
    array = np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy
    x = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None]  # (H, W, C) -> (1, C, H, W)
    probs = torch.softmax(model(to_model_range(x)).float(), dim=1)[0]
    return probs.numpy(), note


def generate_digits(model: torch.nn.Module, document: dict[str, Any], labels: torch.Tensor, seed: int = 0,
                    sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                    guidance: float | None = None, keep: tuple[int, ...] = (), progress=None,
                    guidance_interval: tuple[int, int] | None = None):
    """Class-conditional digits in [-1, 1] from a diffusion checkpoint; unset options use the checkpoint's own
    sampling defaults. Returns (images, {t: x_t}) like sampling.sample_diffusion."""
    from dlcv.config import from_dict
    from dlcv.diffusion import NoiseSchedule, ScheduleConfig
    from dlcv.sampling import sample_diffusion

    if document["architecture"] != "unet":
        raise ValueError(f"{document['architecture']} checkpoints do not generate with diffusion; use a unet one")
    defaults = document.get("sampling", {})
    schedule = NoiseSchedule(from_dict(ScheduleConfig, document["schedule"]))
    return sample_diffusion(model, schedule, labels, seed=seed, sampler=sampler or defaults.get("sampler", "ddim"),
                            steps=steps or defaults.get("steps", 50),
                            eta=defaults.get("eta", 0.0) if eta is None else eta,
                            guidance=defaults.get("guidance", 0.0) if guidance is None else guidance,
                            guidance_interval=guidance_interval or _interval(defaults.get("guidance_interval")),
                            keep=keep, progress=progress)


def _interval(value: Any) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if value else None


def sample_to_folder(checkpoint: str | Path, out: str | Path, per_class: int | None = None, n: int | None = None,
                     seed: int = 0, force: bool = False, **options: Any) -> Path:
    """Write generated images in the course's names: {digit}_{001..K}.png (per_class) or 0000.png ... (n).

    Diffusion checkpoints take sampler/steps/eta/guidance options; unset ones use the checkpoint's defaults.
    """
    from dlcv.sampling import sample_gan
    from dlcv.viz import digit_names, write_image_folder

    model, document = load(checkpoint)
    num_classes = getattr(model.config, "num_classes", 0)
    architecture = document["architecture"]
    if architecture not in ("unet", "generator"):
        raise ValueError(f"{checkpoint} is a {architecture}, which does not generate images; "
                         f"use a diffusion (unet) or GAN (generator) checkpoint")
    if per_class is not None:
        if num_classes <= 0:
            raise ValueError(f"{checkpoint} is unconditional; use --n instead of --per-class")
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        names = digit_names(per_class, num_classes)
    else:
        if num_classes > 0:
            raise ValueError(f"{checkpoint} is class-conditional; use --per-class instead of --n")
        labels, names = None, [f"{i:04d}.png" for i in range(n)]
    if architecture == "unet":
        images, _ = generate_digits(model, document, labels, seed=seed, **options)
    else:
        unused = [k for k, v in options.items() if v is not None]
        if unused:
            raise ValueError(f"{', '.join(unused)} apply to diffusion checkpoints only; drop them for a GAN")
        images = sample_gan(model, len(names), seed=seed, labels=labels)
    return write_image_folder(images, names, out, force=force)
