"""Builds the course's on-disk layout from ../shared/data (npz/tar/csv) or torchvision's datasets.

Everything is read and checked before anything is written; each dataset folder is written into a temporary folder
and swapped in whole, with a manifest, so a re-run skips what is up to date and never mixes two datasets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dlcv.data.digits import IMAGE_SIZE as DIGIT_SIZE
from dlcv.data.faces import IMAGE_SIZE as FACE_SIZE
from dlcv.data.images import DataError
from dlcv.fileio import atomic_dir, recover

log = logging.getLogger(__name__)

PREPARE_VERSION = 1
MANIFEST = ".dlcv_prepare.json"
DATASETS = ("mnistm", "usps", "mnist", "svhn", "face", "mnistm_synth")
FACE_VAL, FACE_TEST = 2000, 1000
CELEBA_CROP = (35, 55, 143, 163)  # 108x108 centre of the 178x218 aligned CelebA image, then resized to 64


@dataclass
class Prepared:
    """Arrays of one dataset at the course's size, split, ready to write."""

    name: str
    images: dict[str, np.ndarray]  # split -> (N, H, W, C) uint8
    labels: dict[str, np.ndarray]  # split -> (N,) int labels, or (N, A) int8 attributes (-1 unknown) for faces
    attribute_names: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


# ---------------------------------------------------------------- conversions to the course's sizes


def centre_crop(x: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) -> (N, size, size, C), the centre (MNIST-M 32 -> 28: the course classifier agrees best)."""
    h, w = x.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(x[:, top:top + size, left:left + size])


def resize(x: np.ndarray, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """(N, H, W, C) -> (N, size, size, C) with PIL (USPS 16 -> 28, SVHN 32 -> 28)."""
    if x.shape[1:3] == (size, size):
        return x
    out = []
    for img in x:
        pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
        arr = np.asarray(pil.resize((size, size), resample), dtype=np.uint8)
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    return np.stack(out)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with `fraction` of each label value held out; sorted, deterministic."""
    rng = np.random.default_rng(seed)
    held = []
    for value in np.unique(labels):
        idx = np.flatnonzero(labels == value)
        n = int(round(len(idx) * fraction))
        held.append(rng.permutation(idx)[:n])
    held = np.sort(np.concatenate(held)) if held else np.array([], dtype=int)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held


def split_digits(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None,
                 y_test: np.ndarray | None, val_fraction: float, seed: int, provenance: dict) -> Prepared:
    """train -> stratified train/val; test stays test (only for final figures)."""
    keep, held = stratified_split(y_train, val_fraction, seed)
    images = {"train": x_train[keep], "val": x_train[held]}
    labels = {"train": y_train[keep].astype(np.int64), "val": y_train[held].astype(np.int64)}
    if x_test is not None:
        images["test"], labels["test"] = x_test, y_test.astype(np.int64)
    return Prepared(name, images, labels, provenance=provenance)


# ---------------------------------------------------------------- sources: ../shared/data layout


def _need(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"missing source file {path}; check --source (it should hold digits/, faces/, bsds500/)")
    return path


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(_need(path), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a truncated npz is a BadZipFile
        raise DataError(f"{path} is not a readable .npz ({err}); re-copy it from its source") from None
    for key in ("x_train", "y_train", "x_test", "y_test"):
        if key not in arrays:
            raise DataError(f"{path} lacks array {key!r}; expected x_train, y_train, x_test, y_test")
    for split in ("train", "test"):
        arrays[f"x_{split}"], arrays[f"y_{split}"] = check_digits(path, split, arrays[f"x_{split}"],
                                                                  arrays[f"y_{split}"])
    return arrays


def check_digits(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, H, W, C) with C in 1/3 and integer pixels in 0..255 (returned as uint8), y (N,) integer digits 0..9:
    anything else (float images would become black PNGs, label 12 a bad row) is a DataError naming the array."""
    where = f"{path} x_{split}"
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise DataError(f"{where} has shape {x.shape}; expected (N, H, W, C) with C = 1 or 3 (add a channel axis: "
                        f"x[..., None] for grey)")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
            raise DataError(f"{where} is {x.dtype} (values {x.min() if x.size else '-'}..{x.max() if x.size else '-'})"
                            f"; expected uint8 pixels 0..255 (e.g. (x * 255).round().astype(np.uint8))")
        x = x.astype(np.uint8)
    where = f"{path} y_{split}"
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where} has shape {y.shape} but x_{split} holds {len(x)} images; give one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} is {y.dtype}; labels must be integers 0..9")
    bad = np.flatnonzero((y < 0) | (y > 9))
    if len(bad):
        raise DataError(f"{where}[{bad[0]}] is {y[bad[0]]}" + (f" ({len(bad)} labels in all)" if len(bad) > 1 else "")
                        + "; digit labels must be 0..9")
    return x, y


def shared_sources(source: Path, synth_count: int = 0) -> dict[str, tuple[list[Path], Callable[[float, int], Prepared]]]:
    """dataset -> (the files it reads, loader(val_fraction, seed)) for a folder laid out like ../shared/data."""

    def mnistm(vf: float, seed: int) -> Prepared:
        d = _npz(source / "digits/mnistm.npz")
        return split_digits("mnistm", centre_crop(d["x_train"], DIGIT_SIZE), d["y_train"],
                            centre_crop(d["x_test"], DIGIT_SIZE), d["y_test"], vf, seed,
                            {"from": "digits/mnistm.npz", "conversion": "32x32 RGB -> centre 28x28 crop"})

    def usps(vf: float, seed: int) -> Prepared:
        d = _npz(source / "digits/usps.npz")
        return split_digits("usps", resize(d["x_train"], DIGIT_SIZE), d["y_train"],
                            resize(d["x_test"], DIGIT_SIZE), d["y_test"], vf, seed,
                            {"from": "digits/usps.npz", "conversion": "16x16 grey -> 28x28 bilinear, kept grey"})

    def mnist(vf: float, seed: int) -> Prepared:
        d = _npz(source / "digits/mnist.npz")
        return split_digits("mnist", d["x_train"], d["y_train"], d["x_test"], d["y_test"], vf, seed,
                            {"from": "digits/mnist.npz", "conversion": "none (28x28 grey)"})

    def svhn(vf: float, seed: int) -> Prepared:
        (x_tr, y_tr), (x_te, y_te) = (_svhn_mat(source / "svhn" / f) for f in ("train_32x32.mat", "test_32x32.mat"))
        return split_digits("svhn", resize(x_tr, DIGIT_SIZE), y_tr, resize(x_te, DIGIT_SIZE), y_te, vf, seed,
                            {"from": "svhn/{train,test}_32x32.mat", "conversion": "32x32 RGB -> 28x28 bilinear"})

    def face(vf: float, seed: int) -> Prepared:
        return _shared_faces(source / "faces/celeba64.tar", source / "faces/attributes.csv", seed)

    def mnistm_synth(vf: float, seed: int) -> Prepared:
        return synth_mnistm(source, synth_count, vf, seed)

    return {
        "mnistm": ([source / "digits/mnistm.npz"], mnistm),
        "usps": ([source / "digits/usps.npz"], usps),
        "mnist": ([source / "digits/mnist.npz"], mnist),
        "svhn": ([source / "svhn/train_32x32.mat", source / "svhn/test_32x32.mat"], svhn),
        "face": ([source / "faces/celeba64.tar", source / "faces/attributes.csv"], face),
        "mnistm_synth": ([source / "digits/mnist.npz", source / "bsds500/bsds500_train_images.tar",
                          source / "bsds500/train_orientation.csv"], mnistm_synth),
    }


def _svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's SVHN format: X (32, 32, 3, N), y (N, 1) with label 10 meaning digit 0."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = scipy.io.loadmat(_need(path))
    except (OSError, ValueError, IndexError, MatReadError) as err:  # garbage bytes can raise any of these
        raise DataError(f"{path} is not a readable SVHN .mat file ({err}); re-download it") from None
    if "X" not in mat or "y" not in mat or mat["X"].shape[:3] != (32, 32, 3):
        raise DataError(f"{path} does not hold X (32, 32, 3, N) and y (N, 1) as SVHN's *_32x32.mat does")
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2))).astype(np.uint8)  # (32,32,3,N) -> (N,32,32,3)
    y = mat["y"].reshape(-1).astype(np.int64) % 10  # 10 -> 0
    return x, y


def _shared_faces(tar_path: Path, csv_path: Path, seed: int) -> Prepared:
    _need(tar_path), _need(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = {r.get("image_name"): r for r in reader}
    except UnicodeDecodeError as err:
        raise DataError(f"{csv_path} is not UTF-8 text (byte {err.start}); re-copy it from ../shared/data/faces") from None
    if "image_name" not in header or "has_attributes" not in header:
        raise DataError(f"{csv_path} lacks image_name/has_attributes columns; re-copy it from ../shared/data/faces")
    attribute_names = header[header.index("has_attributes") + 1:]
    images, attributes, names = [], [], []
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(".jpg"):
                    continue
                name = os.path.basename(member.name)
                try:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
                except OSError as err:
                    raise DataError(f"{tar_path}:{member.name} is corrupt ({err}); re-copy the archive") from None
                if arr.shape != (FACE_SIZE, FACE_SIZE, 3):
                    raise DataError(f"{tar_path}:{member.name} is {arr.shape}, expected 64x64 RGB")
                row = rows.get(name)
                if row is None:
                    raise DataError(f"{csv_path} has no row for {name} of {tar_path}; re-copy both files together")
                bad = [a for a in attribute_names if row[a] not in ("0", "1", "")]
                if bad:
                    raise DataError(f"{csv_path}: {bad[0]}={row[bad[0]]!r} for {name} must be 0, 1 or empty; "
                                    f"re-copy it from ../shared/data/faces")
                images.append(arr)
                names.append(name)
                attributes.append([int(row[a]) if row[a] != "" else -1 for a in attribute_names])
    except (tarfile.TarError, EOFError) as err:
        raise DataError(f"{tar_path} is not a readable tar archive ({err}); re-copy it") from None
    return split_faces(np.stack(images), np.array(attributes, dtype=np.int8), attribute_names, seed,
                       {"from": "faces/celeba64.tar + faces/attributes.csv", "conversion": "JPEG 64x64 -> PNG",
                        "source_names_first": names[0], "count": len(names)})


def split_faces(x: np.ndarray, attributes: np.ndarray, attribute_names: list[str], seed: int,
                provenance: dict) -> Prepared:
    """Hold out FACE_VAL faces as val (the FID reference) and FACE_TEST as test, stratified by
    (annotated, Smiling, Male) so every split has the same attribute mix."""
    n = len(x)
    n_val, n_test = min(FACE_VAL, n // 4), min(FACE_TEST, n // 8)  # tiny sources (tests) still get three splits

    def column(a: str) -> np.ndarray:
        return attributes[:, attribute_names.index(a)].astype(np.int64) if a in attribute_names else np.zeros(n, int)

    strata = (column("Smiling") + 1) * 3 + (column("Male") + 1)  # -1/0/1 each -> 9 groups
    rest, val = stratified_split(strata, n_val / n, seed)
    keep, test = stratified_split(strata[rest], n_test / len(rest), seed + 1)
    test, train = rest[test], rest[keep]
    split_idx = {"train": train, "val": val, "test": test}
    return Prepared("face", {s: x[i] for s, i in split_idx.items()}, {s: attributes[i] for s, i in split_idx.items()},
                    attribute_names=list(attribute_names), provenance=provenance)


def synth_mnistm(source: Path, count: int, val_fraction: float, seed: int) -> Prepared:
    """MNIST-M re-created as Ganin & Lempitsky (2015) did: |patch - digit| per channel, patch a random 28x28 crop
    of a BSDS500 train photo. Named `mnistm_synth` so it is never mistaken for the real MNIST-M."""
    d = _npz(source / "digits/mnist.npz")
    photos = _bsds_photos(source / "bsds500/bsds500_train_images.tar", source / "bsds500/train_orientation.csv")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(d["x_train"]), size=min(count, len(d["x_train"])), replace=False)
    digits, labels = d["x_train"][pick].astype(np.int16), d["y_train"][pick]
    out = np.empty((len(pick), DIGIT_SIZE, DIGIT_SIZE, 3), np.uint8)
    for i in range(len(pick)):
        photo = photos[rng.integers(len(photos))]
        top, left = rng.integers(photo.shape[0] - DIGIT_SIZE), rng.integers(photo.shape[1] - DIGIT_SIZE)
        patch = photo[top:top + DIGIT_SIZE, left:left + DIGIT_SIZE].astype(np.int16)
        out[i] = np.abs(patch - digits[i]).astype(np.uint8)  # (28,28,3) - (28,28,1) broadcasts over channels
    return split_digits("mnistm_synth", out, labels, None, None, val_fraction, seed,
                        {"from": "digits/mnist.npz + bsds500", "method": "Ganin & Lempitsky 2015 |patch - digit|",
                         "count": int(len(pick))})


def _bsds_photos(tar_path: Path, orientation_csv: Path) -> list[np.ndarray]:
    with open(_need(orientation_csv), newline="") as f:
        rotated = {r["file"]: r["stored_rotated"] == "1" for r in csv.DictReader(f)}
    photos = []
    try:
        with tarfile.open(_need(tar_path)) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".jpg"):
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        arr = np.asarray(img.convert("RGB"))
                    photos.append(np.rot90(arr, 1) if rotated.get(os.path.basename(member.name)) else arr)
    except (tarfile.TarError, EOFError, OSError) as err:  # OSError covers a corrupt JPEG inside
        raise DataError(f"{tar_path} is not a readable tar of JPEGs ({err}); re-copy it") from None
    if not photos:
        raise DataError(f"{tar_path} holds no .jpg photos; re-copy it")
    return photos


# ---------------------------------------------------------------- source: torchvision (needs internet once)


def torchvision_sources(download_dir: Path) -> dict[str, tuple[list[Path], Callable[[float, int], Prepared]]]:
    """mnist, usps, svhn and CelebA faces through torchvision.datasets (download=True). MNIST-M is not in
    torchvision: use --source with mnistm.npz, or `--synth-mnistm N` with a folder that has BSDS500."""
    import torchvision.datasets as tvd

    def arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for img, target in dataset:
            arr = np.asarray(img, dtype=np.uint8)
            xs.append(arr[:, :, None] if arr.ndim == 2 else arr)
            ys.append(np.asarray(target))
        return np.stack(xs), np.stack(ys)

    def digits(name: str, make: Callable[[bool], object], conv: Callable[[np.ndarray], np.ndarray]):
        def load(vf: float, seed: int) -> Prepared:
            (x_tr, y_tr), (x_te, y_te) = arrays(make(True)), arrays(make(False))
            return split_digits(name, conv(x_tr), y_tr.astype(np.int64), conv(x_te), y_te.astype(np.int64), vf,
                                seed, {"from": f"torchvision.datasets ({name})"})
        return load

    root = str(download_dir)

    def face(vf: float, seed: int) -> Prepared:
        data = tvd.CelebA(root, split="all", target_type="attr", download=True)
        xs, attrs = [], []
        for img, attr in data:
            xs.append(np.asarray(img.convert("RGB").crop(CELEBA_CROP).resize((FACE_SIZE, FACE_SIZE), Image.LANCZOS)))
            attrs.append(np.asarray(attr, dtype=np.int8))
        names = [a for a in data.attr_names if a]
        return split_faces(np.stack(xs), np.stack(attrs), names, seed, {"from": "torchvision.datasets.CelebA"})

    same = lambda x: x  # noqa: E731
    return {
        "mnist": ([], digits("mnist", lambda train: tvd.MNIST(root, train=train, download=True), same)),
        "usps": ([], digits("usps", lambda train: tvd.USPS(root, train=train, download=True),
                            lambda x: resize(x, DIGIT_SIZE))),
        "svhn": ([], digits("svhn", lambda train: tvd.SVHN(root, split="train" if train else "test", download=True),
                            lambda x: resize(x, DIGIT_SIZE))),
        "face": ([], face),
    }


# ---------------------------------------------------------------- writing


def dataset_dir(out: Path, name: str) -> Path:
    """Where a dataset lives in the course layout."""
    return out / "face" if name == "face" else out / "digits" / name


def _fingerprint(files: list[Path], params: dict) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _existing_state(target: Path, fingerprint: str) -> str:
    """'absent', 'current' (same inputs, all files present), or 'different' (anything else in the way)."""
    if not target.exists():
        return "absent"
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return "different"
    if manifest.get("fingerprint") != fingerprint:
        return "different"
    for rel, count in manifest.get("files", {}).items():
        folder = target / rel
        if not folder.is_dir() or sum(1 for n in os.listdir(folder) if not n.startswith(".")) != count:
            return "different"
    return "current"


def write_prepared(prepared: Prepared, target: Path, fingerprint: str) -> dict:
    """Write PNGs + CSVs + manifest into a temporary folder, then swap it in whole."""
    is_face = prepared.name == "face"
    width = max(5, len(str(sum(len(v) for v in prepared.images.values()) - 1)))
    counts: dict[str, int] = {}
    with atomic_dir(target) as tmp:
        if not is_face:
            (tmp / "data").mkdir()
        index = 0
        for split, images in prepared.images.items():
            folder = tmp / split if is_face else tmp / "data"
            folder.mkdir(exist_ok=True)
            rows = []
            for i, img in enumerate(images):
                name = f"{index:0{width}d}.png"
                index += 1
                Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / name, compress_level=1)
                label = prepared.labels[split][i]
                rows.append([name] + ([("" if v < 0 else str(int(v))) for v in label] if is_face else [str(int(label))]))
            header = ["image_name"] + (prepared.attribute_names if is_face else ["label"])
            csv_path = tmp / (f"{split}.csv")
            with open(csv_path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(header)
                writer.writerows(rows)
            counts[split] = len(rows)
        files = {s: n for s, n in counts.items()} if is_face else {"data": sum(counts.values())}
        manifest = {"format": PREPARE_VERSION, "dataset": prepared.name, "fingerprint": fingerprint,
                    "files": files, "summary": summarise(prepared), "provenance": prepared.provenance}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def summarise(prepared: Prepared) -> dict[str, dict[str, int]]:
    """split -> {'total': n, and per class (digits) or per attribute value (faces: Smiling, Male, annotated)}."""
    table = {}
    for split, labels in prepared.labels.items():
        row = {"total": int(len(labels))}
        if prepared.name == "face":
            names = prepared.attribute_names
            row["annotated"] = int((labels.min(axis=1) >= 0).sum()) if labels.size else 0
            for a in ("Smiling", "Male"):
                if a in names:
                    row[a] = int((labels[:, names.index(a)] == 1).sum())
        else:
            for c in range(10):
                row[str(c)] = int((labels == c).sum())
        table[split] = row
    return table


def prepare(source: str, out: str | Path, only: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
            synth_mnistm: int = 0, overwrite: bool = False, download_dir: str | Path | None = None,
            progress: Callable[[str], None] = log.info) -> dict[str, dict]:
    """Build <out>/face and <out>/digits/<domain> from `source` (a folder like ../shared/data, or 'torchvision').

    Returns dataset -> {'status': 'written'|'up to date', 'counts': summarise(...)}. Raises DataError before
    writing anything if a source file is missing/corrupt or an output folder holds a different dataset.
    """
    out = Path(out)
    if not 0 < val_fraction < 1:  # also refuses NaN; 0 would leave val empty, >= 1 or < 0 would swap the splits
        raise DataError(f"--val-fraction {val_fraction} must lie between 0 and 1 (exclusive), e.g. 0.1")
    if only:
        unknown = sorted(set(only) - set(DATASETS))
        if unknown:
            raise DataError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    if source == "torchvision":
        sources = torchvision_sources(Path(download_dir or Path.home() / ".cache/dlcv/torchvision"))
    else:
        src = Path(source)
        if not src.is_dir():
            what = "is a file, not a folder" if src.is_file() else "does not exist"
            raise DataError(f"source folder {src} {what}; pass --source ../shared/data or --source torchvision")
        sources = shared_sources(src, synth_mnistm)
    wanted = list(only) if only else [n for n in DATASETS if n != "mnistm_synth"] + (["mnistm_synth"] if synth_mnistm else [])
    if synth_mnistm and "mnistm_synth" not in wanted:
        wanted.append("mnistm_synth")
    plan = []
    for name in wanted:
        if name not in sources:
            if only:
                raise DataError(f"{name} cannot be prepared from --source {source}; use a folder that holds it")
            progress(f"skip {name}: not available from {source}")
            continue
        files, _ = sources[name]
        present = [f.is_file() for f in files]
        if files and not any(present) and not only and name != "mnistm_synth":
            progress(f"skip {name}: no {files[0]} (optional)")
            continue
        for f, ok in zip(files, present):
            if not ok:
                raise DataError(f"missing source file {f} needed for {name}; add it or leave {name} out with --only")
        params = {"version": PREPARE_VERSION, "dataset": name, "val_fraction": val_fraction, "seed": seed,
                  "synth": synth_mnistm if name == "mnistm_synth" else 0, "source": source if not files else "files"}
        fingerprint = _fingerprint(files, params)
        target = dataset_dir(out, name)
        recover(target)  # a run killed while swapping this folder in: finish it (and drop its half-written copy)
        state = _existing_state(target, fingerprint)
        if state == "different" and not overwrite:
            raise DataError(f"{target} already holds a different dataset (other source, seed or split); "
                            f"pass --overwrite to replace it or choose another --out")
        plan.append((name, target, fingerprint, state))
    if not plan:
        raise DataError(f"nothing to prepare from {source}: none of {wanted} is there")
    # read and check every source before the first write, so a bad file changes nothing on disk
    loaded = {}
    for name, target, fingerprint, state in plan:
        if state == "current":
            continue
        progress(f"reading {name}")
        loaded[name] = sources[name][1](val_fraction, seed)
        # the readers reject a CSV without rows, so an empty split would be written only to fail later
        empty = [s for s, x in loaded[name].images.items() if len(x) == 0]
        if empty:
            raise DataError(f"{name} from {source} would have an empty {'/'.join(empty)} split "
                            f"(val fraction {val_fraction}); use another --val-fraction or more images")
    report = {}
    for name, target, fingerprint, state in plan:
        if state == "current":
            manifest = json.loads((target / MANIFEST).read_text())
            report[name] = {"status": "up to date", "counts": manifest["summary"], "path": str(target)}
            continue
        progress(f"writing {name} -> {target}")
        manifest = write_prepared(loaded[name], target, fingerprint)
        report[name] = {"status": "written", "counts": manifest["summary"], "path": str(target)}
    return report
