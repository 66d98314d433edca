"""Training images/s of one preset at 1, 2, ... processes under torchrun, side by side in one run (gloo on the CPU,
NCCL on GPUs, where it also prints the per-GPU rate).

    python benchmarks/ddp_speed.py --data data --preset dcgan_faces --steps 20 --procs 1 2

train.batch_size is the global batch, so every row trains the same images per step; on the CPU each process gets
cores / N threads, so the rows share the same cores and differ by how the work is split, not by how much hardware.
Throughput counts the steps after `--warmup`, from rank 0's metrics.jsonl timestamps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dlcv.config import apply_overrides  # noqa: E402
from dlcv.presets import get_preset  # noqa: E402


def images_per_s(preset: str, procs: int, args: argparse.Namespace) -> float:
    """One torchrun of `preset` with `procs` processes; images/s of the global batch after the warm-up steps."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m",
                   "dlcv", "train", preset, f"--data.root={args.data}", f"--train.out_dir={tmp}", "--name=bench",
                   f"--train.steps={args.warmup + args.steps}", "--train.log_every=1", "--train.sample_every=0",
                   "--train.eval_every=0", "--train.save_every=0", "--train.progress=false",
                   "--train.tensorboard=false", f"--train.device={args.device}", *args.set]
        threads = max(1, (os.cpu_count() or 1) // procs) if args.device == "cpu" else 1
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=not args.verbose)
        lines = [json.loads(line) for line in (Path(tmp) / "bench" / "metrics.jsonl").read_text().splitlines()]
        seconds = lines[-2]["time_s"] - lines[args.warmup - 1]["time_s"]  # the last line carries end-of-run work
        batch = apply_overrides(get_preset(preset), args.set).train.batch_size
        return (args.steps - 1) * batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--preset", default="dcgan_faces")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides, e.g. --set=--train.batch_size=32")
    parser.add_argument("--verbose", action="store_true", help="show the runs' output")
    args = parser.parse_args()
    backend = "nccl" if args.device == "cuda" else "gloo"
    print(f"{args.preset}: images/s over {args.steps} steps after {args.warmup}, {backend}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    base = None
    for procs in args.procs:
        rate = images_per_s(args.preset, procs, args)
        base = base or rate
        per_gpu = f"   {rate / procs:8.1f} img/s per GPU" if args.device == "cuda" else ""
        print(f"{procs} process{'es' if procs > 1 else '  '} {rate:8.1f} img/s   {rate / base:.2f}x{per_gpu}",
              flush=True)


if __name__ == "__main__":
    main()
