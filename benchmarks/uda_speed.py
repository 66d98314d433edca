"""DANN on MNIST-M -> USPS: steps/s and minutes to final accuracy of dlcv's loop (uint8 tensors held on the device,
batches indexed there, bf16 autocast + channels_last) against a plain reference loop (a per-step DataLoader over the
PNG files, decoded every time, fp32), with the ratio. Same network, same DANN update; only the plumbing differs.

    OMP_NUM_THREADS=1 python benchmarks/uda_speed.py --data data --steps 3000 --ref-steps 100 --width 32

Minutes to final accuracy: the first evaluation at which target val accuracy reaches 98 % of the run's final figure,
measured for dlcv's loop; for the reference loop it is that same number of steps at the reference loop's speed
(same update, so the same steps are needed), i.e. dlcv's figure times the speed ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlcv.config import apply_overrides  # noqa: E402
from dlcv.data.images import read_csv  # noqa: E402
from dlcv.data.loaders import infinite  # noqa: E402
from dlcv.models import build_model  # noqa: E402
from dlcv.presets import get_preset  # noqa: E402
from dlcv.training import train  # noqa: E402
from dlcv.training.uda import DANN, method_options, resolve_input_norm  # noqa: E402


class PngDigits(Dataset):
    """The plain way: open and decode one PNG per item, grey replicated to RGB, [-1, 1] float."""

    def __init__(self, root: str, domain: str, split: str = "train") -> None:
        folder = Path(root) / "digits" / domain
        _, rows = read_csv(folder / f"{split}.csv", required=("image_name", "label"))
        self.items = [(folder / "data" / r["image_name"], int(r["label"])) for r in rows]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as img:
            x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
        return x, label


def reference_steps_per_s(args: argparse.Namespace) -> float:
    """Steps/s of the reference loop: fresh DataLoader iterators over PNGs, fp32, the same DANN update."""
    cfg = apply_overrides(get_preset("uda_dann"), [f"--model.width={args.width}", "--train.amp=false",
                                                   f"--train.steps={args.ref_steps}", "--train.device=cpu"])
    cfg = resolve_input_norm(cfg, source_channels=3, target_channels=1)  # MNIST-M (colour) -> USPS (grey)
    model = build_model(cfg.architecture, cfg.model)
    method = DANN(model, method_options(cfg)[2], cfg.train)  # the preset's DANN options (its weight average)
    loaders = [DataLoader(PngDigits(args.data, d), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
               for d in ("mnistm", "usps")]
    iters = [infinite(loader) for loader in loaders]  # a new epoch when one runs out (USPS: 102 batches of 64)
    start = None
    for step in range(args.ref_steps + 5):
        if step == 5:  # the first steps warm up allocators and kernels
            start = time.perf_counter()
        (x_src, y_src), (x_tgt, _) = (next(it) for it in iters)
        method.update(x_src, y_src, x_tgt)
    return args.ref_steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--steps", type=int, default=3000, help="dlcv loop: full run to its final accuracy")
    parser.add_argument("--ref-steps", type=int, default=100, help="reference loop: steps timed")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/uda_speed")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    ref = reference_steps_per_s(args)
    print(f"reference loop (PNG DataLoader, fp32): {ref:.2f} steps/s", flush=True)

    cfg = apply_overrides(get_preset("uda_dann"), [
        f"--data.root={args.data}", f"--model.width={args.width}", f"--train.steps={args.steps}",
        f"--train.device={args.device}", "--train.eval_every=250", "--train.progress=false",
        f"--train.out_dir={args.out}", "--name=uda_speed_dann"])
    log_path = Path(args.out) / cfg.name / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    out = train(cfg, out=Path(args.out) / "checkpoint")
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    evals = [r for r in map(json.loads, log_path.read_text().splitlines()) if "target_val_acc" in r]
    final = evals[-1]["target_val_acc"]
    reached = next(r for r in evals if r["target_val_acc"] >= 0.98 * final)
    ours = metrics["steps_per_s"]
    seconds = reached["step"] / ours
    print(f"dlcv loop (tensors on {args.device}, bf16 + channels_last): {ours:.2f} steps/s")
    print(f"speed ratio dlcv / reference: {ours / ref:.1f}x")
    print(f"final target val acc {final:.4f} (target test {metrics['target_test_acc']:.4f}); 98 % of it at step "
          f"{reached['step']}: dlcv {seconds / 60:.1f} min, reference {reached['step'] / ref / 60:.1f} min")


if __name__ == "__main__":
    main()
