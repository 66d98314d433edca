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


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017), via torch-fidelity."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(f.double().cpu()) for f in (features_a, features_b)]
    return fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID]


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of a classifier (its `embed`) for uint8 images."""
    model.eval()
    return torch.cat([model.embed(to_model_range(images[i:i + batch_size])).float()
                      for i in range(0, len(images), batch_size)])


def digit_scores(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 reference_features: torch.Tensor | None = None) -> dict:
    """Accuracy, per-class accuracy and (given `embed(classifier, real_digits)`, computed once per reference set)
    the digit-FID in the classifier's penultimate features, for uint8 generated digits: how the course grades
    conditional generation."""
    pred = predict_logits(classifier, images).argmax(1)
    scores = {"accuracy": accuracy(pred, labels), "per_class": per_class_accuracy(pred, labels, 10), "n": len(labels)}
    if reference_features is not None:
        scores["digit_fid"] = frechet_distance(embed(classifier, images), reference_features)
    return scores
