"""A checkpoint's family metrics, in dlcv.metadata's schema: FID/KID (+ Smiling agreement and pair identity for the
Smiling ACGAN) for face generators, the course classifier's accuracy and digit-FID for digit generators, val/test
MSE for the VAE, target test accuracy for UDA models, val/test accuracy for classifiers. What grading and the docs
quote; `python -m dlcv evaluate CHECKPOINT --data DATA [--record]` prints (and records) it."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dlcv import checkpoint
from dlcv.metadata import Protocol, clean_metrics

log = logging.getLogger(__name__)

COURSE_CLASSIFIER = "course_classifier"  # Protocol.judge of the course's digit classifier


def course_classifier_path() -> Path:
    """$DLCV_COURSE_CLASSIFIER, else $DLCV_SHARED_DATA/weights/..., else ../shared/data/weights/ next to the repo."""
    if os.environ.get("DLCV_COURSE_CLASSIFIER"):
        return Path(os.environ["DLCV_COURSE_CLASSIFIER"])
    shared = Path(os.environ.get("DLCV_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return shared / "weights" / "dlcv_digit_classifier.pth"


@dataclass
class EvalOptions:
    """How to measure: the sample size and seed of generators, the real split they are compared with, and the
    classifiers that judge them."""

    samples: int = 1000  # generated images (conditional: split evenly over the classes)
    seed: int = 0  # image i uses seed + i; seeds at least `samples` apart give independent samples
    reference_split: str = "val"  # faces: face/<split>; digits are compared with digits/mnistm/test
    judge: str = ""  # attribute classifier of a conditional face GAN (default: the checkpoints' smiling_classifier)
    course_classifier: str = ""  # the course's digit Classifier.pth (default: course_classifier_path())
    pairs: int = 200  # smiling pairs of the Smiling ACGAN's identity check
    batch_size: int = 64  # Inception batch size
    progress: bool = True
    sampling: list[str] = field(default_factory=list)  # --sampling.KEY=VALUE for a diffusion model (e.g. a w sweep)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")

    def per_class(self, classes: int) -> int:
        """Images per label of a class-conditional model: --samples split evenly, which it must allow."""
        if self.samples % classes:
            raise ValueError(f"--samples {self.samples} does not split evenly over the model's {classes} classes; "
                             f"give a multiple of {classes}, e.g. {max(1, round(self.samples / classes)) * classes}")
        return self.samples // classes


def evaluate(path: str | os.PathLike, data: str | os.PathLike, options: EvalOptions | None = None) -> dict[str, Any]:
    """The family metrics of the checkpoint at `path` against the course-layout data root `data`, as the schema's
    `metrics` dict (with its protocol)."""
    options = options or EvalOptions()
    model, document = checkpoint.load(path)
    architecture, config = document["architecture"], model.config
    data = Path(data)
    sampling = _sampling_options(document, options)  # a bad --sampling.* fails now, before any other work
    if architecture == "vae":
        return _vae(model, data, options)
    if architecture in ("generator", "unet"):
        if config.image_size == 64:
            return _faces(Path(path), model, document, data, options)
        return _digits(model, document, data, options, sampling)
    if architecture == "uda_net":
        return _uda(model, document, data, options)
    if architecture == "classifier":
        return _classifier(model, document, data, options)
    raise ValueError(f"{path} is a {architecture} checkpoint, which `evaluate` does not measure")


def record(path: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Write measured metrics into the checkpoint's config.json through the schema (the weights are untouched).
    Generator and VAE metrics replace the old ones, or, measured at another seed under the same protocol, go to
    other_seeds; UDA and classifier accuracies are merged with what training recorded."""
    old = checkpoint.read_config(path).get("metrics") or {}
    protocol, old_protocol = metrics.get("protocol"), old.get("protocol")
    if protocol is None:
        checkpoint.update_metrics(path, metrics)
        return
    same_protocol = bool(old_protocol) and all(protocol.get(k) == old_protocol.get(k) for k in protocol if k != "seed")
    if same_protocol and protocol["seed"] != old_protocol["seed"]:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
        checkpoint.update_metrics(path, {"other_seeds": {**old.get("other_seeds", {}), str(protocol["seed"]): scalars}})
        return
    kept = {"other_seeds": old["other_seeds"]} if same_protocol and old.get("other_seeds") else {}
    checkpoint.update_metrics(path, {**metrics, **kept}, replace=True)


def _bar(total: int, what: str, options: EvalOptions) -> tqdm:
    return tqdm(total=total, desc=what, disable=not options.progress, leave=False)


def _round(metrics: dict[str, Any], digits: int = 5) -> dict[str, Any]:
    return clean_metrics({k: round(v, digits) if isinstance(v, float) else v for k, v in metrics.items()})


# ---------------------------------------------------------------- faces


def _faces(path: Path, model: torch.nn.Module, document: dict[str, Any], data: Path,
           options: EvalOptions) -> dict[str, Any]:
    """FID/KID of `samples` faces against face/<reference_split>; for an ACGAN with two labels also the judge's
    agreement with the requested label and the identity of smiling pairs."""
    from dlcv import service
    from dlcv.metrics import face_scores

    reference = data / "face" / options.reference_split
    if not reference.is_dir():
        raise FileNotFoundError(f"no real faces at {reference}; pass --data with a face/{options.reference_split} "
                                f"folder (python -m dlcv data prepare)")
    k = getattr(model.config, "num_classes", 0)
    judge = options.judge or str(checkpoint_root() / "smiling_classifier") if k else ""
    bar = _bar(3 if k == 2 else 2, f"evaluate {path.name}", options)
    metrics: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dlcv_evaluate_") as tmp:
        count = {"per_class": options.per_class(k)} if k else {"n": options.samples}  # conditional: N / K per label
        folder = service.sample_to_folder(path, Path(tmp) / "samples", seed=options.seed, **count)
        bar.update()
        if k:
            metrics.update(agreement(folder, judge))
        scores = face_scores(folder, reference, kid_subset_size=min(1000, options.samples),
                             cache_name=f"faces-{reference.resolve().name}", batch_size=options.batch_size)
        metrics.update(fid=scores["fid"], kid_mean=scores["kid_mean"], kid_std=scores["kid_std"])
        bar.update()
    if k == 2:
        metrics.update(pair_identity(model, options.pairs, options.seed, options.batch_size))
        bar.update()
    bar.close()
    protocol = Protocol(samples=options.samples, reference=f"face/{options.reference_split}", seed=options.seed,
                        judge=Path(judge).name if judge else "")
    return _round({**metrics, "protocol": asdict(protocol)})


def checkpoint_root() -> Path:
    from dlcv.service import checkpoints_root

    return checkpoints_root()


def agreement(folder: str | os.PathLike, classifier: str | os.PathLike) -> dict[str, Any]:
    """Share of samples {label}_{index}.png that `classifier` assigns to their label, overall and per label."""
    from dlcv.data.digits import read_image_folder
    from dlcv.metrics import accuracy, per_class_accuracy, predict_logits

    model, _ = checkpoint.load(classifier)
    images, names = read_image_folder(folder, image_size=None)
    labels = torch.tensor([int(name.split("_")[0]) for name in names])
    pred = predict_logits(model, images).argmax(1)
    per_label = per_class_accuracy(pred, labels, model.config.num_classes)
    return {"attribute_agreement": round(accuracy(pred, labels), 4),
            "attribute_agreement_per_label": {str(k): round(v, 4) for k, v in per_label.items()}}


@torch.no_grad()
def pair_identity(generator: torch.nn.Module, n: int, seed: int, batch_size: int = 50) -> dict[str, float]:
    """Mean cosine similarity of the Inception pool3 features of n smiling pairs (the same z with Smiling off and
    on: pair_same) against mismatched pairs (pair_other); pairs that stay one face score well above the others."""
    from dlcv.data.loaders import to_image_range
    from dlcv.inception import feature_extractor
    from dlcv.metrics import pair_similarity
    from dlcv.service import smiling_pairs

    extractor = feature_extractor(fused=True)
    features = []
    for images in smiling_pairs(generator, n, seed=seed):
        pixels = to_image_range(images).mul(255).round().byte()  # the extractor takes uint8, as in face_scores
        features.append(torch.cat([extractor(pixels[i:i + batch_size])[0] for i in range(0, n, batch_size)]))
    similarity = pair_similarity(*features)
    return {"pair_same": round(similarity["same"], 4), "pair_other": round(similarity["other"], 4)}


# ---------------------------------------------------------------- digits


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8, rounded the way torchvision.save_image writes PNGs (so scores match the files)."""
    from dlcv.data.loaders import to_image_range

    return to_image_range(images).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def reference_digits(data: str | os.PathLike, per_class: int = 100) -> torch.Tensor:
    """The first `per_class` MNIST-M test digits of each class (uint8): digit-FID's reference."""
    from dlcv.data.digits import read_digits

    test = read_digits(data, "mnistm", "test")
    idx = torch.cat([torch.nonzero(test.labels == c).flatten()[:per_class] for c in range(10)])
    return test.images[idx]


def generate_digit_images(model: torch.nn.Module, document: dict[str, Any], labels: torch.Tensor, seed: int,
                          progress=None, **sampling: Any) -> torch.Tensor:
    """Digits in [-1, 1], one per label: diffusion with the checkpoint's sampling defaults (overridable), or G."""
    from dlcv import service
    from dlcv.sampling import sample_gan

    if document["architecture"] == "unet":
        return service.generate_digits(model, document, labels, seed=seed, progress=progress, **sampling)[0]
    return sample_gan(model, len(labels), seed=seed, labels=labels)


def _sampling_options(document: dict[str, Any], options: EvalOptions) -> dict[str, Any]:
    """--sampling.KEY=VALUE of a diffusion checkpoint as sample keywords, checked against its schedule."""
    from dlcv.metadata import DIFFUSION_KEYS, check_sampling_for, parse_sampling_overrides, sampling_config

    if not options.sampling:
        return {}
    if document["architecture"] != "unet":
        raise ValueError(f"--sampling.* options apply to diffusion checkpoints only; drop them for a "
                         f"{document['architecture']} checkpoint")
    resolved = parse_sampling_overrides(options.sampling, sampling_config(document))
    check_sampling_for(document, resolved)
    return {k: v for k, v in asdict(resolved).items() if k in DIFFUSION_KEYS}


def _digits(model: torch.nn.Module, document: dict[str, Any], data: Path, options: EvalOptions,
            sampling: dict[str, Any]) -> dict[str, Any]:
    """The course classifier's accuracy (overall, per class) on samples/10 digits per class, drawn with `sampling`
    (the checked --sampling.* keywords), and digit-FID against 100 MNIST-M test digits per class."""
    from dlcv.metrics import digit_scores, embed

    per_class = options.per_class(10)
    classifier = checkpoint.load_course_classifier(options.course_classifier or course_classifier_path())
    labels = torch.arange(10).repeat_interleave(per_class)
    bar = _bar(len(labels), "sampling digits", options)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    images = generate_digit_images(model, document, labels, options.seed, progress=progress, **sampling)
    bar.close()
    scores = digit_scores(classifier, to_uint8(images), labels, embed(classifier, reference_digits(data)))
    protocol = Protocol(samples=len(labels), reference="digits/mnistm/test", seed=options.seed,
                        judge=COURSE_CLASSIFIER)
    return _round({"digit_accuracy": scores["accuracy"], "digit_fid": scores["digit_fid"],
                   "per_class_accuracy": {str(c): round(a, 4) for c, a in scores["per_class"].items()},
                   "protocol": asdict(protocol)}, 4)


# ---------------------------------------------------------------- VAE, UDA, classifiers


def _vae(model: torch.nn.Module, data: Path, options: EvalOptions) -> dict[str, Any]:
    """MSE of decode(mu) on face/val and face/test (pixels in [0, 1])."""
    from dlcv.data.faces import read_faces
    from dlcv.metrics import reconstruction_mse

    metrics: dict[str, Any] = {}
    splits = [s for s in ("val", "test") if (data / "face" / s).is_dir()]
    if not splits:
        raise FileNotFoundError(f"no faces under {data / 'face'}; pass --data with face/val (python -m dlcv data "
                                f"prepare)")
    sizes = {}
    for split in tqdm(splits, desc="VAE reconstructions", disable=not options.progress, leave=False):
        images = read_faces(data, split, image_size=model.config.image_size, resize=True).images
        metrics[f"{split}_mse"] = reconstruction_mse(model, images)
        sizes[split] = len(images)
    protocol = Protocol(samples=sizes[splits[0]], reference=f"face/{splits[0]}", seed=0)
    return _round({**metrics, "protocol": asdict(protocol)}, 6)


def _split_accuracy(model: torch.nn.Module, data: Path, domain: str, split: str) -> float | None:
    from dlcv.data.digits import read_digits
    from dlcv.metrics import accuracy, predict_logits

    if not (data / "digits" / domain / f"{split}.csv").is_file():
        return None
    digits = read_digits(data, domain, split, image_size=model.config.image_size, resize=True)
    images = digits.images
    if images.shape[1] != model.config.in_channels:  # grey domains for a colour model: replicate the channel
        images = images.expand(-1, model.config.in_channels, -1, -1)
    return accuracy(predict_logits(model, images).argmax(1), digits.labels)


def _uda(model: torch.nn.Module, document: dict[str, Any], data: Path, options: EvalOptions) -> dict[str, Any]:
    """Target test (and val) accuracy of a UDA model; source and target from its run, else from its name."""
    run_data = (document.get("run") or {}).get("data") or {}
    source, target = run_data.get("domain"), run_data.get("target_domain")
    if not target:
        raise ValueError("this UDA checkpoint records no run.data.target_domain; evaluate it with `python -m dlcv "
                         "eval CHECKPOINT --domain TARGET`")
    results = {f"target_{split}_acc": _split_accuracy(model, data, target, split)
               for split in tqdm(("val", "test"), desc="target accuracy", disable=not options.progress, leave=False)}
    if results["target_test_acc"] is None:
        raise FileNotFoundError(f"no {data / 'digits' / target / 'test.csv'}; prepare the target domain {target}")
    return _round({"source": source, "target": target, **results})


def _classifier(model: torch.nn.Module, document: dict[str, Any], data: Path,
                options: EvalOptions) -> dict[str, Any]:
    """Val and test accuracy on the data the classifier was trained for (a digits domain or a face attribute)."""
    from dlcv.config import DataConfig
    from dlcv.data.loaders import load_split
    from dlcv.metrics import accuracy, predict_logits

    run_data = (document.get("run") or {}).get("data") or {}
    config = model.config
    cfg = DataConfig(root=str(data), dataset=run_data.get("dataset", "digits"), domain=run_data.get("domain", "mnistm"),
                     attribute=run_data.get("attribute", ""), image_size=config.image_size, channels=config.in_channels)
    metrics = {}
    for split in tqdm(("val", "test"), desc="accuracy", disable=not options.progress, leave=False):
        try:
            images, labels = load_split(cfg, split)
        except (ValueError, FileNotFoundError) as err:
            log.info("%s split not measured: %s", split, err)
            continue
        metrics[f"{split}_accuracy"] = accuracy(predict_logits(model, images).argmax(1), labels)
    if not metrics:
        where = f"face attribute {cfg.attribute}" if cfg.attribute else f"digits/{cfg.domain}"
        raise FileNotFoundError(f"nothing measured: no val or test split of {where} under {data}; pass --data with "
                                f"that data (python -m dlcv data prepare)")
    return _round(metrics)


# ---------------------------------------------------------------- a run's FID against its training time

CURVE_NAME = "fid_curve.jsonl"


def fid_curve(run: str | os.PathLike, data: str | os.PathLike, options: EvalOptions | None = None) -> list[dict]:
    """FID/KID of every snapshot of a face GAN run (runs/<name>/snapshots/step_N), with the wall-clock training
    hours at step N from its metrics.jsonl (interpolated between log points). Results are kept in
    runs/<name>/fid_curve.jsonl, so a later call measures only the snapshots written since."""
    import json

    run = Path(run)
    snapshots = sorted(run.glob("snapshots/step_*"))
    if not snapshots:
        raise FileNotFoundError(f"{run} has no snapshots/step_* folders; train with --train.snapshot_every=N")
    times = {}
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("time_s") is not None:
                times[record["step"]] = record["time_s"]
    path = run / CURVE_NAME
    done = {r["step"]: r for r in map(json.loads, path.read_text().splitlines())} if path.is_file() else {}
    for folder in snapshots:
        step = int(folder.name.split("_")[-1])
        if step in done:
            continue
        metrics = evaluate(folder, data, options)
        done[step] = {"step": step, "fid": metrics["fid"], "kid_mean": metrics.get("kid_mean")}
        with path.open("a") as f:
            f.write(json.dumps(done[step]) + "\n")
    for step, record in done.items():  # hours from the log as it is now (a snapshot may fall between log points)
        seconds = _time_at(times, step)
        record["train_hours"] = None if seconds is None else round(seconds / 3600, 4)
    return [done[k] for k in sorted(done)]


def _time_at(times: dict[int, float], step: int) -> float | None:
    """Training seconds at `step` from the log's {step: time_s}, linear between the log points around it."""
    if step in times:
        return times[step]
    before = max((s for s in times if s < step), default=None)
    after = min((s for s in times if s > step), default=None)
    if before is None or after is None:
        return None
    return times[before] + (times[after] - times[before]) * (step - before) / (after - before)


def fit_fid_curve(records: list[dict], floor: float = 0.0) -> tuple[float, float, float] | None:
    """(a, b, c) of FID(h) = a + b h^-c fitted to a curve's {"train_hours", "fid"} records by least squares (scipy):
    a power law falling towards an asymptote a, kept at or above `floor` (the FID that real images score against the
    reference; no model goes below it). None with fewer than four points, where three parameters are not
    determined. A guide for planning, not a measurement: it assumes the curve keeps its shape past the last point."""
    import numpy as np
    from scipy.optimize import curve_fit

    points = sorted((r["train_hours"], r["fid"]) for r in records if r.get("train_hours"))
    if len(points) < 4:
        return None
    h, fid = (np.array(v, dtype=float) for v in zip(*points))
    try:
        (a, b, c), _ = curve_fit(lambda t, a, b, c: a + b * t ** -c, h, fid,
                                 p0=(max(floor, fid.min() * 0.8), fid[0] * h[0], 0.7),
                                 bounds=([floor, 0.0, 0.05], [max(fid.min(), floor + 1e-6), np.inf, 4.0]), maxfev=20000)
    except RuntimeError:  # no convergence
        return None
    return float(a), float(b), float(c)


def hours_to(fit: tuple[float, float, float], target: float) -> float | None:
    """Training hours at which the fitted curve reaches FID `target`; None when its floor a is at or above it."""
    a, b, c = fit
    return None if target <= a else (b / (target - a)) ** (1 / c)
