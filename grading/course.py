"""The course's own commands, so a course grader's lines run unchanged: hw2_1.sh $1 (faces), hw2_2.sh $1 (digits),
hw2_3.sh <test_dir> <out_csv> (adaptation, the model chosen by the target domain named in the path)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dlcv import catalog, service
from grading.run import (DIGIT_MODELS, FACE_MODELS, N_FACES, PER_CLASS, Missing, checkpoint_path, predict_folder,
                         uda_checkpoints, write_predictions)


def domain_in_path(path: str | Path) -> str:
    """The target domain a path names (dlcv.catalog.domain_in_path: hw2_data/digits/usps/data -> usps;
    /tmp/svhn_test -> svhn), or a ValueError naming the domains to put in it."""
    domain = catalog.domain_in_path(Path(path).absolute().parts)
    if domain is None:
        raise ValueError(f"{path} names no target domain; put one of {', '.join(catalog.DOMAINS)} in the path "
                         f"(e.g. hw2_data/digits/usps/data)")
    return domain


def pick_uda_checkpoint(root: Path, target: str, source: str = "mnistm") -> Path:
    """The shipped model of uda_<method>_<source>_to_<target> (from `source` when several sources reach `target`,
    else the first pair in the catalog's order)."""
    pairs = {pair: found for pair, found in uda_checkpoints(root).items() if pair[1] == target and found.shipped}
    if not pairs:
        raise Missing(f"no adaptation checkpoint for target {target!r} under {root} "
                      f"(expected uda_<method>_<source>_to_{target} with a method of "
                      f"{', '.join(catalog.SHIP_RANK)}); train one or pick another target")
    pair = (source, target) if (source, target) in pairs else next(iter(pairs))
    return root / pairs[pair].shipped


def hw2_1(out: str, which: str = "b", seed: int = 0) -> str:
    name = FACE_MODELS[f"gan_{which}"]
    folder = service.sample_to_folder(checkpoint_path(name, service.checkpoints_root()), out, n=N_FACES, seed=seed)
    return f"wrote {N_FACES} faces from {name} to {folder}"


def hw2_2(out: str, seed: int = 0) -> str:
    name = DIGIT_MODELS["diffusion"]
    folder = service.sample_to_folder(checkpoint_path(name, service.checkpoints_root()), out, per_class=PER_CLASS,
                                      seed=seed)
    return f"wrote {10 * PER_CLASS} digits from {name} to {folder}"


def hw2_3(test_dir: str, out_csv: str) -> str:
    from dlcv.data.digits import check_predictions_target
    from dlcv.data.images import list_images

    check_predictions_target(out_csv, test_dir, "<out_csv>")  # before loading and predicting
    target = domain_in_path(test_dir)
    checkpoint = pick_uda_checkpoint(service.checkpoints_root(), target)
    names = list_images(test_dir)
    if not names:
        raise ValueError(f"{test_dir} holds no images; point hw2_3.sh at the target's image folder")
    write_predictions(Path(out_csv), names, predict_folder(checkpoint, Path(test_dir), names))
    return f"target {target}: wrote {len(names)} predictions of {checkpoint.name} to {out_csv}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading.course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p1 = sub.add_parser("hw2_1", help="1000 faces into a folder")
    p1.add_argument("out")
    p1.add_argument("which", nargs="?", choices=["a", "b"], default="b", help="GAN A (dcgan) or B (sngan, default)")
    p2 = sub.add_parser("hw2_2", help="1000 digits {d}_{001..100}.png into a folder")
    p2.add_argument("out")
    p3 = sub.add_parser("hw2_3", help="predict a target domain's images into a CSV")
    p3.add_argument("test_dir")
    p3.add_argument("out_csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    start = time.perf_counter()
    try:
        if args.command == "hw2_1":
            message = hw2_1(args.out, args.which)
        elif args.command == "hw2_2":
            message = hw2_2(args.out)
        else:
            message = hw2_3(args.test_dir, args.out_csv)
    except OSError as err:  # a path that is a folder, a file, unreadable, or a full disk
        from dlcv.fileio import describe_os_error

        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (Missing, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{message} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
