"""Decoding, validating and caching image folders; CSV checks. Every failure is a DataError naming file and fix."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dlcv.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CACHE_DIR = ".dlcv_cache"


class DataError(ValueError):
    """Bad or missing data; the message names the file and says how to fix it."""


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted image file names in `folder`; any other (non-hidden) file is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.is_file() else "does not exist"
        raise DataError(f"image folder {folder} {what}; give the folder of images, or run `python -m dlcv data "
                        f"prepare`")
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue  # hidden files (our cache, .DS_Store) and sub-folders are not images of this split
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
            raise DataError(f"{folder / entry.name} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"move it out of {folder}")
        names.append(entry.name)
    return names


def read_image(path: str | os.PathLike, size: int | None = None, channels: int | None = None,
               resize: bool = False) -> np.ndarray:
    """Decode one image to (H, W, C) uint8. Grey -> RGB replicates the channel; RGB -> grey uses PIL's luma.

    A size mismatch is an error unless `resize` (bilinear) is asked for.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # the pixel count is checked below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if Image.MAX_IMAGE_PIXELS and img.width * img.height > Image.MAX_IMAGE_PIXELS:
                raise DataError(f"{path} is {img.width}x{img.height} pixels, over Pillow's limit of "
                                f"{Image.MAX_IMAGE_PIXELS} (a decompression bomb guard); shrink it or remove it")
            img.load()  # decode now: truncated files fail here, not later in training
            try:
                img = eight_bit(img)
            except ValueError as err:
                raise DataError(f"{path} {err}") from None
            if img.mode in ("RGBA", "P", "PA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            elif img.mode in ("LA", "1"):
                img = img.convert("L")
            if channels == 3 and img.mode == "L":
                img = img.convert("RGB")
            elif channels == 1 and img.mode == "RGB":
                img = img.convert("L")
            if size is not None and img.size != (size, size):
                if not resize:
                    raise DataError(f"{path} is {img.size[0]}x{img.size[1]} but {size}x{size} is expected; "
                                    f"resize it (or pass --resize where the command offers it)")
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:  # raised by Image.open itself beyond twice the limit
        raise DataError(f"{path} has more pixels than Pillow's limit of 2 x {Image.MAX_IMAGE_PIXELS} (a "
                        f"decompression bomb guard); shrink it or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path} is corrupt, truncated or not an image ({err}); re-export or remove it") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def eight_bit(image: Image.Image) -> Image.Image:
    """`image` with 8-bit pixels: 16-bit grey scaled to 8 bits (Pillow's convert clips it to white). ValueError,
    worded to follow the image's name, for 32-bit pixels and for transparent ones, whose colour is unknown."""
    if image.mode in ("I", "F"):
        raise ValueError(f"has 32-bit pixels (mode {image.mode}); save it as an 8- or 16-bit PNG or as JPEG")
    if image.has_transparency_data and has_transparent_pixels(image):
        raise ValueError("has transparent pixels, whose colour is unknown; flatten it onto a background (e.g. save "
                         "it as JPEG)")
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image).astype(np.float32) / 257).round().astype(np.uint8))
    return image


def has_transparent_pixels(image: Image.Image) -> bool:
    """Whether an alpha channel, palette alpha or PNG colour key (tRNS) makes any pixel not fully opaque."""
    if image.mode == "P" or {"A", "a"} & set(image.getbands()):
        return bool(np.asarray(image.convert("RGBA").getchannel("A")).min() < 255)
    pixels, key = np.asarray(image), image.info.get("transparency")  # L, RGB or I;16 with one transparent colour
    if key is None:
        return False
    matches = pixels == np.asarray(key)
    return bool((matches.all(axis=-1) if pixels.ndim == 3 else matches).any())


def read_images(folder: str | os.PathLike, names: list[str], size: int | None, channels: int | None,
                resize: bool = False, cache: bool = True) -> np.ndarray:
    """Decode `names` from `folder` into one (N, H, W, C) uint8 array, cached as .npy beside the images.

    The cache key covers every file's name, size and mtime, so editing, adding or removing a file invalidates it.
    With channels=None all images must share one channel count.
    """
    folder = Path(folder)
    key = _fingerprint(folder, names, size, channels, resize)
    cache_path = folder / CACHE_DIR / f"{key}.npy"
    if cache and cache_path.exists():
        try:
            return np.load(cache_path, allow_pickle=False)
        except (OSError, ValueError):
            log.warning("ignoring unreadable cache %s", cache_path)
    arrays = [read_image(folder / name, size, channels, resize) for name in names]
    if not arrays:
        raise DataError(f"no images to read in {folder}; check the CSV or the folder")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(n for n, a in zip(names, arrays) if a.shape != first)
        raise DataError(f"{folder / odd} has shape {arrays[names.index(odd)].shape} but {folder / names[0]} has "
                        f"{first} (H, W, C); make all images of a split the same size and colour mode")
    stacked = np.stack(arrays)
    if cache:
        _write_cache(cache_path, stacked)
    return stacked


def _fingerprint(folder: Path, names: list[str], size: int | None, channels: int | None, resize: bool) -> str:
    digest = hashlib.sha1(f"v1|{size}|{channels}|{resize}".encode())
    for name in names:
        try:
            st = os.stat(folder / name)
        except FileNotFoundError:
            raise DataError(f"{folder / name} is listed but missing; restore it or remove its CSV row") from None
        digest.update(f"|{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _write_cache(cache_path: Path, array: np.ndarray) -> None:
    try:
        cache_path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        atomic_write_bytes(cache_path, buf.getvalue())
    except OSError as err:  # a read-only data folder still works, just without the cache
        log.info("not caching %s: %s", cache_path, err)
        return
    # stale caches (older fingerprints) would only take disk space; at most a few dozen exist, so prune by age
    entries = sorted(cache_path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[32:]:
        old.unlink(missing_ok=True)


def read_csv(path: str | os.PathLike, required: tuple[str, ...], allow_extra: bool = True) -> tuple[list[str], list[dict]]:
    """Read a CSV with a header; check required columns, no duplicate image names, no ragged rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; check --data or run `python -m dlcv data prepare`")
    try:  # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is an encoding detail, as the scorer treats it
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}); re-save it as UTF-8 CSV") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path} is empty; it needs a header line {','.join(required)}") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path} lacks column(s) {missing} (header is {header}); add them")
        if not allow_extra and len(header) != len(required):
            extra = [c for c in header if c not in required]
            raise DataError(f"{path} has unexpected column(s) {extra}; the header must be {','.join(required)}")
        if len(set(header)) != len(header):
            raise DataError(f"{path} repeats a column name in its header {header}; make each column unique")
        rows, seen = [], set()
        for line_no, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path} line {line_no} has {len(values)} fields but the header has {len(header)}; "
                                f"fix that row")
            row = dict(zip(header, (v.strip() for v in values)))
            name = row.get("image_name")
            if name is not None:
                if name in seen:
                    raise DataError(f"{path} line {line_no} repeats image {name!r}; remove the duplicate row")
                seen.add(name)
            rows.append(row)
    return header, rows


def check_files_exist(folder: Path, names: list[str], csv_path: Path) -> None:
    """Every name a CSV lists must be a file in `folder`."""
    present = set(os.listdir(folder)) if folder.is_dir() else set()
    absent = [n for n in names if n not in present]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise DataError(f"{csv_path} lists {absent[0]!r}{more} but {folder} has no such file; "
                        f"restore the images or remove those rows")
