"""Reader of the course's digits layout: <root>/digits/<domain>/data/*.png + {train,val,test}.csv (image_name,label)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dlcv.catalog import DOMAINS, GREY_DOMAINS, UDA_PAIRS  # noqa: F401  (re-exported: the catalog owns them)
from dlcv.data.images import DataError, check_files_exist, list_images, read_csv, read_images

SPLITS = ("train", "val", "test")
NUM_CLASSES = 10
IMAGE_SIZE = 28


@dataclass
class DigitSplit:
    """One split held in memory: uint8 images (N, C, H, W), int64 labels (N,), file names."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    folder: Path

    def __len__(self) -> int:
        return len(self.names)


def domain_dir(root: str | Path, domain: str) -> Path:
    """<root>/digits/<domain>, with a clear error listing the domains that exist."""
    base = Path(root) / "digits"
    path = base / domain
    if not path.is_dir():
        have = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        raise DataError(f"no digits domain {domain!r} under {base} (found {have}); "
                        f"run `python -m dlcv data prepare --out {root}` or check --data.root")
    return path


def available_splits(root: str | Path, domain: str) -> list[str]:
    """The splits that have a CSV (the course's hw2_data has train and val only)."""
    path = domain_dir(root, domain)
    return [s for s in SPLITS if (path / f"{s}.csv").is_file()]


def read_digits(root: str | Path, domain: str, split: str, channels: int | None = None,
                image_size: int = IMAGE_SIZE, resize: bool = False) -> DigitSplit:
    """Read one split into memory (decoded once, then served from the .npy cache)."""
    path = domain_dir(root, domain)
    csv_path = path / f"{split}.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path} does not exist (this domain has splits {available_splits(root, domain)}); "
                        f"pick one of those or run `python -m dlcv data prepare`")
    _, rows = read_csv(csv_path, required=("image_name", "label"), allow_extra=False)
    if not rows:
        raise DataError(f"{csv_path} has no rows; it must list image_name,label for each image")
    names = [r["image_name"] for r in rows]
    labels = []
    for r in rows:
        try:  # ASCII only: int() also reads "٣" or "３", which no label file of the course holds
            label = int(r["label"]) if r["label"].isascii() else -1
        except ValueError:
            label = -1
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{csv_path}: label {r['label']!r} of {r['image_name']} is not a digit 0-9; fix the row")
        labels.append(label)
    folder = path / "data"
    check_files_exist(folder, names, csv_path)
    array = read_images(folder, names, size=image_size, channels=channels, resize=resize)
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return DigitSplit(images=images, labels=torch.tensor(labels, dtype=torch.int64), names=names, folder=folder)


def read_image_folder(folder: str | Path, channels: int | None = 3, image_size: int | None = IMAGE_SIZE,
                      resize: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Every image in a folder (sorted names) as uint8 (N, C, H, W); used by predict on unlabelled images.
    image_size=None keeps the files' size (they must share one)."""
    names = list_images(folder)
    if not names:
        raise DataError(f"{folder} holds no images; point --images at a folder of .png files")
    array = read_images(folder, names, size=image_size, channels=channels, resize=resize, cache=False)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), names


PREDICTIONS_HEADER = "image_name,label"


def check_predictions_target(path: str | Path, images: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, a predictions destination whose file would be lost: an existing file that is not a
    predictions CSV (an image, a config), or a domain's label file (train/val/test.csv beside a data/ folder, which
    has the same layout). An earlier predictions file, or an empty one, is replaced."""
    from dlcv.fileio import check_file_target

    path = check_file_target(path, option)
    if not path.is_file() or path.stat().st_size == 0:
        return path
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        first = ""
    if first != PREDICTIONS_HEADER:
        raise FileExistsError(f"{option} {path} exists and is not a predictions CSV (its first line is not "
                              f"{PREDICTIONS_HEADER}); choose a new file path")
    if path.name in {f"{split}.csv" for split in SPLITS} and (path.parent / "data").is_dir():
        raise FileExistsError(f"{option} {path} is the label file of a digits domain; write the predictions "
                              f"elsewhere, e.g. {Path(images) / '..' / 'pred.csv'}")
    return path


def write_predictions(path: str | Path, names: list[str], labels: list[int]) -> None:
    """The course's prediction CSV (the layout's own label files): header image_name,label, one row per image,
    labels as plain integers; written atomically."""
    import csv
    import io

    from dlcv.fileio import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREDICTIONS_HEADER.split(","))
    writer.writerows(zip(names, (int(label) for label in labels)))
    atomic_write_text(path, buf.getvalue())
