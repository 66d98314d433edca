"""Time to generate 1000 class-conditional digits (100 per class) on this machine's CPU: DDPM with the full
schedule, DDIM with 50 and 25 steps, as ratios, each with the course classifier's accuracy.

    python benchmarks/sample_speed.py checkpoints/ddpm_digits
    python benchmarks/sample_speed.py checkpoints/ddpm_digits --ddpm-per-class 10   # DDPM timed on 100, scaled x10

The full DDPM schedule costs T network calls per image (two with guidance), so it may be timed on fewer images and
scaled linearly: the output says when it was.
"""

from __future__ import annotations

import argparse
import time

import torch

from dlcv import checkpoint, service
from dlcv.metrics import accuracy, predict_logits

from digits_quality import COURSE_CLASSIFIER, to_uint8  # same directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--classifier", default=str(COURSE_CLASSIFIER))
    parser.add_argument("--guidance-interval", default="", metavar="LO,HI", help="guidance only for LO <= t <= HI")
    parser.add_argument("--guidance", type=float, default=None, help="w (default: the checkpoint's)")
    parser.add_argument("--uncond-every", type=int, default=None, metavar="K",
                        help="unconditional model every K-th step (default: the checkpoint's)")
    parser.add_argument("--ddpm-per-class", type=int, default=100, help="images per class for the DDPM timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = checkpoint.load_course_classifier(args.classifier)
    model, document = service.load(args.checkpoint)
    T = document["schedule"]["num_timesteps"]
    interval = tuple(int(v) for v in args.guidance_interval.split(",")) if args.guidance_interval else None
    rows = []
    for label, sampler, steps, per_class in (("DDIM-25", "ddim", 25, 100), ("DDIM-50", "ddim", 50, 100),
                                             (f"DDPM-{T}", "ddpm", T, args.ddpm_per_class)):
        labels = torch.arange(10).repeat_interleave(per_class)
        start = time.perf_counter()
        images, _ = service.generate_digits(model, document, labels, seed=0, sampler=sampler, steps=steps,
                                            guidance_interval=interval, uncond_every=args.uncond_every,
                                            guidance=args.guidance)
        seconds = time.perf_counter() - start
        acc = accuracy(predict_logits(classifier, to_uint8(images)).argmax(1), labels)
        scaled = seconds * 1000 / len(labels)
        rows.append((label, scaled, acc, len(labels)))
        print(f"{label}: {seconds:.1f} s for {len(labels)} digits -> {scaled:.1f} s per 1000, accuracy {acc:.4f}",
              flush=True)
    base = rows[-1][1]
    sampling = document["sampling"]
    print(f"\nguidance w = {args.guidance if args.guidance is not None else sampling['guidance']}, "
          f"interval = {interval or 'every step'}, "
          f"unconditional model every {args.uncond_every or sampling.get('uncond_every', 1)} guided step(s), "
          f"torch threads = {torch.get_num_threads()}")
    print("| sampler | s per 1000 digits | vs DDPM | accuracy | timed on |\n| --- | ---: | ---: | ---: | ---: |")
    for label, seconds, acc, n in rows:
        print(f"| {label} | {seconds:.1f} | {base / seconds:.1f}x faster | {acc:.4f} | {n} digits |")


if __name__ == "__main__":
    main()
