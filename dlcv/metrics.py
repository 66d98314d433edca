"""Pure evaluation functions: predictions, accuracy and per-class accuracy of a classifier over uint8 images."""

from __future__ import annotations

import torch
import torch.nn as nn

from dlcv.data.loaders import to_model_range


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits (N, K) of uint8 images (N, C, H, W), in batches, model in eval mode."""
    was_training = model.training
    model.eval()
    outputs = [model(to_model_range(images[i:i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to labels."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined; pass at least one labelled image")
    return (predictions == labels).float().mean().item()


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, float]:
    """class -> accuracy over the images of that class (classes without images are left out)."""
    out = {}
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = (predictions[mask] == c).float().mean().item()
    return out
