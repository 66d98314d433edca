"""Where a class-conditional digit generator and the course classifier part ways (docs/methods.md): 100 digits per
class at several seeds; for each of our classifiers, how often it reads the requested class and how well its
confidence predicts the course classifier's misreadings (ROC AUC); and the same course figures under truncated z.

    python benchmarks/digits_disagreement.py checkpoints/acgan_digits --classifiers checkpoints/classifier_digits_mnistm,\
checkpoints/classifier_digits_lenet_synth_s0 --truncation 2,1.5,1
"""

from __future__ import annotations

import sys
from pathlib import Path
import argparse
import json
import os

import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv import checkpoint  # noqa: E402
from dlcv.metrics import digit_scores, embed, predict_logits  # noqa: E402
from dlcv.sampling import sample_gan  # noqa: E402

from digits_quality import COURSE_CLASSIFIER, reference_digits, to_uint8  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a class-conditional GAN generator")
    parser.add_argument("--classifiers", default="", help="comma-separated classifier checkpoints to compare")
    parser.add_argument("--seeds", default="0,1000,100000")
    parser.add_argument("--truncation", default="", help="comma-separated truncation thresholds to score")
    parser.add_argument("--data", default=os.environ.get("DLCV_DATA", "data"))
    parser.add_argument("--course", default=str(COURSE_CLASSIFIER))
    args = parser.parse_args()

    course = checkpoint.load_course_classifier(args.course)
    generator, _ = checkpoint.load(args.checkpoint)
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = torch.arange(10).repeat_interleave(100)
    images = torch.cat([to_uint8(sample_gan(generator, 1000, seed=s, labels=labels)) for s in seeds])
    requested = labels.repeat(len(seeds))
    course_right = (predict_logits(course, images).argmax(1) == requested).float()
    print(json.dumps({"images": len(images), "course_misread": int((1 - course_right).sum())}))
    for path in filter(None, args.classifiers.split(",")):
        logits = predict_logits(checkpoint.load(path)[0], images)
        log_p = logits.log_softmax(1)[torch.arange(len(images)), requested]
        agree = (logits.argmax(1) == requested).float().mean().item()
        print(json.dumps({"classifier": path, "reads_requested": round(agree, 3),
                          "auc_of_course_errors": round(roc_auc_score(course_right, log_p), 3)}))

    thresholds = [float(v) for v in args.truncation.split(",") if v]
    reference = embed(course, reference_digits(args.data)) if thresholds else None  # once, for every threshold
    for t in thresholds:
        for seed in seeds:
            scores = digit_scores(course, to_uint8(sample_gan(generator, 1000, seed=seed, labels=labels, truncation=t)),
                                  labels, reference)
            print(json.dumps({"truncation": t, "seed": seed, "accuracy": round(scores["accuracy"], 4),
                              "lowest_class": round(min(scores["per_class"].values()), 3),
                              "digit_fid": round(scores["digit_fid"], 1)}))


if __name__ == "__main__":
    main()
