"""Grade a homework output folder: `python -m grading.score OUT_DIR --data DATA_DIR`.

Faces: FID and KID against DATA's held-out faces (dlcv.metrics.face_scores, torch-fidelity) and the share of
samples where dlib's HOG detector finds exactly one face. Digits: accuracy with the course's classifier, label =
first character of the file name. Adaptation: strict CSV accuracy against DATA's labels. Writes OUT_DIR/score.json
and OUT_DIR/report.md. A bad submission never crashes it: each problem is a line in the report and a zero for
that output only; a metric the grader itself cannot compute (no classifier, no FID weights) is left empty and said.

Each output in score.json has a status (ok, invalid: broke a rule, incomplete: a metric could not be computed) and
a `score`: the face-detection rate for faces, the accuracy for digits and adaptation, 0 when invalid.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dlcv import fileio
from dlcv.config import default_data_root
from dlcv.data.digits import PREDICTIONS_HEADER
from dlcv.fileio import atomic_write_text
from grading.run import PARTS, target_accuracy

log = logging.getLogger(__name__)

FACE_FOLDERS = ("gan_a", "gan_b")
DIGIT_FOLDERS = ("acgan", "diffusion")
N_IMAGES = 1000
FACE_SIZE, DIGIT_SIZE = 64, 28
GREY_MODES = ("L", "LA", "1", "I", "I;16", "F")
HEADER = PREDICTIONS_HEADER.split(",")
MAX_LISTED = 20  # names listed per problem in the report; the count is always complete
listing = functools.partial(fileio.listing, most=MAX_LISTED)  # 'a, b, c and 12 more'
# dlib's HOG + linear SVM frontal face detector is what face_recognition's face_locations(model="hog") runs, the
# course's detector. Its sliding window is 80x80, so a 64x64 face is upscaled 4x first (measured on real faces:
# 0.91 of 1000 data/face/val and of 1000 face/test faces hold exactly one face; 0.80 without the upscale).
DETECTOR_UPSCALE = 4
DETECTOR = (f"dlib HOG frontal face detector (dlib.get_frontal_face_detector, the one behind face_recognition's "
            f"model='hog'), faces bilinear-upscaled {DETECTOR_UPSCALE}x; a sample counts when exactly one face "
            f"is found")


class Invalid(Exception):
    """A submission that breaks a rule: its output scores zero; `problems` are the report's lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def course_classifier_path(given: str | None = None) -> Path:
    """--classifier, else $DLCV_COURSE_CLASSIFIER, else $DLCV_SHARED_DATA/weights/..., else ../shared/data/weights/."""
    from dlcv.evaluate import course_classifier_path as default  # the one default, shared with `dlcv evaluate`

    return Path(given) if given else default()


# ---------------------------------------------------------------- image folders

def check_image_folder(folder: Path, count: int, size: int,
                       per_class: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode a folder that must hold exactly `count` RGB PNGs of size x size and nothing else; with `per_class`,
    names start with their digit and each digit has `per_class` files. Returns ((N, H, W, 3) uint8, names) or
    raises Invalid listing every broken rule."""
    if not folder.exists():
        raise Invalid([f"{folder.name}/ is missing; it must hold {count} PNG images"])
    if not folder.is_dir():
        raise Invalid([f"{folder.name} is a file, not a folder of {count} PNG images"])
    problems = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise Invalid([f"{folder.name}/ cannot be listed ({err.strerror}); it must be a plain folder of {count} "
                       f"PNG images"]) from None

    def is_file(entry: os.DirEntry) -> bool:
        try:
            return entry.is_file()
        except OSError:  # a symlink loop: not a file, reported with the other entries
            return False

    others = [e.name + ("" if is_file(e) else "/") for e in entries
              if not is_file(e) or not e.name.lower().endswith(".png")]
    if others:
        problems.append(f"{len(others)} entries are not .png files ({listing(others)}); the folder must hold only "
                        f"the {count} PNG images")
    names = [e.name for e in entries if is_file(e) and e.name.lower().endswith(".png")]
    if len(names) != count:
        problems.append(f"holds {len(names)} PNG images; exactly {count} are required")
    unreadable, wrong_size, grey, arrays = [], [], [], []
    for name in names:
        try:
            with Image.open(folder / name) as img:
                img.load()
                mode, (w, h) = img.mode, img.size
                array = np.asarray(img.convert("RGB"), dtype=np.uint8) if mode not in GREY_MODES else None
        except Exception as err:  # noqa: BLE001 - PIL raises many types for corrupt or foreign files
            unreadable.append(f"{name} ({type(err).__name__})")
            continue
        if (w, h) != (size, size):
            wrong_size.append(f"{name} is {w}x{h}")
        elif array is None:
            grey.append(f"{name} ({mode})")
        else:
            arrays.append(array)
    if unreadable:
        problems.append(f"{len(unreadable)} files are not readable images: {listing(unreadable)}")
    if wrong_size:
        problems.append(f"{len(wrong_size)} images are not {size}x{size}: {listing(wrong_size)}")
    if grey:
        problems.append(f"{len(grey)} images are grey, not RGB: {listing(grey)}")
    if per_class is not None:
        unlabelled = [n for n in names if n[0] not in "0123456789"]
        if unlabelled:
            problems.append(f"{len(unlabelled)} file names do not start with their digit (the course's "
                            f"{{digit}}_{{001..{per_class:03d}}}.png): {listing(unlabelled)}")
        counts = {d: sum(n.startswith(str(d)) for n in names) for d in range(10)}
        off = [f"{d}: {c}" for d, c in counts.items() if c != per_class]
        if off:
            problems.append(f"each digit needs {per_class} images; these do not have it: {', '.join(off)}")
    if problems:
        raise Invalid(problems)
    return np.stack(arrays), names


# ---------------------------------------------------------------- faces

def face_detection_rate(images: np.ndarray) -> float:
    """Share of (N, H, W, 3) uint8 faces where the detector finds exactly one face (see DETECTOR)."""
    import dlib  # dlib-bin: prebuilt wheels; the HOG model is part of the library, nothing is downloaded

    detector = dlib.get_frontal_face_detector()
    hits = 0
    for array in images:
        h, w = array.shape[:2]
        big = np.asarray(Image.fromarray(array).resize((w * DETECTOR_UPSCALE, h * DETECTOR_UPSCALE), Image.BILINEAR))
        hits += len(detector(big, 0)) == 1
    return hits / len(images)


def reference_faces(data: Path) -> tuple[Path | None, str]:
    """DATA/face/test when present (held out), else face/val; (None, reason) when neither exists."""
    for split in ("test", "val"):
        folder = data / "face" / split
        if folder.is_dir():
            return folder, split
    return None, f"no held-out faces: neither {data / 'face/test'} nor {data / 'face/val'} exists"


def reference_cache_name(folder: Path) -> str:
    """torch-fidelity cache name of a reference folder, changed by any edit (names, sizes, mtimes of its files)."""
    digest = hashlib.sha1(str(folder.resolve()).encode())
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            digest.update(f"|{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"dlcv_faces_{folder.name}_{digest.hexdigest()[:16]}"


def score_faces(out: Path, data: Path, fid: bool = True, isc: bool = False) -> dict[str, Any]:
    """faces/gan_a and faces/gan_b: validity, FID/KID (and IS with isc), detection rate; plus real faces' rate."""
    reference, split = reference_faces(data)
    part: dict[str, Any] = {"reference": str(reference) if reference else None, "notes": []}
    if reference is None:
        part["notes"].append(f"FID/KID not computed: {split}")
    else:
        part["reference_split"] = split
        try:  # the detector's rate on real held-out faces: the ceiling a generator can reach
            from dlcv.data.faces import read_faces

            real = read_faces(data, split).images[:N_IMAGES].permute(0, 2, 3, 1).numpy()  # (N, C, H, W) -> (N, H, W, C)
            part["real_detection_rate"] = round(face_detection_rate(real), 4)
        except Exception as err:  # noqa: BLE001
            part["notes"].append(f"detection rate of real faces not computed: {type(err).__name__}: {err}")
    for name in FACE_FOLDERS:
        result: dict[str, Any] = {"status": "ok", "problems": [], "notes": [], "score": None, "fid": None,
                                  "kid_mean": None, "kid_std": None, "detection_rate": None}
        part[name] = result
        try:
            images, _ = check_image_folder(out / "faces" / name, N_IMAGES, FACE_SIZE)
        except Invalid as err:
            result.update(status="invalid", problems=err.problems, score=0.0, detection_rate=0.0)
            continue
        try:
            result["detection_rate"] = result["score"] = round(face_detection_rate(images), 4)
        except Exception as err:  # noqa: BLE001 - grader-side: dlib missing or broken
            result["notes"].append(f"face detection not run ({type(err).__name__}: {err}); "
                                   f"install it with `pip install dlib-bin==20.0.1.post1`")
            result["status"] = "incomplete"
        if not fid:
            result["notes"].append("FID/KID skipped (--no-fid)")
        elif reference is not None:
            try:
                try:
                    result.update(fid_scores(out / "faces" / name, reference, len(images), isc))
                except Exception as err:  # noqa: BLE001 - IS needs the official weights; FID/KID do not
                    if not isc:
                        raise
                    result["notes"].append(f"IS not computed: {type(err).__name__}: {err}")
                    result.update(fid_scores(out / "faces" / name, reference, len(images), False))
            except Exception as err:  # noqa: BLE001 - grader-side: face_scores missing, no Inception weights, ...
                result["notes"].append(f"FID/KID not computed: {type(err).__name__}: {err}")
                result["status"] = "incomplete"
    return part


def fid_scores(samples: Path, reference: Path, n_samples: int, isc: bool) -> dict[str, Any]:
    """dlcv.metrics.face_scores, imported here so a dlcv without it fails this metric only."""
    from dlcv.metrics import face_scores

    n_reference = sum(1 for p in reference.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    scores = face_scores(str(samples), str(reference), kid_subset_size=max(2, min(1000, n_samples, n_reference)),
                         cache_name=reference_cache_name(reference), isc=isc)
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in scores.items()}


# ---------------------------------------------------------------- digits

def score_digits(out: Path, classifier_path: Path) -> dict[str, Any]:
    """digits/acgan and digits/diffusion: validity, then the course classifier's accuracy and per-class table."""
    from dlcv import checkpoint
    from dlcv.metrics import digit_scores

    part: dict[str, Any] = {"classifier": str(classifier_path), "notes": []}
    classifier, why = None, ""
    try:
        classifier = checkpoint.load_course_classifier(classifier_path)
    except Exception as err:  # noqa: BLE001 - grader-side
        why = f"{type(err).__name__}: {err}"
        part["notes"].append(f"accuracy not computed: {why}; pass --classifier or set DLCV_COURSE_CLASSIFIER")
    for name in DIGIT_FOLDERS:
        result: dict[str, Any] = {"status": "ok", "problems": [], "notes": [], "score": None, "accuracy": None,
                                  "per_class": None}
        part[name] = result
        try:
            array, names = check_image_folder(out / "digits" / name, N_IMAGES, DIGIT_SIZE, per_class=N_IMAGES // 10)
        except Invalid as err:
            result.update(status="invalid", problems=err.problems, score=0.0, accuracy=0.0)
            continue
        if classifier is None:
            result.update(status="incomplete", notes=[f"accuracy not computed: {why}"])
            continue
        images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        labels = torch.tensor([int(n[0]) for n in names])
        scores = digit_scores(classifier, images, labels)
        result.update(accuracy=round(scores["accuracy"], 4), score=round(scores["accuracy"], 4),
                      per_class={str(c): round(a, 4) for c, a in scores["per_class"].items()})
    return part


# ---------------------------------------------------------------- adaptation

def read_submission(path: Path) -> dict[str, str]:
    """image_name -> label text of a prediction CSV, or Invalid: not a file, not UTF-8 text, empty, a header other
    than image_name,label, a row without exactly two fields, a repeated image."""
    if not path.is_file():
        raise Invalid([f"{path.name} is missing"])
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a UTF-8 byte-order mark is an encoding detail, not the header
    except UnicodeDecodeError:
        raise Invalid([f"{path.name} is not UTF-8 text; write a CSV with header image_name,label"]) from None
    if not text.strip():
        raise Invalid([f"{path.name} is empty; it needs the header image_name,label and one row per image"])
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise Invalid([f"{path.name} is not a readable CSV ({err})"]) from None
    header = [h.strip() for h in rows[0]]
    if header != HEADER:
        raise Invalid([f"{path.name}: header is {','.join(rows[0])!r}; it must be exactly image_name,label"])
    predictions: dict[str, str] = {}
    malformed, duplicates = [], []
    for line_no, values in enumerate(rows[1:], start=2):
        if not values or all(not v.strip() for v in values):
            continue  # blank lines
        if len(values) != 2:
            malformed.append(f"line {line_no} has {len(values)} fields")
            continue
        name, label = values[0].strip(), values[1].strip()
        if name in predictions:
            duplicates.append(f"{name} (line {line_no})")
        predictions[name] = label
    problems = []
    if malformed:
        problems.append(f"{path.name}: {len(malformed)} malformed rows (need image_name,label): {listing(malformed)}")
    if duplicates:
        problems.append(f"{path.name}: {len(duplicates)} images are listed more than once: {listing(duplicates)}")
    if problems:
        raise Invalid(problems)
    return predictions


def load_truth(data: Path, target: str) -> tuple[dict[str, int], str]:
    """image_name -> label from DATA/digits/<target>/test.csv, else val.csv (the CSV hw_run took its images from)."""
    from dlcv.data.images import read_csv

    folder = data / "digits" / target
    for split in ("test", "val"):
        path = folder / f"{split}.csv"
        if path.is_file():
            _, rows = read_csv(path, required=("image_name", "label"))
            return {r["image_name"]: int(r["label"]) for r in rows}, f"{split}.csv"
    raise FileNotFoundError(f"no labels for {target}: {folder} has neither test.csv nor val.csv")


def score_predictions(path: Path, truth: dict[str, int]) -> dict[str, Any]:
    """Accuracy of one CSV: a missing, unknown or non-integer row counts as wrong and is listed."""
    predictions = read_submission(path)
    correct, wrong_label, not_integer = 0, 0, []
    for name, label in predictions.items():
        if name not in truth:
            continue
        if not re.fullmatch(r"[+-]?[0-9]+", label):  # ASCII digits only: int() also reads "٣" and "３"
            not_integer.append(f"{name}={label!r}")
            continue
        value = int(label)
        if value == truth[name]:
            correct += 1
        else:
            wrong_label += 1
    missing = [n for n in truth if n not in predictions]
    unknown = [n for n in predictions if n not in truth]
    total = len(truth) + len(unknown)
    return {"accuracy": round(correct / total, 4), "correct": correct, "total": total, "wrong_label": wrong_label,
            "missing": missing, "unknown": unknown, "not_integer": not_integer}


def score_adaptation(out: Path, data: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Every adaptation/*.csv plus those the manifest says were written (a missing one scores zero)."""
    folder = out / "adaptation"
    part: dict[str, Any] = {"notes": [], "pairs": {}}
    entries = {Path(e["output"]).name: e for e in manifest.get("parts", {}).get("adaptation", {}).get("entries", [])
               if e.get("output", "").endswith(".csv")}
    present, folders = [], []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            try:
                (present if p.is_file() else folders).append(p.name)
            except OSError:  # a symlink loop, a name the file system cannot stat
                folders.append(p.name)
    others = [n for n in present if not n.endswith(".csv")]
    if others:
        part["notes"].append(f"adaptation/ holds files that are not CSVs (ignored): {listing(others)}")
    if folders:
        part["notes"].append(f"adaptation/ holds entries that are not files (ignored): "
                             f"{listing([n + '/' for n in folders])}")
    names = sorted({n for n in present if n.endswith(".csv")} | set(entries))
    if not names:
        part["notes"].append("no adaptation/<source>_to_<target>.csv to score")
    for name in names:
        entry = entries.get(name, {})
        result: dict[str, Any] = {"status": "ok", "problems": [], "notes": [], "score": None, "accuracy": None,
                                  "checkpoint": entry.get("checkpoint", ""),
                                  "candidates": entry.get("details", {}).get("candidates", {})}
        part["pairs"][name] = result
        from dlcv.catalog import parse_pair_name

        pair = parse_pair_name(name.removesuffix(".csv")) if name.endswith(".csv") else None
        if pair is None:
            result.update(status="invalid", score=0.0, accuracy=0.0,
                          problems=[f"{name} is not named <source>_to_<target>.csv (e.g. mnistm_to_usps.csv)"])
            continue
        result.update(source=pair[0], target=pair[1])
        if entry and entry.get("status") != "ok":
            result["notes"].append(f"hw_run: {entry.get('status')}: {entry.get('message')}")
        try:
            truth, labels_from = load_truth(data, pair[1])
        except Exception as err:  # noqa: BLE001 - grader-side: no labelled split in DATA
            result.update(status="incomplete", notes=result["notes"] + [f"not scored: {err}"])
            continue
        result["labels_from"] = f"digits/{pair[1]}/{labels_from}"
        try:
            scored = score_predictions(folder / name, truth)
        except Invalid as err:
            result.update(status="invalid", problems=err.problems, score=0.0, accuracy=0.0)
            continue
        result.update(scored, score=scored["accuracy"])
        for key, what in (("missing", "images of the target's CSV have no prediction"),
                          ("unknown", "rows name images that are not in the target's CSV"),
                          ("not_integer", "labels are not integers")):
            if scored[key]:
                result["problems"].append(f"{len(scored[key])} {what} (counted wrong): {listing(scored[key])}")
    return part


# ---------------------------------------------------------------- grade, report, entry point

def _typed(value: Any, kind: type | tuple[type, ...], where: str, dropped: list[str]) -> Any:
    """`value` if it has the type hw_run.sh writes (bool is not a number here), else None, noting `where`."""
    if value is None:
        return None
    if isinstance(value, kind) and not (isinstance(value, bool) and kind != bool):
        return value
    dropped.append(where)
    return None


def _clean_entry(entry: Any, where: str, dropped: list[str]) -> dict[str, Any] | None:
    """One manifest entry with only the typed fields the scorer reads; None when it has no `output` string."""
    if not isinstance(entry, dict) or not isinstance(entry.get("output"), str):
        dropped.append(where)
        return None
    clean = {"output": entry["output"]}
    for key in ("status", "message", "checkpoint"):
        if entry.get(key) is not None:
            clean[key] = _typed(entry.get(key), str, f"{where}.{key}", dropped)
    candidates = {}
    details = _typed(entry.get("details"), dict, f"{where}.details", dropped) or {}
    for name, info in (_typed(details.get("candidates"), dict, f"{where}.details.candidates", dropped) or {}).items():
        info = _typed(info, dict, f"{where}.details.candidates.{name}", dropped)
        if info is not None:
            candidates[str(name)] = {
                "method": _typed(info.get("method"), str, f"{where}.details.candidates.{name}.method", dropped) or "",
                "metrics": _typed(info.get("metrics"), dict, f"{where}.details.candidates.{name}.metrics",
                                  dropped) or {}}
    if candidates:
        clean["details"] = {"candidates": candidates}
    return clean


def read_manifest(out: Path) -> tuple[dict[str, Any], str]:
    """manifest.json reduced to the typed fields the scorer reads: a hand-edited file (it is part of an untrusted
    submission) loses its ill-typed values, named in the returned note, and never breaks the scorer."""
    path = out / "manifest.json"
    if not path.is_file():
        return {}, "no manifest.json (not written by hw_run.sh): checkpoints and hw_run times unknown"
    try:
        raw = json.loads(path.read_bytes().decode("utf-8-sig"))
        if not isinstance(raw, dict) or not isinstance(raw.get("parts", {}), dict):
            raise ValueError("not the JSON object hw_run.sh writes")
    except (ValueError, OSError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        return {}, f"manifest.json is unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__}); ignored"
    dropped: list[str] = []
    parts = {}
    for name, part in raw.get("parts", {}).items():
        where = f"parts.{name}"
        if not isinstance(part, dict) or not isinstance(part.get("entries", []), list):
            dropped.append(where)
            continue
        entries = [_clean_entry(e, f"{where}.entries[{i}]", dropped) for i, e in enumerate(part.get("entries", []))]
        parts[name] = {"status": _typed(part.get("status"), str, f"{where}.status", dropped),
                       "seconds": _typed(part.get("seconds"), (int, float), f"{where}.seconds", dropped),
                       "message": _typed(part.get("message"), str, f"{where}.message", dropped),
                       "entries": [e for e in entries if e is not None]}
    note = (f"manifest.json: ignored {len(dropped)} values of the wrong type ({fileio.listing(dropped)}); "
            f"it was edited by hand or not written by hw_run.sh") if dropped else ""
    return {"parts": parts}, note


def grade(out: Path, data: Path, classifier: Path, fid: bool = True, isc: bool = False) -> dict[str, Any]:
    """Score every part of `out`; a part that raises unexpectedly is reported as an error, never a crash."""
    manifest, note = read_manifest(out)
    result: dict[str, Any] = {"out_dir": str(out), "data_dir": str(data),
                              "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "detector": DETECTOR, "notes": [note] if note else [], "seconds": {},
                              "hw_run": {name: {k: p.get(k) for k in ("status", "seconds", "message")}
                                         for name, p in manifest.get("parts", {}).items()}}
    parts = {"faces": lambda: score_faces(out, data, fid=fid, isc=isc),
             "digits": lambda: score_digits(out, classifier),
             "adaptation": lambda: score_adaptation(out, data, manifest)}
    for name, work in parts.items():
        start = time.perf_counter()
        try:
            result[name] = work()
        except Exception as err:  # noqa: BLE001 - a grader bug must not hide the other parts
            log.debug(traceback.format_exc())
            result[name] = {"notes": [f"{name} not scored: {type(err).__name__}: {err}"], "error": True}
        result["seconds"][name] = round(time.perf_counter() - start, 2)
    # checkpoints named by the manifest, per output
    by_output = {e["output"]: e for p in manifest.get("parts", {}).values() for e in p["entries"]}
    result["hw_run_problems"] = [{"output": k, "status": e.get("status"), "message": e.get("message", "")}
                                 for k, e in by_output.items() if e.get("status") != "ok"]
    for part, folders in (("faces", FACE_FOLDERS), ("digits", DIGIT_FOLDERS)):
        for folder in folders:
            entry = by_output.get(f"{part}/{folder}")
            if entry and isinstance(result[part].get(folder), dict):
                result[part][folder]["checkpoint"] = entry.get("checkpoint", "")
                if entry.get("status") != "ok":
                    result[part][folder]["notes"].insert(0, f"hw_run: {entry['status']}: {entry.get('message')}")
    return result


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _lines(result: dict[str, Any], label: str) -> list[str]:
    out = [f"- **{label}**: {p}" for p in result.get("problems", [])]
    out += [f"- {label}: {n}" for n in result.get("notes", [])]
    return out


def course_row(candidates: dict[str, Any]) -> dict[str, str]:
    """Lower bound / DANN / improved / upper bound as recorded by the shipped checkpoints of one pair (slots from
    dlcv.catalog.METHOD_SLOT; the best-ranked method of a slot first; an unknown method fills no slot)."""
    from dlcv.catalog import METHOD_SLOT, method_rank

    row = {"lower": "-", "dann": "-", "improved": "-", "upper": "-"}
    for info in sorted(candidates.values(), key=lambda i: method_rank(i.get("method", ""))):
        method, metrics = info.get("method", ""), info.get("metrics", {}) or {}
        acc, slot = target_accuracy(metrics), METHOD_SLOT.get(method)
        if slot and acc is not None and row[slot] == "-":
            row[slot] = f"{acc:.3f}" + (f" ({method})" if slot == "improved" else "")
    return row


def report_markdown(result: dict[str, Any], out: Path) -> str:
    """The human report: course-shaped tables, every problem as a line, figures embedded (paths relative to out)."""
    lines = [f"# Grading report: `{result['out_dir']}`", "",
             f"Scored {result['scored_at']} by `python -m grading.score` against `{result['data_dir']}`.", ""]
    lines += [f"- {n}" for n in result["notes"]]
    faces, digits, adaptation = result["faces"], result["digits"], result["adaptation"]

    lines += ["", "## Faces", ""]
    if faces.get("reference"):
        lines.append(f"FID and KID against `{faces['reference']}` (torch-fidelity). Face detector: {DETECTOR}."
                     + (f" Real faces of that split: **{faces['real_detection_rate']:.3f}**."
                        if faces.get("real_detection_rate") is not None else ""))
    lines += ["", "| model | checkpoint | FID | KID (x1000) | IS | face detection | status |",
              "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for name in FACE_FOLDERS:
        r = faces.get(name)
        if isinstance(r, dict):
            kid = None if r.get("kid_mean") is None else f"{1000 * r['kid_mean']:.2f}" + (
                f" ± {1000 * r['kid_std']:.2f}" if r.get("kid_std") else "")  # std is 0 when the subset is all
            lines.append(f"| {name} | {r.get('checkpoint') or '-'} | {_fmt(r.get('fid'), 2)} | {_fmt(kid)} | "
                         f"{_fmt(r.get('isc_mean'), 2)} | {_fmt(r.get('detection_rate'))} | {r['status']} |")
    lines.append("")
    lines += [f"- {n}" for n in faces.get("notes", [])]
    for name in FACE_FOLDERS:
        lines += _lines(faces.get(name) or {}, f"faces/{name}")

    lines += ["", "## Digits", "", f"Accuracy of the course's classifier (`{digits.get('classifier', '-')}`), label = "
              "first character of the file name.", "",
              "| generator | checkpoint | accuracy | " + " | ".join(str(d) for d in range(10)) + " | status |",
              "| --- | --- | ---: | " + " | ".join("---:" for _ in range(10)) + " | --- |"]
    for name in DIGIT_FOLDERS:
        r = digits.get(name)
        if isinstance(r, dict):
            per = r.get("per_class") or {}
            lines.append(f"| {name} | {r.get('checkpoint') or '-'} | {_fmt(r.get('accuracy'))} | "
                         + " | ".join(_fmt(per.get(str(d)), 2) for d in range(10)) + f" | {r['status']} |")
    lines.append("")
    lines += [f"- {n}" for n in digits.get("notes", [])]
    for name in DIGIT_FOLDERS:
        lines += _lines(digits.get(name) or {}, f"digits/{name}")

    lines += ["", "## Adaptation", "", "Target-domain accuracy. The first four columns are what the shipped "
              "checkpoints of the pair recorded in their config.json; the last is this folder's CSV, scored here.", "",
              "| pair | source only (lower bound) | DANN | improved | target only (upper bound) | this CSV | status |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    pairs = adaptation.get("pairs", {})
    for name, r in pairs.items():
        row = course_row(r.get("candidates") or {})
        lines.append(f"| {name[:-4]} | {row['lower']} | {row['dann']} | {row['improved']} | {row['upper']} | "
                     f"**{_fmt(r.get('accuracy'))}** | {r['status']} |")
    lines.append("")
    lines += [f"- {n}" for n in adaptation.get("notes", [])]
    for name, r in pairs.items():
        if r.get("total"):
            lines.append(f"- {name}: {r['correct']} / {r['total']} correct, checkpoint {r.get('checkpoint') or '-'}, "
                         f"labels from {r.get('labels_from')}")
        lines += _lines(r, name)

    problems = result.get("hw_run_problems", [])
    if problems:
        lines += ["", "## What hw_run.sh could not write", "", "From manifest.json; the outputs above that these "
                  "entries should have made are scored as missing.", ""]
        lines += [f"- `{e['output']}`: {e['status']}: {e['message']}" for e in problems]

    figures = [p.relative_to(out).as_posix() for part in ("faces", "digits", "adaptation")
               for p in sorted(out.glob(f"{part}/figures/**/*.png"))]
    lines += ["", "## Figures", ""]
    lines += [f"### {rel}\n\n![{rel}]({rel})\n" for rel in figures] or ["No figures in */figures/."]

    lines += ["", "## Time", "", "| part | hw_run.sh (s) | hw_run status | scorer (s) |", "| --- | ---: | --- | ---: |"]
    for name in ("faces", "digits", "adaptation"):
        run = result["hw_run"].get(name, {})
        lines.append(f"| {name} | {_fmt(run.get('seconds'), 1)} | {run.get('status') or '-'} | "
                     f"{_fmt(result['seconds'].get(name), 1)} |")
    return "\n".join(lines) + "\n"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What the command prints: one line per output."""
    lines = []
    for part, folders in (("faces", FACE_FOLDERS), ("digits", DIGIT_FOLDERS)):
        for name in folders:
            r = result[part].get(name)
            if not isinstance(r, dict):
                continue
            if part == "faces":
                what = (f"FID {_fmt(r.get('fid'), 2)}  KID {_fmt(r.get('kid_mean'), 4)}  "
                        f"detection {_fmt(r.get('detection_rate'))}")
            else:
                what = f"accuracy {_fmt(r.get('accuracy'))}"
            lines.append(f"{part + '/' + name:<32} {r['status']:<10} {what}")
    for name, r in result["adaptation"].get("pairs", {}).items():
        lines.append(f"{'adaptation/' + name:<32} {r['status']:<10} accuracy {_fmt(r.get('accuracy'))}")
    if not result["adaptation"].get("pairs"):
        lines.append(f"{'adaptation':<32} {'-':<10} no CSV to score")
    if result.get("hw_run_problems"):
        lines.append(f"hw_run.sh could not write {len(result['hw_run_problems'])} outputs (listed in report.md)")
    for part in ("faces", "digits", "adaptation"):
        if result[part].get("error"):
            lines += result[part]["notes"]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 when a report was written (whatever the grades), 2 when OUT_DIR does not exist or is not
    an output of hw_run.sh."""
    parser = argparse.ArgumentParser(prog="python -m grading.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a folder written by grading/hw_run.sh (or by hand in its layout)")
    parser.add_argument("--data", default=default_data_root(),
                        help="course-layout data root (default $DLCV_DATA or ./data)")
    parser.add_argument("--classifier", default=None,
                        help="the course's Classifier.pth (default $DLCV_COURSE_CLASSIFIER, else "
                             "../shared/data/weights/dlcv_digit_classifier.pth)")
    parser.add_argument("--isc", action="store_true", help="also the Inception Score (needs the official weights)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID/KID (the slow part on a CPU)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    out = Path(args.out)
    if not out.is_dir():
        print(f"error: {out} is not a folder; run `bash grading/hw_run.sh {out}` first", file=sys.stderr)
        return 2
    if not any((out / name).exists() for name in ("manifest.json", *PARTS)):  # not an output: its files stay
        print(f"error: {out} holds none of manifest.json, {', '.join(p + '/' for p in PARTS)}; run `bash "
              f"grading/hw_run.sh {out}` first (nothing was written there)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = grade(out, Path(args.data), course_classifier_path(args.classifier), fid=not args.no_fid, isc=args.isc)
    result["seconds"]["total"] = round(time.perf_counter() - start, 2)
    atomic_write_text(out / "score.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "report.md", report_markdown(result, out))
    print("\n".join(summary_lines(result)))
    print(f"wrote {out / 'score.json'} and {out / 'report.md'} in {result['seconds']['total']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
