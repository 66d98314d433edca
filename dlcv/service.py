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
