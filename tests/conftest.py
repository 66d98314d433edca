"""Shared fixtures: tiny images, a tiny run config, a checkpoint folder; --runslow and the gpu marker."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

SHARED_DATA = Path(os.environ.get("DLCV_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run tests marked slow (real data, shipped bars)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: needs --runslow (real data or long runs)")
    config.addinivalue_line("markers", "gpu: needs CUDA")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def load_script(relative: str) -> ModuleType:
    """A repository script (scripts/ and benchmarks/ are not packages) as a module, e.g. "scripts/uda_table.py"."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _deterministic_cpu() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """Random uint8 images (8, 3, 28, 28), like DomainBed's Debug28."""
    return torch.randint(0, 256, (8, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def write_digits_domain(root: Path, domain: str, per_split: dict[str, int], channels: int = 3, size: int = 28,
                        seed: int = 0) -> Path:
    """A fake course-layout digits domain: <root>/digits/<domain>/data/*.png + <split>.csv."""
    rng = np.random.default_rng(seed)
    folder = root / "digits" / domain
    (folder / "data").mkdir(parents=True, exist_ok=True)
    index = 0
    for split, n in per_split.items():
        lines = ["image_name,label"]
        for i in range(n):
            label = i % 10
            pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            pixels[:, :, :] //= 4
            pixels[4 + label: 8 + label, 4:24] = 255  # a class-dependent bar so a classifier can learn it
            name = f"{index:05d}.png"
            Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(folder / "data" / name)
            lines.append(f"{name},{label}")
            index += 1
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def tiny_digits(tmp_path: Path) -> Path:
    """A data root with a tiny RGB `mnistm` and a grey `usps` domain (train/val/test)."""
    root = tmp_path / "data"
    write_digits_domain(root, "mnistm", {"train": 60, "val": 20, "test": 20}, channels=3)
    write_digits_domain(root, "usps", {"train": 40, "val": 20, "test": 20}, channels=1, seed=1)
    return root


@pytest.fixture
def tiny_run_cfg(tiny_digits: Path, tmp_path: Path):
    """classifier_digits shrunk to 2 steps on tiny_digits, runs under tmp_path."""
    from dlcv.config import apply_overrides
    from dlcv.presets import get_preset

    return apply_overrides(get_preset("classifier_digits"), [
        f"--data.root={tiny_digits}", f"--train.out_dir={tmp_path / 'runs'}", "--train.steps=2",
        "--train.batch_size=4", "--model.width=4", "--train.eval_every=1", "--train.save_every=1",
        "--train.progress=false", "--train.deterministic=true"])


@pytest.fixture
def tmp_ckpt(tmp_path: Path) -> Path:
    """A saved tiny classifier checkpoint folder."""
    from dlcv import checkpoint
    from dlcv.models.classifier import Classifier, ClassifierConfig

    return checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "ckpt", {"metrics": {"val_accuracy": 0.5}})


def write_faces(root: Path, per_split: dict[str, int]) -> Path:
    """A fake course-layout face set: <root>/face/<split>/*.png (64x64) + <split>.csv (image_name,Smiling,Male)."""
    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        folder = root / "face" / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["image_name,Smiling,Male"]
        for i in range(n):
            name = f"{i:05d}.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)
            lines.append(f"{name},{i % 2},{(i // 2) % 2}")
        (root / "face" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_faces(tmp_path: Path) -> Path:
    return write_faces(tmp_path / "faces", {"train": 8, "val": 4})
