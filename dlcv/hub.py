"""Checkpoints: save(model, dir, meta) / load(dir) as config.json + model.safetensors, strict key/shape checks,
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

from dlcv.config import from_dict, to_dict
from dlcv.fileio import atomic_dir
from dlcv.models import architecture_of, build_model, model_config_class
from dlcv.models.classifier import Classifier, ClassifierConfig

FORMAT = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"  # the Hub's model card, written by push


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message says which file and why."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile / AveragedModel wrappers, so saved keys carry no prefixes."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.optim.swa_utils.AveragedModel) or type(model).__name__ == "EMA":
        model = model.module  # training.common.EMA: hub sits below training, so it is matched by name
    return getattr(model, "_orig_mod", model)


def check_replaceable(directory: str | os.PathLike) -> None:
    """Refuse a checkpoint destination whose files a save would delete: the save swaps the whole folder, so an
    existing one may hold only what a checkpoint holds (a previous checkpoint is replaced; anything else is kept)."""
    directory = Path(directory)
    if not directory.exists():
        return
    if not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; give a folder for the checkpoint")
    others = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME))
    if others:
        listed = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise FileExistsError(f"{directory} holds other files ({listed}), which writing a checkpoint there would "
                              f"delete; give a new or empty folder (or an existing checkpoint) instead")


def save(model: nn.Module, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write <directory>/config.json + model.safetensors in one atomic folder swap (check_replaceable first).

    `meta` adds top-level entries (run, metrics, schedule, ...) next to format/architecture/config.
    """
    check_replaceable(directory)
    model = unwrap(model)
    config = model.config
    document = {"format": FORMAT, "architecture": architecture_of(config), "config": to_dict(config)}
    document.update(meta or {})
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_model(model, str(tmp / WEIGHTS_NAME))  # handles tied weights, unlike save_file
        (tmp / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} not found; a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        document = json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); re-download or re-save the checkpoint") from None
    if document.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {document.get('format')!r}; this dlcv reads format {FORMAT}")
    return document


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from config.json and load model.safetensors strictly; returns (model in eval mode, meta)."""
    directory = Path(directory)
    document = read_config(directory)
    try:
        config = from_dict(model_config_class(document["architecture"]), document["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot rebuild the model config ({err})") from None
    model = build_model(document["architecture"], config)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found; copy the weights next to {CONFIG_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(f"{weights} is not a readable safetensors file ({err}); re-download it") from None
    check_state_dict(model, state, str(weights))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), document


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
        raise CheckpointError(f"{path} is not a loadable torch checkpoint ({err}); use the course's Classifier.pth") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; expected the course's Classifier.pth")
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.eval()


def update_metrics(directory: str | os.PathLike, metrics: dict[str, Any]) -> None:
    """Merge measured metrics into a checkpoint's config.json (atomic rewrite; the weights are untouched)."""
    from dlcv.fileio import atomic_write_text

    document = read_config(directory)
    document.setdefault("metrics", {}).update(metrics)
    atomic_write_text(Path(directory) / CONFIG_NAME, json.dumps(document, indent=2) + "\n")


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
    return save(model, out, meta)


# ---------------------------------------------------------------- Hugging Face Hub: push / pull

HUB_FILES = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]  # what push uploads and pull downloads, nothing else


class HubError(CheckpointError):
    """A Hub push or pull that failed; one line naming the repo (or file) and the fix, never the token."""


def model_card(directory: str | os.PathLike, repo_id: str | None = None) -> str:
    """README.md for the Hub (PyTorchModelHubMixin's layout): YAML front matter, then the data, metrics, architecture
    and training command that config.json records. Every number comes from config.json; a missing field says so."""
    from huggingface_hub import ModelCardData

    document = read_config(directory)
    run, metrics = document.get("run") or {}, document.get("metrics") or {}
    data, train_cfg = run.get("data") or {}, run.get("train") or {}
    name = run.get("name") or Path(directory).name
    repo = repo_id or f"<org>/{name}"
    source = data.get("domain") if data.get("dataset") == "digits" else data.get("dataset")
    datasets = [s for s in (source, data.get("target_domain")) if s]
    tags = list(dict.fromkeys(["dlcv", "pytorch", "safetensors", document.get("architecture"), run.get("family")]))
    front = ModelCardData(library_name="dlcv", tags=[t for t in tags if t], license="other", datasets=datasets or None)
    lines = ["---", front.to_yaml(original_order=["library_name", "tags", "license", "datasets"]), "---", "",
             f"# {name}", "",
             f"A dlcv `{document.get('architecture')}` checkpoint: `{CONFIG_NAME}` (architecture, "
             f"model config, training run, metrics) and `{WEIGHTS_NAME}` (weights, loaded with strict key and shape "
             "checks).", "",
             "```bash", f"python -m dlcv hub pull {repo}   # prints the local folder", "```", "",
             "```python", "from dlcv import hub", "", f'model, meta = hub.load(hub.pull("{repo}"))', "```", "",
             "## Training data", ""]
    if data:
        lines.append(f"- dataset `{data.get('dataset')}`"
                     + (f", domain `{data['domain']}`" if data.get("dataset") == "digits" else "")
                     + f", images {data.get('image_size')}x{data.get('image_size')} with {data.get('channels')} "
                       f"channel(s), in the course's on-disk layout (read from `{data.get('root')}`)")
        if data.get("target_domain"):
            lines.append(f"- unlabelled target domain `{data['target_domain']}`")
        if data.get("attribute"):
            lines.append(f"- labels: the face attribute `{data['attribute']}`")
    else:
        lines.append(f"Not recorded: {CONFIG_NAME} has no `run.data` entry, so the training data is unknown.")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append(f"None recorded: {CONFIG_NAME} has no `metrics` entry; this checkpoint has not been evaluated.")
    lines += ["", "## Architecture", "", f"`{document.get('architecture')}` built from this config:", "",
              "```json", json.dumps(document.get("config"), indent=2), "```"]
    if "schedule" in document:
        lines += ["", "Noise schedule:", "", "```json", json.dumps(document["schedule"], indent=2), "```"]
    lines += ["", "## Training", ""]
    if train_cfg:
        lines.append("- " + ", ".join(f"{k} {train_cfg[k]}" for k in ("steps", "batch_size", "lr", "betas",
                                      "weight_decay", "ema_decay", "seed") if k in train_cfg))
    if "trained_steps" in document:  # a run stopped early or resumed with another cap trains fewer than `steps`
        lines.append(f"- trained steps: {document['trained_steps']}")
    if document.get("averaged_from"):
        sources = document["averaged_from"]
        lines.append(f"- weights: the uniform average of {len(sources)} checkpoints of this run (`python -m dlcv "
                     "average`): " + "; ".join(f"`{s}`" for s in sources))
    command, preset = _train_command(run)
    if command:
        lines += [f"- command, rebuilt from {CONFIG_NAME}'s `run` as overrides of the preset `{preset}` "
                  "of the dlcv version that pushed it:", "", "```bash", command, "```"]
    elif run:
        lines.append(f"- command: no dlcv preset has family `{run.get('family')}` and architecture "
                     f"`{run.get('architecture')}`; the full run config is `run` in {CONFIG_NAME}")
    else:
        lines.append(f"- command: not recorded ({CONFIG_NAME} has no `run` entry)")
    return "\n".join(lines) + "\n"


def _train_command(run: dict[str, Any]) -> tuple[str | None, str | None]:
    """`python -m dlcv train <preset> --k=v ...` that rebuilds `run`: the nearest preset of the same family and
    architecture, plus an override for every field that differs. (None, None) when no preset fits."""
    import shlex

    from dlcv.presets import PRESETS

    def flat(value: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value}

    def text(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return str(value).lower()
        return ",".join(text(v) for v in value) if isinstance(value, (list, tuple)) else str(value)

    if not run:
        return None, None
    wanted = flat({k: v for k, v in run.items() if k not in ("family", "architecture")})
    candidates = {}
    for preset, cfg in PRESETS.items():
        if (cfg.family, cfg.architecture) == (run.get("family"), run.get("architecture")):
            have = flat({k: v for k, v in to_dict(cfg).items() if k not in ("family", "architecture")})
            candidates[preset] = {k: v for k, v in wanted.items() if k not in have or text(have[k]) != text(v)}
    if not candidates:
        return None, None
    preset = run.get("name") if run.get("name") in candidates else min(candidates, key=lambda p: len(candidates[p]))
    overrides = [shlex.quote(f"--{k}={text(v)}") for k, v in candidates[preset].items()]
    return " ".join(["python -m dlcv train", preset, *overrides]), preset


def _scrub(message: str, secret: str | None) -> str:
    """First line of `message`, with the token (if any) masked."""
    line = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return line.replace(secret, "***") if secret else line


def push(directory: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         endpoint: str | None = None) -> str:
    """Upload config.json + model.safetensors + a generated README.md to the Hub model repo `repo_id` in one commit
    (creating the repo if needed); returns the commit URL. The token is `token` or huggingface_hub's own lookup
    (HF_TOKEN, then `hf auth login`); it is never logged or put in an error message."""
    from httpx2 import TransportError
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    directory = Path(directory)
    load(directory)  # strict: never publish a folder that would not load back
    card = model_card(directory, repo_id)
    secret = token or get_token()
    if not secret:
        raise HubError(f"no Hugging Face token to push {repo_id}; set HF_TOKEN to a write token "
                       "(https://huggingface.co/settings/tokens) or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=secret)
    operations = [CommitOperationAdd(CONFIG_NAME, str(directory / CONFIG_NAME)),
                  CommitOperationAdd(WEIGHTS_NAME, str(directory / WEIGHTS_NAME)),
                  CommitOperationAdd(CARD_NAME, card.encode("utf-8"))]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations, commit_message=f"Upload {directory.name} with dlcv")
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        fixes = {401: "set HF_TOKEN to a valid write token (https://huggingface.co/settings/tokens)",
                 403: "use a token whose account or organisation may write to that namespace",
                 404: "check the <org>/<name> spelling and that the token may create repos there"}
        raise HubError(f"pushing {directory} to {repo_id} on {api.endpoint} failed (HTTP {status}: "
                       f"{_scrub(err.server_message or str(err), secret)}); "
                       f"{fixes.get(status, 'retry, or check --endpoint / HF_ENDPOINT')}") from None
    except (OfflineModeIsEnabled, TransportError) as err:
        raise HubError(f"cannot reach {api.endpoint} to push {repo_id} ({type(err).__name__}); check the network, "
                       f"--endpoint / HF_ENDPOINT, and unset HF_HUB_OFFLINE") from None
    return info.commit_url


def pull(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
         endpoint: str | None = None) -> Path:
    """Download config.json, model.safetensors and README.md of a Hub model repo into the Hugging Face cache and
    return that folder (then `load(folder)`). With HF_HUB_OFFLINE=1 huggingface_hub serves it from the cache."""
    from httpx2 import TransportError
    from huggingface_hub import constants, get_token, snapshot_download
    from huggingface_hub.errors import (HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"{repo_id}@{revision}" if revision else repo_id
    server = endpoint or constants.ENDPOINT
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                                        allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise HubError(f"no model repo {repo_id} on {server} (or it is private/gated and HF_TOKEN cannot read it); "
                       "check the <org>/<name> spelling and the token") from None
    except RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r}; pass an existing branch, tag or commit") from None
    except LocalEntryNotFoundError:
        if constants.is_offline_mode():
            raise HubError(f"{where} is not in the Hub cache {cache} and HF_HUB_OFFLINE=1 forbids downloading it; "
                           "pull it once online, or pass the --cache-dir that holds it") from None
        raise HubError(f"cannot reach {server} and {where} is not in the Hub cache {cache}; check the network "
                       "and --endpoint / HF_ENDPOINT") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        fix = "set HF_TOKEN to a valid token, or unset it" if status == 401 else "retry, or check --endpoint"
        raise HubError(f"pulling {where} from {server} failed (HTTP {status}: "
                       f"{_scrub(err.server_message or str(err), get_token())}); {fix}") from None
    except TransportError as err:
        raise HubError(f"cannot reach {server} to pull {where} ({type(err).__name__}); check the network "
                       "and --endpoint / HF_ENDPOINT") from None
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise HubError(f"{where} has no {name}, so it is not a dlcv checkpoint repo; push one with "
                           "`python -m dlcv hub push checkpoints/<name> --repo <org>/<name>`")
    read_config(folder)  # format check now, so a foreign config.json fails here and not at load time
    return folder
