"""The Hugging Face Hub: push a checkpoint folder with a generated model card, pull one into the HF cache.
The local format itself (config.json + model.safetensors) is dlcv.checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dlcv.checkpoint import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load, read_config

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
             "```python", "from dlcv import checkpoint, hub", "", f'model, meta = checkpoint.load(hub.pull("{repo}"))', "```", "",
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

    from dlcv.config import flat_fields, override_text
    from dlcv.presets import PRESETS
    from dlcv.training.common import run_record  # a preset's method with every option, as a run records it

    if not run:
        return None, None
    wanted = flat_fields({k: v for k, v in run.items() if k not in ("family", "architecture")})
    candidates = {}
    for preset, cfg in PRESETS.items():
        if (cfg.family, cfg.architecture) == (run.get("family"), run.get("architecture")):
            have = flat_fields({k: v for k, v in run_record(cfg).items() if k not in ("family", "architecture")})
            candidates[preset] = {k: v for k, v in wanted.items()
                                  if k not in have or override_text(have[k]) != override_text(v)}
    if not candidates:
        return None, None
    preset = run.get("name") if run.get("name") in candidates else min(candidates, key=lambda p: len(candidates[p]))
    overrides = [shlex.quote(f"--{k}={override_text(v)}") for k, v in candidates[preset].items()]
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
