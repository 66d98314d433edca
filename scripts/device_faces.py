"""Train the face models on a leased GPU in one call, as the shipped face checkpoints were trained (issue 3).

    # here: pack the prepared faces losslessly (WebP) so they travel within the device tool's 64 MiB
    python scripts/device_faces.py pack --data data --out .devdata
    # the checkout with its checkpoints is over that limit: leave them behind (scripts/device_tree.py says how)
    python scripts/device_tree.py hide
    python scripts/device_tree.py size --carry .devdata checkpoints/smiling_classifier
    # on the GPU machine (device tool, carry .devdata and checkpoints/smiling_classifier, which ranks snapshots):
    python scripts/device_faces.py run --devdata .devdata --out "$OUT" --minutes 7
    # a later call on the same warm machine: train the same runs on from their checkpoints
    python scripts/device_faces.py run --resume --out "$OUT" --minutes 6 --only dcgan_faces sngan_faces
    # here, after the last call: python scripts/device_tree.py restore

`run` unpacks the faces, trains every candidate in RUNS at once (one process each; small models leave the GPU
mostly idle, so they share it well), ranks each GAN run's snapshots by a cheap proxy FID (features of the shipped
Smiling classifier; the official Inception FID is computed afterwards on the CPU by benchmarks/faces_quality.py),
and packs the chosen generators into tar files under --out. Weights travel as fp16 (the device tool returns at
most 64 MiB) and are stored back as fp32; the shipped files are what gets measured.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

# name -> (preset, overrides). Steps are upper bounds: --minutes stops every run at the same wall-clock budget.
RUNS = {
    "dcgan_faces": ("dcgan_faces", ["--train.steps=40000", "--train.snapshot_every=2500"]),
    "dcgan_faces_ls_ema": ("dcgan_faces_ema", []),  # the shipped method A
    "sngan_faces": ("sngan_faces", ["--train.steps=80000", "--train.snapshot_every=5000"]),
    "sngan_faces_d64": ("sngan_faces", ["--train.steps=80000", "--train.snapshot_every=5000",
                                        "--method.d_width=64"]),
    # a candidate for method B's FID <= 20, not yet run: 4x the images per step (the models leave an H100 mostly
    # idle at batch 64, 29 steps/s alone), the same learning rates
    "sngan_faces_b256": ("sngan_faces", ["--train.steps=80000", "--train.snapshot_every=2500",
                                         "--train.batch_size=256"]),
    "acgan_faces": ("acgan_faces", ["--train.steps=80000", "--train.snapshot_every=5000"]),
    # a candidate for smiling pairs that stay one face, not yet run on a GPU: the class restyles batch-norm channels
    # instead of multiplying z (the shipped ACGAN's pairs are no more alike than two random faces)
    "acgan_faces_cbn": ("acgan_faces", ["--train.steps=80000", "--train.snapshot_every=5000",
                                        "--model.conditioning=cbn"]),
    # a candidate for the ACGAN's FID <= 30, tried only on the CPU (RESULTS.md): G starts from the shipped method A
    # with class-conditional batch norm and learns from two teacher classifiers; needs checkpoints/dcgan_faces
    # and checkpoints/smiling_classifier_s1 and _s2 in the carried tree; steps and snapshots as the preset has them
    "acgan_faces_from_dcgan": ("acgan_faces_from_dcgan", []),
    "vae_faces": ("vae_faces", ["--train.steps=100000", "--train.eval_every=2000"]),
    "vae_faces_b003": ("vae_faces", ["--train.steps=100000", "--train.eval_every=2000", "--method.kl_weight=0.03"]),
}
CARRIED_ATTRIBUTES = ["Smiling"]
RETURN_LIMIT = 62 * 2**20  # bytes of tar files sent back (the tool's limit is 64 MiB in at most 8 files)
TAR_LIMIT = 15 * 2**20


# ---------------------------------------------------------------- pack (here)


def _webp(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "WEBP", lossless=True, quality=100, method=2)  # method 6: same size, 130x slower
    return buf.getvalue()


def pack(data: Path, out: Path, val_count: int) -> None:
    """face/train (all) and the first val_count val faces, lossless WebP in one tar, with their CSVs."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split, limit in (("train", None), ("val", val_count)):
        names = sorted(p.name for p in (data / "face" / split).glob("*.png"))[:limit]
        jobs += [(split, n) for n in names]
    with Pool(2) as pool:
        blobs = pool.map(_webp, [data / "face" / s / n for s, n in jobs], chunksize=64)
    # a stored zip: about 100 bytes of header per file, where tar pads each one to 512-byte blocks (+11 MiB)
    with zipfile.ZipFile(out / "faces.zip", "w", zipfile.ZIP_STORED) as archive:
        for (split, name), blob in zip(jobs, blobs):
            archive.writestr(f"face/{split}/{Path(name).stem}.webp", blob)
        for split, limit in (("train", None), ("val", val_count)):
            # only the columns the device runs use (the ACGAN's Smiling): all 40 would cost 0.7 MiB of the limit
            rows = list(csv.DictReader(open(data / "face" / f"{split}.csv")))[:limit]
            keep = ["image_name", *CARRIED_ATTRIBUTES]
            lines = [",".join(keep)] + [",".join(r[k] for k in keep) for r in rows]
            archive.writestr(f"face/{split}.csv", "\n".join(lines) + "\n")
    print(f"packed {len(jobs)} faces into {out / 'faces.zip'}: {(out / 'faces.zip').stat().st_size / 2**20:.1f} MiB")


# ---------------------------------------------------------------- run (GPU machine)


def _to_png(item: tuple[str, bytes]) -> None:
    path, blob = item
    Image.open(io.BytesIO(blob)).convert("RGB").save(path)


def unpack(devdata: Path, root: Path) -> None:
    items = []
    with zipfile.ZipFile(devdata / "faces.zip") as archive:
        for name in archive.namelist():
            blob = archive.read(name)
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix == ".webp":
                items.append((str(path.with_suffix(".png")), blob))
            else:
                path.write_bytes(blob)
    with Pool(16) as pool:
        pool.map(_to_png, items, chunksize=64)
    print(f"unpacked {len(items)} faces into {root}", flush=True)


def proxy_scores(runs: Path, root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """run -> candidate folder -> {proxy_fid, smiling_agreement?}, on the GPU."""
    import torch

    from dlcv import checkpoint
    from dlcv.data.faces import read_faces
    from dlcv.metrics import embed, frechet_distance, predict_logits
    from dlcv.sampling import sample_gan

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier, _ = checkpoint.load(Path(__file__).resolve().parents[1] / "checkpoints" / "smiling_classifier")
    classifier = classifier.to(device).eval()
    real = read_faces(root, "train").images
    real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:2000]]
    with torch.no_grad():
        ref = embed(classifier, real.to(device)).cpu()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name in RUNS:
        if not name.startswith(("dcgan", "sngan", "acgan")):
            continue
        candidates = sorted((runs / name / "snapshots").glob("step_*")) + [runs / name / "checkpoint"]
        scores[name] = {}
        for folder in candidates:
            if not (folder / "model.safetensors").is_file():
                continue
            generator, _ = checkpoint.load(folder)
            generator = generator.to(device)
            labels = torch.arange(2).repeat_interleave(500) if generator.config.num_classes else None
            with torch.no_grad():
                fake = sample_gan(generator, 1000, seed=0, labels=labels, device=device)
                fake_u8 = ((fake + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                entry = {"proxy_fid": frechet_distance(embed(classifier, fake_u8.to(device)).cpu(), ref)}
                if labels is not None:
                    pred = predict_logits(classifier, fake_u8, device=device).argmax(1)
                    entry["smiling_agreement"] = (pred == labels).float().mean().item()
            scores[name][folder.name] = entry
            print(name, folder.name, entry, flush=True)
    return scores


def choose(scores: dict[str, dict[str, float]]) -> list[str]:
    """Best candidate by proxy FID (ACGAN: among those that show the attribute >= 90 %), then the last one."""
    ok = {k: v for k, v in scores.items() if v.get("smiling_agreement", 1.0) >= 0.9} or scores
    best = min(ok, key=lambda k: ok[k]["proxy_fid"])
    return [best] + (["checkpoint"] if best != "checkpoint" and "checkpoint" in scores else [])


def fp16_folder(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
              str(dst / "model.safetensors"))
    (dst / "config.json").write_text((src / "config.json").read_text())


def run(devdata: Path, out: Path, minutes: float, only: list[str], device: str, return_mib: float = 62,
        resume: bool = False) -> None:
    start = time.time()
    root, runs, stage = Path("/tmp/dlcv_data"), Path("/tmp/dlcv_runs"), Path("/tmp/dlcv_stage")
    if not (resume and (root / "face" / "train.csv").is_file()):
        unpack(devdata, root)
    names = only or list(RUNS)
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name in names:
        preset, overrides = RUNS[name]
        cmd = [sys.executable, "-m", "dlcv", "train", preset, f"--name={name}", *([] if resume else ["--fresh"]),
               f"--data.root={root}",
               f"--train.out_dir={runs}", f"--train.max_minutes={minutes}", "--train.progress=false",
               f"--train.device={device}", *overrides]
        runs.mkdir(parents=True, exist_ok=True)
        procs[name] = subprocess.Popen(cmd, env=env, stdout=open(runs / f"{name}.log", "a" if resume else "w"), stderr=subprocess.STDOUT)
    for name, proc in procs.items():
        print(name, "exit", proc.wait(), f"{time.time() - start:.0f} s", flush=True)
    scores = proxy_scores(runs, root)
    shutil.rmtree(stage, ignore_errors=True)  # a resumed call returns this call's picks only
    stage.mkdir(parents=True)
    items = []  # (priority, path in stage)
    for name in names:
        picks = choose(scores[name]) if name in scores else ["checkpoint"]
        for rank, pick in enumerate(picks):
            src = runs / name / ("checkpoint" if pick == "checkpoint" else f"snapshots/{pick}")
            if (src / "model.safetensors").is_file():
                fp16_folder(src, stage / f"{name}__{pick}")
                items.append((rank, f"{name}__{pick}"))
    # logs: metrics, last sample grid, train logs, scores
    (stage / "scores.json").write_text(json.dumps({"proxy": scores, "seconds": time.time() - start}, indent=1))
    with tarfile.open(out / "logs.tar", "w") as tar:
        tar.add(stage / "scores.json", "scores.json")
        for name in names:
            for path in [runs / f"{name}.log", runs / name / "metrics.jsonl"] + \
                    sorted((runs / name / "samples").glob("*.png"))[-3:]:
                if path.is_file():
                    tar.add(path, f"{name}/{path.name}")
    budget = min(RETURN_LIMIT, int(return_mib * 2**20)) - (out / "logs.tar").stat().st_size
    bins: list[list[str]] = []
    sizes: list[int] = []
    for _, folder in sorted(items):  # best candidates first; finals are dropped if the budget runs out
        size = sum(p.stat().st_size for p in (stage / folder).iterdir()) + 4096
        if size > budget:
            print("dropped (return limit)", folder, flush=True)
            continue
        budget -= size
        for i, used in enumerate(sizes):
            if used + size <= TAR_LIMIT:
                bins[i].append(folder)
                sizes[i] += size
                break
        else:
            bins.append([folder])
            sizes.append(size)
    for i, folders in enumerate(bins[:7]):
        with tarfile.open(out / f"models_{i}.tar", "w") as tar:
            for folder in folders:
                tar.add(stage / folder, folder)
    print(f"done in {time.time() - start:.0f} s; returned {[f for b in bins for f in b]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--data", default="data")
    p.add_argument("--out", default=".devdata")
    p.add_argument("--val", type=int, default=0, help="val faces to carry (the VAE's val MSE on the device)")
    r = sub.add_parser("run")
    r.add_argument("--devdata", default=".devdata")
    r.add_argument("--out", required=True)
    r.add_argument("--minutes", type=float, default=7.0)
    r.add_argument("--only", nargs="*", default=[], help="train these RUNS entries only")
    r.add_argument("--device", default="cuda")
    r.add_argument("--resume", action="store_true", help="continue the runs of an earlier call on the same (warm) "
                   "machine for --minutes more, from their last checkpoints, instead of starting afresh")
    r.add_argument("--return-mib", type=float, default=62, help="size of the tars under --out (less when other work "
                   "returns files in the same call); best candidates go first, the last checkpoints when room is left")
    args = parser.parse_args()
    if args.command == "pack":
        pack(Path(args.data), Path(args.out), args.val)
    else:
        run(Path(args.devdata), Path(args.out), args.minutes, args.only, args.device, args.return_mib, args.resume)


if __name__ == "__main__":
    main()
