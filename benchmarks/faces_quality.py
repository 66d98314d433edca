"""FID and KID of face generators against real faces (torch-fidelity, 2015-12-05 FID-Inception pool3 features; the
weights come from dlcv.inception, so nothing is downloaded). Each checkpoint samples N faces into a temporary folder
(service.sample_to_folder, seed-fixed), then face_scores compares that folder with the reference folder.

    python benchmarks/faces_quality.py checkpoints/dcgan_faces checkpoints/wgan_gp_faces --ref data/face/val \
        --n 1000 --seed 0 --json runs/faces_quality.json

A class-conditional generator (the Smiling ACGAN) writes N / K faces per label, and --attribute-classifier (default
checkpoints/smiling_classifier) reports how often it predicts the requested label ("agreement"). A Smiling ACGAN
also gets the identity check of its smiling pairs (--pairs of them, the same z with Smiling off and on): the mean
cosine similarity of the pairs' Inception pool3 features ("pair_same") against that of mismatched pairs
("pair_other"); pairs that stay one face score well above the mismatched ones.

The reference features are cached (under $DLCV_CACHE/fidelity, default ~/.cache/dlcv/fidelity), so only the first
checkpoint pays for the reference pass. For the floor of FID at N samples, score real faces against the reference:
face_scores("data/face/test", "data/face/val").
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from dlcv import checkpoint, service
from dlcv.data.digits import read_image_folder
from dlcv.data.loaders import to_image_range
from dlcv.fileio import atomic_write_text
from dlcv.inception import feature_extractor
from dlcv.metrics import accuracy, face_scores, pair_similarity, per_class_accuracy, predict_logits


def num_classes(checkpoint: str | Path) -> int:
    return int(json.loads((Path(checkpoint) / "config.json").read_text())["config"].get("num_classes", 0))


def agreement(folder: Path, classifier: str | Path) -> dict[str, float]:
    """Share of samples {label}_{index}.png that `classifier` assigns to their label, overall and per label."""
    model, _ = checkpoint.load(classifier)
    images, names = read_image_folder(folder, image_size=None)
    labels = torch.tensor([int(name.split("_")[0]) for name in names])
    pred = predict_logits(model, images).argmax(1)
    per_label = per_class_accuracy(pred, labels, model.config.num_classes)
    return {"agreement": round(accuracy(pred, labels), 4),
            **{f"agreement_{k}": round(v, 4) for k, v in per_label.items()}}


@torch.no_grad()
def pair_identity(folder: str | Path, n: int, seed: int, batch_size: int = 50) -> dict[str, float]:
    """pair_similarity of the Inception pool3 features of n smiling pairs (service.smiling_pairs, seed-fixed)."""
    generator, _ = checkpoint.load(folder)
    extractor = feature_extractor(fused=True)
    features = []
    for images in service.smiling_pairs(generator, n, seed=seed):
        pixels = to_image_range(images).mul(255).round().byte()  # the extractor takes uint8, as in face_scores
        features.append(torch.cat([extractor(pixels[i:i + batch_size])[0] for i in range(0, n, batch_size)]))
    similarity = pair_similarity(*features)
    return {"pair_same": round(similarity["same"], 4), "pair_other": round(similarity["other"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="generator checkpoint folders")
    parser.add_argument("--ref", default="data/face/val", help="folder of real face PNGs")
    parser.add_argument("--n", type=int, default=1000, help="faces sampled per checkpoint")
    parser.add_argument("--seed", type=int, default=0,
                        help="image i uses seed + i, so seeds 0 and 1 share N - 1 images: for an independent "
                             "sample take seeds at least N apart (0, 1000, 2000 with --n 1000)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="clamped to the smaller folder")
    parser.add_argument("--batch-size", type=int, default=64, help="Inception batch size")
    parser.add_argument("--cache-name", default="", help="reference feature cache name (default: faces-<ref name>)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write the results here")
    parser.add_argument("--attribute-classifier", default="checkpoints/smiling_classifier",
                        help="checks a conditional generator's labels (its val accuracy bounds what agreement means)")
    parser.add_argument("--pairs", type=int, default=200, help="smiling pairs for a Smiling ACGAN's identity check")
    parser.add_argument("--also-classifiers", default="", metavar="C1,C2",
                        help="more classifiers to report agreement by, comma-separated, as agreement@<folder name> (e.g. "
                             "a GAN's teachers: their gap to the judge is what G fitted to them alone)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cache_name = args.cache_name or f"faces-{Path(args.ref).resolve().name}"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"reference {args.ref}, {args.n} samples per checkpoint, seed {args.seed}, Inception on {device}", flush=True)

    rows = []
    for folder_arg in args.checkpoints:
        with tempfile.TemporaryDirectory(prefix="faces_quality_") as tmp:
            start = time.perf_counter()
            k = num_classes(folder_arg)
            count = {"per_class": args.n // k} if k else {"n": args.n}  # conditional: N / K faces per label
            folder = service.sample_to_folder(folder_arg, Path(tmp) / "samples", seed=args.seed, **count)
            sample_seconds = time.perf_counter() - start
            extra = agreement(folder, args.attribute_classifier) if k else {}
            for classifier in filter(None, args.also_classifiers.split(",")) if k else []:
                extra[f"agreement@{Path(classifier).name}"] = agreement(folder, classifier)["agreement"]
            if k == 2:
                extra.update(pair_identity(folder_arg, args.pairs, args.seed))
            start = time.perf_counter()
            scores = face_scores(folder, args.ref, kid_subset_size=args.kid_subset_size, cache_name=cache_name,
                                 batch_size=args.batch_size)
            inception_seconds = time.perf_counter() - start
        row = {"name": Path(folder_arg).name, "checkpoint": str(folder_arg), **scores, **extra,
               "sample_seconds": round(sample_seconds, 2), "inception_seconds": round(inception_seconds, 2)}
        rows.append(row)
        print(f"{row['name']}: FID {row['fid']:.2f}, KID {row['kid_mean']:.5f} ± {row['kid_std']:.5f}, "
              f"sampling {sample_seconds:.1f} s, Inception passes {inception_seconds:.1f} s"
              + "".join(f", {key} {value:.3f}" for key, value in extra.items()), flush=True)

    print("\n| checkpoint | FID | KID mean ± std | sampling s | Inception s |\n| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['name']} | {row['fid']:.2f} | {row['kid_mean']:.5f} ± {row['kid_std']:.5f} "
              f"| {row['sample_seconds']:.1f} | {row['inception_seconds']:.1f} |")
    print(f"Inception passes took {sum(r['inception_seconds'] for r in rows):.1f} s in all (the first includes the "
          f"reference pass unless {cache_name!r} was already cached)")
    if args.json:
        document = {"ref": args.ref, "n": args.n, "seed": args.seed, "device": device, "results": rows}
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
