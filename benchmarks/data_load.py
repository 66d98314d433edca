"""Prints the time to read a prepared split by decoding every PNG versus from the .npy cache.

    python benchmarks/data_load.py --data data --domain mnist --split train
"""

import sys
import argparse
import shutil
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv.data.digits import read_digits  # noqa: E402
from dlcv.data.images import CACHE_DIR  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data")
    parser.add_argument("--domain", default="mnist")
    parser.add_argument("--split", default="train")
    args = parser.parse_args()
    cache = Path(args.data) / "digits" / args.domain / "data" / CACHE_DIR
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    cold = read_digits(args.data, args.domain, args.split)
    t1 = time.perf_counter()
    warm = read_digits(args.data, args.domain, args.split)
    t2 = time.perf_counter()
    assert (cold.images == warm.images).all()
    n = len(cold)
    print(f"{args.domain}/{args.split}: {n} images {tuple(cold.images.shape[1:])}")
    print(f"  decode PNGs: {t1 - t0:7.2f} s  ({n / (t1 - t0):9.0f} img/s)")
    print(f"  .npy cache:  {t2 - t1:7.2f} s  ({n / (t2 - t1):9.0f} img/s)  -> {(t1 - t0) / (t2 - t1):.0f}x")


if __name__ == "__main__":
    main()
