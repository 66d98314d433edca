"""The local checkpoint format: save(model, dir, meta) / load(dir) as config.json + model.safetensors, strict key/shape checks,
atomic folder writes; the course's own Classifier.pth loader."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_model

from dlcv import metadata
from dlcv.config import from_dict, to_dict
from dlcv.fileio import atomic_dir, listing, recover
from dlcv.models import architecture_of, build_model, model_config_class
from dlcv.models.classifier import Classifier, ClassifierConfig

FORMAT = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the Hub's model card (dlcv.hub.push writes it; a checkpoint folder may hold it)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says which file and why."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / AveragedModel wrappers, so saved keys carry no prefixes."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.optim.swa_utils.AveragedModel) or type(model).__name__ == "EMA":
        model = model.module  # training.common.EMA: hub sits below training, so it is matched by name
    return getattr(model, "_orig_mod", model)


def check_replaceable(directory: str | os.PathLike, architecture: str | None = None) -> None:
    """Refuse a checkpoint destination whose files a save would delete: the save swaps the whole folder, so an
    existing one may hold only what a checkpoint holds (a previous checkpoint is replaced; anything else is kept),
    and, when `architecture` is given, only a checkpoint of that architecture (a model is never swapped for a
    different kind of model by a mistyped --out)."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; give a folder for the checkpoint")
    others = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME))
    if others:
        raise FileExistsError(f"{directory} holds other files ({listing(others)}), which writing a checkpoint there "
                              f"would delete; give a new or empty folder (or an existing checkpoint) instead")
    try:
        theirs = json.loads((directory / CONFIG_NAME).read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):  # no or unreadable config.json: nothing a model could lose
        return
    if architecture and theirs and theirs != architecture:
        raise FileExistsError(f"{directory} holds a {theirs} checkpoint, which a {architecture} would replace; "
                              f"give a new folder for it (or delete that one first)")


def save(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write <directory>/config.json + model.safetensors in one atomic folder swap (check_replaceable first).

    `meta` adds top-level entries (run, metrics, schedule, ...) next to format/architecture/config.
    """
    model = unwrap(model)
    config = model.config
    check_replaceable(directory, architecture_of(config))
    document = {"format": FORMAT, "architecture": architecture_of(config), "config": to_dict(config)}
    document.update(meta or {})
    directory = Path(directory)
    check_metadata(document, directory / CONFIG_NAME)
    with atomic_dir(directory) as tmp:
        save_model(model, str(tmp / WEIGHTS_NAME))  # handles tied weights, unlike save_file
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder (a replace of it interrupted by a kill is finished first)."""
    recover(directory)
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).exists():
        raise CheckpointError(f"{directory} does not exist; give a checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    if not path.is_file():
        raise CheckpointError(f"{path} not found; a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        document = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download or re-save the checkpoint") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path} holds a JSON {type(document).__name__}, not the object a checkpoint writes; "
                              f"re-download or re-save the checkpoint")
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {document.get('format')!r}; this dlcv reads format {FORMAT}")
    document = metadata.upgrade(document)
    check_metadata(document, path)
    return document


def check_metadata(document: dict[str, Any], path: Path) -> None:
    """CheckpointError unless metrics, sampling and rebuild fit dlcv.metadata's schema."""
    try:
        metadata.check_document(document, str(path))
    except metadata.MetadataError as err:
        raise CheckpointError(f"{err}; fix that entry of {path.name} (or measure again with `python -m dlcv "
                              f"evaluate {path.parent} --record`)") from None


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from config.json and load model.safetensors strictly; returns (model in eval mode, meta)."""
    directory = Path(directory)
    document = read_config(directory)
    try:
        config = from_dict(model_config_class(document["architecture"]), document["config"])
    except (KeyError, TypeError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot rebuild the model config ({message})") from None
    check_config_values(config, directory / CONFIG_NAME)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found; copy the weights next to {CONFIG_NAME}")
    try:
        with torch.device("meta"):  # shapes only, no memory: a config that does not fit its weights stops here
            skeleton = build_model(document["architecture"], config)
    except Exception as err:  # noqa: BLE001 - the values passed check_config_values but the layers refuse them
        raise CheckpointError(f"{directory / CONFIG_NAME}: the model cannot be built from its config "
                              f"({_first_line(err)}); re-save the checkpoint") from None
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{weights} is not a readable safetensors file ({err}); re-download it") from None
    check_state_dict(skeleton, state, str(weights))
    model = build_model(document["architecture"], config)
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), document


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (torch's unpickling errors add several lines of advice)."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


SIZE_WORDS = ("width", "size", "channels", "dim", "mults")  # config fields that count something: at least 1


def check_config_values(config: Any, where: str | os.PathLike) -> None:
    """Refuse a hand-edited model config whose values have the wrong type or range (width "abc", -3, 2.5, true),
    one line naming the field, before any layer is built."""
    import dataclasses
    import math
    import typing

    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        least = 1 if any(word in field.name for word in SIZE_WORDS) else 0
        if hint is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
            want = f"an integer >= {least}"
        elif hint is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            want = "a finite number"
        elif hint is bool:
            ok, want = isinstance(value, bool), "true or false"
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[:1] == (int,):
            ok = isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and v >= least
                                                  for v in value)
            want = f"a list of integers >= {least}"
        else:
            continue
        if not ok:
            raise CheckpointError(f"{where}: config.{field.name} is {value!r}; it must be {want} (re-save the "
                                  f"checkpoint or restore the value it was trained with)")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors (before load_state_dict would)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:5]}")
        raise CheckpointError(f"{where} does not fit {type(model).__name__}: {'; '.join(parts)}. "
                              f"The weights were saved for a different architecture or config; "
                              f"use the config.json that came with them")


def weights_sha256(directory: str | os.PathLike) -> str:
    """sha256 of model.safetensors (what grading manifests record)."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_course_classifier(path: str | os.PathLike) -> Classifier:
    """Load the course's Classifier.pth safely (weights_only, CPU) into the rebuilt LeNet, in eval mode."""
    model = Classifier(ClassifierConfig(kind="lenet"))
    if not Path(path).is_file():
        raise FileNotFoundError(f"no course classifier at {path}; pass the path to Classifier.pth "
                                f"(here: ../shared/data/weights/dlcv_digit_classifier.pth)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zip files, non-torch files
        raise CheckpointError(f"{path} is not a loadable torch checkpoint ({_first_line(err)}); use the "
                              f"course's Classifier.pth") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; expected the course's Classifier.pth")
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def update_metrics(directory: str | os.PathLike, metrics: dict[str, Any], replace: bool = False) -> None:
    """Merge (or, with replace, set) measured metrics into a checkpoint's config.json, checked against the schema
    first (atomic rewrite; the weights are untouched)."""
    update_document(directory, lambda document: {
        **document, "metrics": metadata.clean_metrics({**({} if replace else document.get("metrics") or {}),
                                                       **metrics})})


def update_document(directory: str | os.PathLike, change) -> dict[str, Any]:
    """Rewrite a checkpoint's config.json as change(document), checked against the schema (atomic; weights untouched)."""
    from dlcv.fileio import atomic_write_text

    path = Path(directory) / CONFIG_NAME
    document = change(read_config(directory))
    check_metadata(document, path)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return document


def average(directories: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Uniform weight average of checkpoints of one architecture and config (snapshots of one run), saved to `out`.

    Averaging a GAN generator's snapshots along its trajectory lowers FID beyond its EMA (Yazici et al. 2019):
    the shipped Smiling ACGAN averages its snapshots at steps 2,000-3,500 (RESULTS.md). Floating tensors, batch-norm
    running statistics included, are averaged in float64; integer buffers (num_batches_tracked) come from the last
    checkpoint, as do run, trained_steps and the rest of its config.json, plus `averaged_from`. Earlier metrics
    are dropped: they describe other weights.
    """
    if len(directories) < 2:
        raise ValueError(f"give at least two checkpoints to average, got {len(directories)}")
    documents = [read_config(d) for d in directories]
    first = documents[0]
    for directory, document in zip(directories[1:], documents[1:]):
        if (document["architecture"], document["config"]) != (first["architecture"], first["config"]):
            raise CheckpointError(f"{directory} is a {document['architecture']} with config {document['config']}, "
                                  f"but {directories[0]} is a {first['architecture']} with {first['config']}; "
                                  f"average snapshots of one run only")
    models = [load(d)[0] for d in directories]
    states = [m.state_dict() for m in models]
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point():
            averaged[key] = (sum(state[key].double() for state in states) / len(states)).to(last.dtype)
        else:
            averaged[key] = last
    model = models[-1]
    model.load_state_dict(averaged, strict=True)
    meta = {k: v for k, v in documents[-1].items() if k not in ("format", "architecture", "config", "metrics")}
    meta["averaged_from"] = [str(d) for d in directories]
    meta["rebuild"] = [*documents[-1].get("rebuild", []),
                       metadata.command_of(["average", *map(str, directories), "--out", str(out)])]
    return save(model, out, meta)
