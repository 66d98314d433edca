"""Image classifiers: the course's LeNet digit grader (loads its Classifier.pth) and a small conv net."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlcv.config import check_at_least, check_literals


@dataclass
class ClassifierConfig:
    """kind='lenet' is the course's grader (28x28 RGB, 10 classes); 'convnet' is ours for digits or faces."""

    kind: Literal["lenet", "convnet"] = "convnet"
    in_channels: int = 3
    image_size: int = 28
    num_classes: int = 10
    width: int = 64

    def __post_init__(self) -> None:
        check_literals(self, "model")
        check_at_least(self, "model", 1, "in_channels", "image_size", "num_classes", "width")
        if self.kind == "lenet" and (self.image_size, self.in_channels) != (28, 3):
            raise ValueError("model.kind='lenet' is the course classifier: it needs image_size=28, in_channels=3")


class Classifier(nn.Module):
    """Takes images in [-1, 1] (B, C, H, W); grey input is replicated to the model's channel count."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        if config.kind == "lenet":
            # the course's digit_classifier.py; its (x - 0.5) / 0.5 normalisation is exactly dlcv's [-1, 1] range
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 4 * 4, 128)
            self.fc2 = nn.Linear(128, 64)
            self.fc3 = nn.Linear(64, config.num_classes)
        else:
            w = config.width
            blocks, c_in = [], config.in_channels
            for c_out in (w, 2 * w, 4 * w):
                blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                           nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                           nn.MaxPool2d(2)]
                c_in = c_out
            self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # -> (B, 4w)
            self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(4 * w, config.num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, D): used for t-SNE and feature-space FID."""
        if x.shape[1] == 1 and self.config.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.config.kind == "lenet":
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.flatten(1)  # (B, 16, 4, 4) -> (B, 256)
            return F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        z = self.embed(x)
        return self.fc3(z) if self.config.kind == "lenet" else self.head(z)

