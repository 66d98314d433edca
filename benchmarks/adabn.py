"""Target test accuracy of a trained adaptation checkpoint with its own batch-norm statistics and with statistics
re-estimated on unlabelled target train images (AdaBN, Li et al. 2016): how much of a source-only model's failure on
the target is batch norm. Evaluated in fp32; the checkpoint on disk is not changed.

    python benchmarks/adabn.py checkpoints/uda_source_only_mnistm_to_usps --data data --domain usps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv import checkpoint  # noqa: E402
from dlcv.data.digits import read_digits  # noqa: E402
from dlcv.data.loaders import to_model_range  # noqa: E402
from dlcv.training.uda import to_rgb  # noqa: E402


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Accuracy of `model` in eval mode on uint8 images (N, C, H, W)."""
    model.eval()
    logits = torch.cat([model(to_rgb(to_model_range(images[i:i + batch]))) for i in range(0, len(images), batch)])
    return (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def adapt_batch_norm(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> None:
    """Replace every batch-norm layer's running statistics by their plain average over `images` (train-mode passes)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the passes, not an exponential one
    model.eval()  # dropout off: the statistics are those of the network that predicts
    for norm in norms:
        norm.train()
    for i in range(0, len(images), batch):
        model.features(to_rgb(to_model_range(images[i:i + batch])))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="data")
    parser.add_argument("--domain", required=True, help="the target domain, e.g. usps")
    parser.add_argument("--images", type=int, default=10000, help="target train images for the statistics")
    args = parser.parse_args()
    model, _ = checkpoint.load(args.checkpoint)
    test = read_digits(args.data, args.domain, "test", channels=None, image_size=28)
    train = read_digits(args.data, args.domain, "train", channels=None, image_size=28)
    before = accuracy(model, test.images, test.labels)
    adapt_batch_norm(model, train.images[:args.images])
    after = accuracy(model, test.images, test.labels)
    print(f"{args.checkpoint} on {args.domain}/test: own batch-norm statistics {before:.4f}; statistics of "
          f"{min(args.images, len(train.images))} unlabelled {args.domain}/train images (AdaBN) {after:.4f}")


if __name__ == "__main__":
    main()
