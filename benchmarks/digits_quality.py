"""Quality of class-conditional digit generators, graded as the course does: 100 digits per class, accuracy of
the course's classifier, per-class accuracy, and digit-FID (Fréchet distance of the classifier's 64-d penultimate
features, against 1000 real MNIST-M test digits: 100 per class). For diffusion it also sweeps the guidance weight
and draws the figures (10x10 grid, reverse process of the first "0", accuracy/FID against w).

    python benchmarks/digits_quality.py checkpoints/ddpm_digits --sweep 0,0.5,1,2,3,4 --figures docs/figures
    python benchmarks/digits_quality.py checkpoints/acgan_digits --figures docs/figures --write-metrics
    python benchmarks/digits_quality.py checkpoints/acgan_digits --seeds 1-10     # + how the floor holds over seeds

Each row also has `spread`: per class, the median distance from a sample to its nearest same-class sample (pixels in
[0, 1]; `dlcv.metrics.within_class_spread`), next to the same figure for the real reference digits: near-copies
(within-class collapse) show there even when the digit-FID does not.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from dlcv import checkpoint, service
from dlcv.data.digits import read_digits
from dlcv.data.loaders import to_image_range
from dlcv.diffusion import sampler_timesteps
from dlcv.metrics import digit_scores, embed, within_class_spread
from dlcv.sampling import sample_gan
from dlcv.viz import plot_guidance_curve, save_grid, save_strip

COURSE_CLASSIFIER = Path(__file__).resolve().parents[2] / "shared/data/weights/dlcv_digit_classifier.pth"


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, rounded the way torchvision.save_image writes PNGs (so scores match the files)."""
    return to_image_range(images).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def reference_digits(data: str, per_class: int = 100) -> torch.Tensor:
    """The first `per_class` MNIST-M test digits of each class (uint8)."""
    test = read_digits(data, "mnistm", "test")
    idx = torch.cat([torch.nonzero(test.labels == c).flatten()[:per_class] for c in range(10)])
    return test.images[idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default=os.environ.get("DLCV_DATA", "data"))
    parser.add_argument("--classifier", default=str(COURSE_CLASSIFIER))
    parser.add_argument("--guidance-interval", default="", metavar="LO,HI", help="guidance only for LO <= t <= HI")
    parser.add_argument("--uncond-every", type=int, default=None, metavar="K",
                        help="unconditional model every K-th step (default: the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", default="", help="comma-separated guidance weights (diffusion only)")
    parser.add_argument("--figures", default="", help="folder for the figures")
    parser.add_argument("--write-metrics", action="store_true", help="store the default-setting scores in config.json")
    parser.add_argument("--seeds", default="", metavar="A-B|A,B,...",
                        help="also score the default setting at these seeds: accuracy and lowest class per seed")
    args = parser.parse_args()

    classifier = checkpoint.load_course_classifier(args.classifier)
    reference = reference_digits(args.data)
    reference_features = embed(classifier, reference)  # once, not per guidance weight
    model, document = service.load(args.checkpoint)
    labels = torch.arange(10).repeat_interleave(100)
    name = Path(args.checkpoint).name
    figures = Path(args.figures) if args.figures else None

    def generate(guidance: float | None = None, keep: tuple[int, ...] = (), seed: int = args.seed):
        start = time.perf_counter()
        if document["architecture"] == "unet":
            images, kept = service.generate_digits(model, document, labels, seed=seed, guidance=guidance,
                                                   keep=keep, guidance_interval=interval,
                                                   uncond_every=args.uncond_every)
        else:
            images, kept = sample_gan(model, len(labels), seed=seed, labels=labels), {}
        return images, kept, time.perf_counter() - start

    default_w = document.get("sampling", {}).get("guidance")
    interval = tuple(int(v) for v in args.guidance_interval.split(",")) if args.guidance_interval else None
    rows = []
    weights = [float(w) for w in args.sweep.split(",") if w] if document["architecture"] == "unet" else []
    for w in weights or [default_w]:
        keep = ()
        if document["architecture"] == "unet" and w == default_w:
            steps = sampler_timesteps(document["sampling"].get("sampler", "ddim"),
                                      document["schedule"]["num_timesteps"], document["sampling"]["steps"])
            keep = tuple(steps[i] for i in torch.linspace(0, len(steps) - 1, 6).round().long().tolist())
        images, kept, seconds = generate(w, keep)
        digits = to_uint8(images)  # what the PNG files hold
        scores = digit_scores(classifier, digits, labels, reference_features)
        spread = within_class_spread(digits, labels)
        row = {"guidance": w, "accuracy": round(scores["accuracy"], 4), "digit_fid": round(scores["digit_fid"], 3),
               "per_class": {c: round(a, 3) for c, a in scores["per_class"].items()}, "seconds": round(seconds, 1),
               "spread": {c: round(d, 2) for c, d in spread.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if figures is not None and w == default_w:
            grid = torch.stack([images[labels == d][:10] for d in range(10)]).flatten(0, 1)  # rows = digits
            save_grid(grid, figures / f"{name}_grid.png", nrow=10)
            if kept:
                first_zero = int(torch.nonzero(labels == 0)[0])
                ts = sorted(kept, reverse=True)
                frames = [kept[t][first_zero] for t in ts] + [images[first_zero]]
                save_strip(frames, [f"t={t}" for t in ts] + ["x0"], figures / f"{name}_reverse.png")
        if w == default_w and args.write_metrics:
            checkpoint.update_metrics(args.checkpoint, {"accuracy": row["accuracy"], "digit_fid": row["digit_fid"],
                                                 "per_class_accuracy": row["per_class"], "guidance": w,
                                                 "measured_with": "benchmarks/digits_quality.py, seed 0, 100 per class"})
    if rows:  # the reference digits' spread, once
        print(json.dumps({"reference_spread": {c: round(d, 2)
                                               for c, d in within_class_spread(reference, labels).items()}}))
    if args.seeds:
        lo, _, hi = args.seeds.partition("-")
        seeds = range(int(lo), int(hi) + 1) if hi else [int(v) for v in args.seeds.split(",")]
        floors = []
        for seed in seeds:
            scores = digit_scores(classifier, to_uint8(generate(default_w, seed=seed)[0]), labels)
            floors.append((scores["accuracy"], min(scores["per_class"].values())))
            print(json.dumps({"seed": seed, "accuracy": round(floors[-1][0], 4),
                              "lowest_class": round(floors[-1][1], 3)}))
        print(f"seeds {args.seeds}: mean accuracy {sum(a for a, _ in floors) / len(floors):.4f}, lowest class "
              f"{min(f for _, f in floors):.2f}, no class below 0.95 at {sum(f >= 0.95 for _, f in floors)} of "
              f"{len(floors)}")
    if figures is not None and len(rows) > 1:
        plot_guidance_curve(rows, figures / f"{name}_guidance.png")
    print("\n| w | accuracy | digit-FID | s |\n| ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['guidance']} | {r['accuracy']:.4f} | {r['digit_fid']:.3f} | {r['seconds']} |")


if __name__ == "__main__":
    main()
