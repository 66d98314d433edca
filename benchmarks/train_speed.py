"""Training images/s of each face preset and the DDPM on this machine, in every precision x memory layout and as
`train.amp=auto, train.channels_last=auto` chose, beside a plain course-style reference loop.

    python benchmarks/train_speed.py --data data --steps 30

The reference is the course's DCGAN loop: a DataLoader over the PNG files (PIL decode + ToTensor + Normalize per
image, no in-memory cache), fp32, default memory layout, the same Generator/Discriminator and BCE maths. Our loop
is `dlcv.training.train` on the preset (in-memory uint8 cache), once per combination of fp32 / bf16 autocast and
default / channels_last layout, and once on auto with an empty precision cache, so its probe runs and its choice is
printed. Throughput counts real images through D (or the network) per second, after `--warmup` steps.

`--compare-old DIR` times each preset's loop in this checkout against the same loop in another checkout DIR of
dlcv (e.g. an older commit checked out with `git worktree add /tmp/old COMMIT`), alternating the two in fresh
processes `--repeats` times and printing the median ratio new / old:

    python benchmarks/train_speed.py --data data --steps 20 --compare-old /tmp/old --repeats 3

It also prints the arithmetic the reference does (GFLOP per step, counted by torch's FlopCounterMode) and this
machine's fp32 matmul rate, so a reader can tell whether 2x the reference is possible with fp32 maths at all: on a
CPU without native bf16 (AVX2 only) the reference already runs near that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

# --code DIR: import dlcv from another checkout (how --compare-old times the old loop)
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else str(Path(__file__).resolve().parents[1])
sys.path.insert(0, CODE)

from dlcv.config import apply_overrides  # noqa: E402
from dlcv.presets import get_preset  # noqa: E402
from dlcv.training import train  # noqa: E402
from dlcv.training.common import run_dir  # noqa: E402

PRESETS = ["dcgan_faces", "sngan_faces", "wgan_gp_faces", "acgan_faces", "vae_faces", "ddpm_digits"]
# (train.amp, train.channels_last): every fixed combination, then the probe's choice
COMBINATIONS = [("fp32", "false"), ("fp32", "true"), ("bf16", "false"), ("bf16", "true"), ("auto", "auto")]


def ours(preset: str, data: str, steps: int, warmup: int, amp: str | None = None, layout: str | None = None,
         ) -> tuple[float, str]:
    """(images/s, the combination that ran) of our training loop, from its metrics.jsonl timestamps (one line per
    step). amp="auto" probes afresh: the precision cache is a temporary one. None keeps the preset's settings (an
    older checkout, timed by --compare-old, has no "auto")."""
    from dlcv.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"--data.root={data}", f"--train.out_dir={tmp}", f"--train.steps={warmup + steps}",
                     "--train.log_every=1", "--train.sample_every=0", "--train.save_every=0", "--train.eval_every=0",
                     "--train.progress=false", "--train.device=cpu"]
        if hasattr(TrainConfig, "tensorboard"):
            overrides.append("--train.tensorboard=false")
        overrides += [f"--train.amp={amp}"] if amp else []
        overrides += [f"--train.channels_last={layout}"] if layout else []
        cfg = apply_overrides(get_preset(preset), overrides)
        cache = os.environ.get("DLCV_CACHE")
        os.environ["DLCV_CACHE"] = str(Path(tmp) / "cache")
        try:
            folder = train(cfg, out=Path(tmp) / "ckpt")
        finally:
            os.environ.pop("DLCV_CACHE") if cache is None else os.environ.update(DLCV_CACHE=cache)
        ran = json.loads((folder / "config.json").read_text())["run"]["train"]
        lines = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
        n_critic = int(cfg.method.get("n_critic", 1))
        # the last line also carries end-of-run work (the VAE's val pass), so time up to the one before it
        seconds = lines[-2]["time_s"] - lines[warmup - 1]["time_s"]
        label = f"{ran['amp']}{' + CL' if ran['channels_last'] in (True, 'true') else ''}"
        return (steps - 1) * cfg.train.batch_size * n_critic / seconds, label


def reference(data: str, steps: int, warmup: int, batch_size: int = 64) -> float:
    """The course-style DCGAN step, reading PNGs from disk through a DataLoader every step."""
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from dlcv.models.gan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

    class Faces(Dataset):
        def __init__(self, folder: Path) -> None:
            self.files = sorted(folder.glob("*.png"))
            self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)])

        def __len__(self) -> int:
            return len(self.files)

        def __getitem__(self, i: int) -> torch.Tensor:
            return self.transform(Image.open(self.files[i]).convert("RGB"))

    loader = DataLoader(Faces(Path(data) / "face" / "train"), batch_size=batch_size, shuffle=True, drop_last=True)
    G, D = Generator(GeneratorConfig()), Discriminator(DiscriminatorConfig())
    g_opt = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    start, done = None, 0
    for real in loader:
        if done == warmup:
            start = time.perf_counter()
        z = torch.randn(batch_size, 100)
        fake = G(z)
        d_real, _ = D(real)
        d_fake, _ = D(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + \
            F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_logits, _ = D(fake)
        g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
        done += 1
        if done == warmup + steps:
            break
    return steps * batch_size / (time.perf_counter() - start)


def reference_gflop(batch_size: int = 64) -> float:
    """GFLOP of one reference step (G forward once, D on real and fake, both backward passes), counted by torch."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from dlcv.models.gan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

    G, D = Generator(GeneratorConfig()), Discriminator(DiscriminatorConfig())
    with FlopCounterMode(display=False) as counter:
        fake = G(torch.randn(batch_size, 100))
        d_real, _ = D(torch.randn(batch_size, 3, 64, 64))
        d_fake, _ = D(fake.detach())
        (F.softplus(-d_real).mean() + F.softplus(d_fake).mean()).backward()
        F.softplus(-D(fake)[0]).mean().backward()
    return counter.get_total_flops() / 1e9


def matmul_gflops() -> float:
    """This CPU's fp32 rate on large square matmuls (best of three sizes): a practical ceiling for conv nets."""
    best = 0.0
    for n in (2048, 4096, 6144):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps = max(3, int(2e10 / (2 * n**3)))
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


COMPARED = PRESETS + ["ddpm_digits", "classifier_digits", "uda_dann"]


def compare_old(args: argparse.Namespace) -> None:
    """Median images/s ratio of this checkout's loop to another checkout's, each run in a fresh process, alternated."""
    import statistics
    import subprocess

    def measure(code: str, preset: str) -> float:
        command = [sys.executable, __file__, "--code", code, "--measure", preset, "--data", args.data,
                   "--steps", str(args.steps), "--warmup", str(args.warmup)]
        return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])

    here = str(Path(__file__).resolve().parents[1])
    print(f"images/s of the shipped settings, {args.steps} steps after {args.warmup}, median of {args.repeats} "
          f"alternating runs; old = {args.compare_old}")
    print(f"{'preset':<24} {'old':>8} {'new':>8} {'new/old':>8}")
    for preset in args.presets or COMPARED:
        old, new = [], []
        for _ in range(args.repeats):
            old.append(measure(args.compare_old, preset))
            new.append(measure(here, preset))
        ratio = statistics.median(n / o for n, o in zip(new, old))
        print(f"{preset:<24} {statistics.median(old):8.1f} {statistics.median(new):8.1f} {ratio:8.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--code", default=None, help="import dlcv from this checkout")
    parser.add_argument("--measure", default=None, metavar="PRESET", help="print one preset's images/s and exit")
    parser.add_argument("--compare-old", default=None, metavar="DIR", help="compare with the loop of checkout DIR")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all", action="store_true",
                        help="time bf16 even on a CPU that emulates it (about 10x slower than fp32 there)")
    args = parser.parse_args()
    if args.measure:
        print(ours(args.measure, args.data, args.steps, args.warmup)[0])
        return
    if args.compare_old:
        compare_old(args)
        return
    args.presets = args.presets or PRESETS
    import logging

    logging.basicConfig(format="  %(message)s")  # the engine's one line: what auto chose and the probe's ratio
    logging.getLogger("dlcv.training.engine").setLevel(logging.INFO)
    from dlcv import precision

    flags = precision.cpu_info()[1]
    kind = ("AMX" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags
            else "native bf16" if precision.cpu_bf16() == "native" else "no native bf16")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU kind: {kind}; images/s over "
          f"{args.steps} steps")
    # where auto never times bf16 (emulated), timing it here would take ~10x the fp32 columns
    skip_bf16 = not precision.bf16_may_pay(torch.device("cpu")) and not args.all
    if skip_bf16:
        print("bf16 columns not timed: this CPU emulates bf16, so auto leaves it out (--all times them)")
    ref = reference(args.data, args.steps, args.warmup)
    print(f"reference (course DCGAN loop, PNG DataLoader, fp32): {ref:.1f} img/s")
    gflop, ceiling = reference_gflop(), matmul_gflops()
    print(f"  reference arithmetic: {gflop:.1f} GFLOP per step of 64 -> {ref / 64 * gflop:.0f} GFLOP/s; "
          f"this CPU's fp32 matmul: {ceiling:.0f} GFLOP/s")
    names = [f"{a}{' + CL' if c == 'true' else ''}" for a, c in COMBINATIONS[:-1]]
    print(f"{'preset':<16}" + "".join(f"{n:>12}" for n in names) + f"{'auto':>12} {'auto chose':<12}"
          f"{'auto/fastest':>13}{'auto/ref':>10}")
    for preset in args.presets:
        speeds = [(None, "") if skip_bf16 and amp == "bf16" else
                  ours(preset, args.data, args.steps, args.warmup, amp, layout) for amp, layout in COMBINATIONS]
        fixed, (auto, chose) = [v for v, _ in speeds[:-1]], speeds[-1]
        fastest = max([v for v in fixed if v is not None] + [auto])
        # the reference is a DCGAN loop: a ratio to it means something for the face GANs only
        vs_ref = f"{auto / ref:10.2f}" if "_faces" in preset and preset != "vae_faces" else ""
        print(f"{preset:<16}" + "".join(f"{'-':>12}" if v is None else f"{v:12.1f}" for v in fixed)
              + f"{auto:12.1f} {chose:<12}{auto / fastest:13.2f}{vs_ref}", flush=True)


if __name__ == "__main__":
    main()
