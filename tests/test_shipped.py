"""Every folder in checkpoints/ loads strictly and runs on the CPU with no data (what the demo and grading need)."""

from pathlib import Path

import pytest
import torch

from dlcv import checkpoint, service

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = sorted(p.name for p in CHECKPOINTS.glob("*") if (p / "config.json").is_file())


def test_something_ships():
    assert SHIPPED, "checkpoints/ should hold at least one model"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_and_runs(name):
    folder = CHECKPOINTS / name
    model, document = checkpoint.load(folder)
    assert (folder / "model.safetensors").stat().st_size < 50 * 2**20
    assert "run" in document and "seed" in document["run"]["train"]
    if document["architecture"] == "classifier":
        x = torch.zeros(2, model.config.in_channels, model.config.image_size, model.config.image_size)
        assert model(x).shape == (2, model.config.num_classes)
    elif document["architecture"] == "unet":
        images, _ = service.generate_digits(model, document, torch.tensor([0, 9]), steps=2)
        assert images.shape == (2, 3, 28, 28) and images.abs().max() <= 1
    elif document["architecture"] == "vae":
        from dlcv.sampling import sample_vae

        images = sample_vae(model, 2)
        assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
        assert document["metrics"]["val_mse"] <= 0.010  # the VAE's target, measured on the shipped weights
    elif document["architecture"] == "uda_net":
        x = torch.zeros(2, model.config.in_channels, model.config.image_size, model.config.image_size)
        assert model(x).shape == (2, model.config.num_classes)
    else:
        from dlcv.sampling import sample_gan

        labels = torch.tensor([0, 1]) if model.config.num_classes else None
        images = sample_gan(model, 2, labels=labels)
        assert images.shape[0] == 2 and torch.isfinite(images).all()
