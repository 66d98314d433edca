"""Speed and quality of the diffusion samplers on this machine's CPU: for each sampler x steps, the time to generate
the homework set (1000 digits, 100 per class) with the course classifier's accuracy on it, and the time to generate
10 digits of one class (what the demo does on Generate). Optionally a plot of accuracy against time.

    python benchmarks/sample_speed.py checkpoints/ddpm_digits
    python benchmarks/sample_speed.py checkpoints/ddpm_digits --configs ddim:50,dpm++2m:10,dpm++2m:15 \
        --plot docs/figures/sampler_speed.png
    python benchmarks/sample_speed.py checkpoints/ddpm_digits --configs ddpm:1000 --per-class 10  # DDPM on 100 digits

Configurations run in the order given, each with the checkpoint's guidance and uncond_every unless overridden; a
shared machine makes absolute seconds noisy, so compare rows of one run. `--per-class` below 100 times fewer digits
and scales the time to 1000 linearly (the output says so).
"""

from __future__ import annotations

import sys
import argparse
import statistics
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv import checkpoint, service  # noqa: E402
from dlcv.metrics import accuracy, predict_logits  # noqa: E402

from digits_quality import COURSE_CLASSIFIER, to_uint8  # same directory  # noqa: E402

DEFAULT_CONFIGS = "ddim:50,ddim:25,dpm++2m:8,dpm++2m:10,dpm++2m:12,dpm++2m:15,dpm++2m:20"


def parse_configs(text: str) -> list[tuple[str, int]]:
    """"ddim:50,dpm++2m:10" -> [("ddim", 50), ("dpm++2m", 10)]."""
    configs = []
    for item in filter(None, text.split(",")):
        sampler, _, steps = item.partition(":")
        configs.append((sampler, int(steps)))
    return configs


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy against seconds per 1000 digits, one line per sampler, each point labelled with its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["seconds_1000"])
        ax.plot([r["seconds_1000"] for r in mine], [r["accuracy"] for r in mine], "o-", label=sampler)
        for r in mine:
            ax.annotate(str(r["steps"]), (r["seconds_1000"], r["accuracy"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("seconds per 1000 digits (2 CPU threads)")
    ax.set_ylabel("course-classifier accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--classifier", default=str(COURSE_CLASSIFIER))
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="sampler:steps,... (samplers ddim, dpm++2m, ddpm)")
    parser.add_argument("--per-class", type=int, default=100, help="digits per class for the accuracy run")
    parser.add_argument("--one-class", type=int, default=10, help="digits of one class for the demo timing (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="demo timings per config (the median is shown)")
    parser.add_argument("--guidance", type=float, default=None, help="w (default: the checkpoint's)")
    parser.add_argument("--uncond-every", type=int, default=None, metavar="K",
                        help="unconditional model every K-th step (default: the checkpoint's)")
    parser.add_argument("--guidance-interval", default="", metavar="LO,HI", help="guidance only for LO <= t <= HI")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--plot", default="", help="write accuracy against time to this PNG")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    classifier = checkpoint.load_course_classifier(args.classifier)
    model, document = service.load(args.checkpoint)
    sampling = document.get("sampling", {})
    interval = tuple(int(v) for v in args.guidance_interval.split(",")) if args.guidance_interval else None
    options = dict(guidance=args.guidance, uncond_every=args.uncond_every, guidance_interval=interval)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    rows = []
    for sampler, steps in parse_configs(args.configs):
        images, seconds = timed(lambda: service.generate_digits(model, document, labels, seed=0, sampler=sampler,
                                                                steps=steps, **options)[0])
        acc = accuracy(predict_logits(classifier, to_uint8(images)).argmax(1), labels)
        demo = []
        for repeat in range(args.repeats if args.one_class else 0):
            one = torch.full((args.one_class,), 3, dtype=torch.long)
            demo.append(timed(lambda: service.generate_digits(model, document, one, seed=repeat, sampler=sampler,
                                                              steps=steps, **options))[1])
        row = dict(sampler=sampler, steps=steps, seconds_1000=seconds * 1000 / len(labels), accuracy=acc,
                   demo=statistics.median(demo) if demo else float("nan"))
        rows.append(row)
        print(f"{sampler}-{steps}: {seconds:.1f} s for {len(labels)} digits -> {row['seconds_1000']:.1f} s per 1000, "
              f"accuracy {acc:.4f}; {args.one_class} digits of one class {row['demo']:.2f} s", flush=True)
    w = args.guidance if args.guidance is not None else sampling.get("guidance")
    k = args.uncond_every or sampling.get("uncond_every", 1)
    print(f"\nguidance w = {w}, interval = {interval or 'every step'}, unconditional model every {k} guided "
          f"step(s), torch threads = {torch.get_num_threads()}, {len(labels)} digits per accuracy run"
          + ("" if args.per_class == 100 else " (time scaled to 1000)"))
    print(f"| sampler | steps | s per 1000 digits | accuracy | s for {args.one_class} digits of one class |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['seconds_1000']:.1f} | {r['accuracy']:.4f} | {r['demo']:.2f} |")
    if args.plot:
        plot(rows, Path(args.plot), f"{Path(args.checkpoint).name}: w = {w}, uncond every {k}")


if __name__ == "__main__":
    main()
