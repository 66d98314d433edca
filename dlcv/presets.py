"""Named RunConfigs. `python -m dlcv train NAME --train.lr=1e-4` edits a copy of one of these."""

from __future__ import annotations

from dlcv.config import DataConfig, RunConfig, TrainConfig, from_dict, to_dict
from dlcv.models.classifier import ClassifierConfig

PRESETS: dict[str, RunConfig] = {
    # a digit classifier on one domain; --data.domain=usps etc. picks another (grey domains -> 3 channels)
    "classifier_digits": RunConfig(
        name="classifier_digits", family="classifier", architecture="classifier",
        model=ClassifierConfig(kind="convnet", in_channels=3, image_size=28, num_classes=10, width=32),
        data=DataConfig(dataset="digits", domain="mnistm", image_size=28, channels=3),
        train=TrainConfig(steps=3000, batch_size=128, lr=2e-3, betas=(0.9, 0.999), weight_decay=5e-4,
                          eval_every=500, save_every=500),
    ),
    # checks the Smiling ACGAN: does a generated face show the attribute that was asked for?
    "smiling_classifier": RunConfig(
        name="smiling_classifier", family="classifier", architecture="classifier",
        model=ClassifierConfig(kind="convnet", in_channels=3, image_size=64, num_classes=2, width=32),
        data=DataConfig(dataset="face", attribute="Smiling", image_size=64, channels=3),
        train=TrainConfig(steps=2000, batch_size=64, lr=2e-3, betas=(0.9, 0.999), weight_decay=5e-4,
                          eval_every=250, save_every=250),
    ),
}


def get_preset(name: str) -> RunConfig:
    """A fresh copy of a preset (editing it never changes PRESETS)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return from_dict(RunConfig, to_dict(PRESETS[name]))
