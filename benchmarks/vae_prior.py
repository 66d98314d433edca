"""Fit the VAE's latent density (a full-covariance Gaussian on the posterior means of the training faces, Ghosh et
al. 2020) and store it next to the checkpoint; with --fid, FID of 1000 samples from N(0, I) and from the fitted
density against data/face/val (the project's protocol).

    python benchmarks/vae_prior.py checkpoints/vae_faces --data data --fid
"""

from __future__ import annotations

import sys
import argparse
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv import checkpoint  # noqa: E402
from dlcv.data.faces import read_faces  # noqa: E402
from dlcv.data.loaders import to_model_range  # noqa: E402
from dlcv.sampling import LATENT_PRIOR_NAME, fit_latent_prior, sample_vae  # noqa: E402
from dlcv.viz import write_image_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="data")
    parser.add_argument("--fid", action="store_true", help="also FID of N(0, I) vs the fitted prior (1000 each)")
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    vae, _ = checkpoint.load(args.checkpoint)
    train = read_faces(args.data, "train")
    images = to_model_range(train.images)  # uint8 (N, C, H, W) -> [-1, 1]
    prior = fit_latent_prior(vae, images)
    path = Path(args.checkpoint) / LATENT_PRIOR_NAME
    save_file(prior, path)
    print(f"fitted on {len(images)} train faces; wrote {path}")
    if args.fid:
        from dlcv.metrics import face_scores

        for label, p in (("N(0, I)", None), ("fitted Gaussian", prior)):
            with tempfile.TemporaryDirectory() as tmp:
                samples = sample_vae(vae, args.n, seed=0, prior=p)
                names = [f"{i:04d}.png" for i in range(args.n)]
                write_image_folder(samples, names, Path(tmp) / "s", force=True)
                scores = face_scores(Path(tmp) / "s", Path(args.data) / "face" / "val")
                print(f"| {label} | {scores['fid']:.2f} | {scores['kid_mean']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
