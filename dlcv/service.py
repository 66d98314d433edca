"""Demo and grading facade: find checkpoints (checkpoints/ or Hub repos), load them, and every operation the demo
pages offer (faces, smiling pairs, interpolation, VAE reconstruction, digits with the reverse process, adaptation
side by side, figures, downloads). Pure functions over models and images; no Streamlit or Gradio here."""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from dlcv import catalog as model_catalog
from dlcv import checkpoint, hub
# the demo pages read the roles through the service
from dlcv.catalog import (DIGIT_DIFFUSION, DIGIT_GAN, FACE_GAN_ORDER, FACE_VAE, GREY_DOMAINS,  # noqa: F401
                          SMILING_CLASSIFIER, SMILING_GAN)
from dlcv.config import MAX_SEED
from dlcv.data.images import eight_bit
from dlcv.data.loaders import to_model_range
from dlcv.metadata import SELECTION_NAMES

DIGIT_LABELS = [str(d) for d in range(10)]
SAMPLERS = ("dpm++2m", "ddim", "ddpm")  # the diffusion samplers the demo offers (all of dlcv.metadata.Sampler)
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger images are refused before decoding (decompression bombs)

log = logging.getLogger(__name__)


def checkpoints_root() -> Path:
    """$DLCV_CHECKPOINTS, else the repository's checkpoints/ folder."""
    return Path(os.environ.get("DLCV_CHECKPOINTS", Path(__file__).resolve().parents[1] / "checkpoints"))


@dataclass
class ModelInfo:
    """What the demo lists about one checkpoint folder."""

    name: str
    path: Path
    architecture: str
    family: str
    metrics: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the model config from config.json
    source: str = ""  # where the folder came from: a checkpoints folder, or "hub:<org>/<name>"


def list_models(root: str | Path | None = None) -> list[ModelInfo]:
    """Every loadable-looking checkpoint folder under `root` (config.json + model.safetensors), sorted by name."""
    root = Path(root) if root else checkpoints_root()
    infos = []
    for folder in sorted(p for p in root.glob("*") if (p / checkpoint.CONFIG_NAME).is_file()) if root.is_dir() else []:
        try:
            document = checkpoint.read_config(folder)
        except checkpoint.CheckpointError:
            continue
        infos.append(_info(folder.name, folder, document, str(root)))
    return infos


def _info(name: str, folder: Path, document: dict[str, Any], source: str) -> ModelInfo:
    run = document.get("run") or {}
    return ModelInfo(name=name, path=folder, architecture=document.get("architecture", "?"),
                     family=run.get("family", document.get("architecture", "?")),
                     metrics=document.get("metrics") or {}, labels=class_labels(document),
                     config=document.get("config") or {}, source=source)


def class_labels(document: dict[str, Any]) -> list[str]:
    """Human names of a classifier's outputs: digits, or not-/attribute for a face attribute classifier."""
    attribute = document.get("run", {}).get("data", {}).get("attribute", "")
    n = document.get("config", {}).get("num_classes", 10)
    if attribute and n == 2:
        return [f"not {attribute}", attribute]
    return DIGIT_LABELS[:n] if n <= 10 else [str(i) for i in range(n)]


def load(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint folder on CPU (callers cache it: st.cache_resource, functools.cache)."""
    return checkpoint.load(path)


def fit_image(image: Image.Image, size: int, channels: int) -> tuple[Image.Image, str]:
    """Convert an uploaded image to the model's size and channels; the note says what was changed."""
    changes = []
    mode = "RGB" if channels == 3 else "L"
    if image.mode != mode:
        changes.append(f"{image.mode} -> {mode}")
        image = image.convert(mode)
    if image.size != (size, size):
        changes.append(f"{image.size[0]}x{image.size[1]} -> {size}x{size}")
        image = image.resize((size, size), Image.BILINEAR)
    return image, ("converted " + ", ".join(changes)) if changes else ""


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a (1, C, H, W) tensor in [-1, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy
    x = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)[None]  # (H, W, C) -> (1, C, H, W)
    return to_model_range(x)


def input_shape(model: torch.nn.Module) -> tuple[int, int]:
    """(image_size, channels) a model takes: classifiers say in_channels, generators and VAEs say channels."""
    config = model.config
    return config.image_size, getattr(config, "in_channels", getattr(config, "channels", 3))


@torch.no_grad()
def classify(model: torch.nn.Module, image: Image.Image) -> tuple[np.ndarray, str]:
    """Class probabilities of one image, and the conversion note from fit_image."""
    image, note = fit_image(image, *input_shape(model))
    probs = torch.softmax(model(image_to_tensor(image)).float(), dim=1)[0]
    return probs.numpy(), note


def generate_digits(model: torch.nn.Module, document: dict[str, Any], labels: torch.Tensor, seed: int = 0,
                    sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                    guidance: float | None = None, keep: tuple[int, ...] = (), progress=None,
                    guidance_interval: tuple[int, int] | None = None, uncond_every: int | None = None):
    """Class-conditional digits in [-1, 1] from a diffusion checkpoint; unset options use the checkpoint's own
    sampling defaults. Returns (images, {t: x_t}) like sampling.sample_diffusion."""
    from dlcv.metadata import sampling_config
    from dlcv.sampling import sample_diffusion

    if document["architecture"] != "unet":
        raise ValueError(f"{document['architecture']} checkpoints do not generate with diffusion; use a unet one")
    s = sampling_config(document, sampler=sampler, steps=steps, eta=eta, guidance=guidance,
                        guidance_interval=guidance_interval, uncond_every=uncond_every)
    return sample_diffusion(model, noise_schedule(document), labels, seed=seed, sampler=s.sampler, steps=s.steps,
                            eta=s.eta, guidance=s.guidance, guidance_interval=s.guidance_interval,
                            uncond_every=s.uncond_every, keep=keep, progress=progress)


def noise_schedule(document: dict[str, Any]):
    """The NoiseSchedule a diffusion checkpoint was trained with (its config.json `schedule`)."""
    from dlcv.config import from_dict
    from dlcv.diffusion import NoiseSchedule, ScheduleConfig

    return NoiseSchedule(from_dict(ScheduleConfig, document["schedule"]))


def sampling_defaults(document: dict[str, Any]):
    """The checkpoint's SamplingConfig (dlcv.metadata.sampling_config): what the demo's widgets start from."""
    from dlcv.metadata import sampling_config

    return sampling_config(document)


def _refuse_options(options: dict[str, Any], what: str) -> None:
    unused = [k for k, v in options.items() if v is not None]
    if unused:
        verb, them = ("applies", "it") if len(unused) == 1 else ("apply", "them")
        raise ValueError(f"{', '.join(unused)} {verb} to diffusion checkpoints only; drop {them} for {what}")


def sample_to_folder(checkpoint: str | Path, out: str | Path, per_class: int | None = None, n: int | None = None,
                     seed: int = 0, force: bool = False, **options: Any) -> Path:
    """Write generated images in the course's names: {digit}_{001..K}.png (per_class) or 0000.png ... (n).

    Diffusion checkpoints take sampler/steps/eta/guidance options; unset ones use the checkpoint's defaults.
    """
    from dlcv.sampling import sample_gan
    from dlcv.viz import check_out_folder, digit_names, write_image_folder

    count = per_class if per_class is not None else n
    if count is None or count < 1:
        raise ValueError(f"--{'per-class' if per_class is not None else 'n'} must be at least 1, got {count}")
    check_out_folder(out, force)  # before sampling, which can take minutes
    model, document = load(checkpoint)
    num_classes = getattr(model.config, "num_classes", 0)
    architecture = document["architecture"]
    if architecture not in ("unet", "generator", "vae"):
        raise ValueError(f"{checkpoint} is a {architecture}, which does not generate images; "
                         f"use a diffusion (unet), GAN (generator) or VAE checkpoint")
    if per_class is not None:
        if num_classes <= 0:
            raise ValueError(f"{checkpoint} is unconditional; use --n instead of --per-class")
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        names = digit_names(per_class, num_classes)
    else:
        if num_classes > 0:
            raise ValueError(f"{checkpoint} is class-conditional; use --per-class instead of --n")
        labels, names = None, [f"{i:04d}.png" for i in range(n)]
    if architecture == "unet":
        images, _ = generate_digits(model, document, labels, seed=seed, **options)
    elif architecture == "vae":
        from dlcv.sampling import sample_vae

        _refuse_options(options, "a VAE")
        images = sample_vae(model, len(names), seed=seed, prior=latent_prior(checkpoint))
    else:
        _refuse_options(options, "a GAN")
        images = sample_gan(model, len(names), seed=seed, labels=labels)
    return write_image_folder(images, names, out, force=force)


# ---------------------------------------------------------------- which checkpoints the demo can use

class ModelMissing(LookupError):
    """A checkpoint the demo wants is not there; the message says how to get it."""


@dataclass
class Catalog:
    """The checkpoints the demo can use, by name, and notes about any that could not be fetched."""

    models: dict[str, ModelInfo]
    notes: list[str] = field(default_factory=list)

    def get(self, name: str) -> ModelInfo:
        """The named checkpoint, or ModelMissing with the command that makes it (also when a role's folder holds
        another kind of model, which the demo's page for that role cannot run)."""
        if name not in self.models:
            raise ModelMissing(missing_note(name))
        info = self.models[name]
        if name in ROLE_KINDS:
            architecture, num_classes = ROLE_KINDS[name]
            have = info.config.get("num_classes") or 0
            if info.architecture != architecture or (num_classes is not None and have != num_classes):
                held, wanted = info.architecture, architecture
                if num_classes is not None:
                    held, wanted = f"{held} with num_classes={have}", f"{wanted} with num_classes={num_classes}"
                raise ModelMissing(missing_note(name, f"{info.path} holds a {held} checkpoint, not a {wanted}"))
        return info

    def face_generators(self) -> list[ModelInfo]:
        """Unconditional 64x64 generators: method A (DCGAN) and B (SNGAN) first."""
        found = [m for m in self.models.values() if m.architecture == "generator"
                 and m.config.get("image_size") == 64 and not m.config.get("num_classes")]
        order = {name: i for i, name in enumerate(FACE_GAN_ORDER)}
        return sorted(found, key=lambda m: (order.get(m.name, len(order)), m.name))

    def uda_pairs(self) -> dict[str, dict[str, ModelInfo]]:
        """UDA checkpoints grouped as {"source -> target": {method: info}}: pairs and methods in the catalog's order
        (dlcv.catalog.uda_pairs)."""
        return {f"{pair.source}{PAIR_SEPARATOR}{pair.target}": {m: self.models[n] for m, n in pair.methods.items()}
                for pair in model_catalog.uda_pairs(self.models).values()}


PAIR_SEPARATOR = " -> "  # the demo's pair labels: "source -> target"
# what the demo's pages run each role's checkpoint as: (architecture, num_classes or None for any)
ROLE_KINDS: dict[str, tuple[str, int | None]] = {
    FACE_GAN_ORDER[0]: ("generator", None), FACE_GAN_ORDER[1]: ("generator", None), SMILING_GAN: ("generator", 2),
    FACE_VAE: ("vae", None), SMILING_CLASSIFIER: ("classifier", 2), DIGIT_DIFFUSION: ("unet", 10),
    DIGIT_GAN: ("generator", 10)}


def pair_target(pair: str) -> str:
    """The target domain of a uda_pairs() label "source -> target"."""
    return pair.split(PAIR_SEPARATOR)[-1]


def missing_note(name: str, why: str = "") -> str:
    """One line saying that checkpoint `name` is missing (or `why` it cannot be used) and how to get it."""
    where = f"{checkpoints_root()}/{name}"
    repos = hub_repos()
    hub_part = f" or in the Hub repos ({', '.join(repos)})" if repos else ""
    uda = model_catalog.parse_uda_name(name)
    if uda:
        how = (f"train it with `python -m dlcv train uda_{uda.method} --data.domain={uda.source} "
               f"--data.target_domain={uda.target} --out checkpoints/{name}`")
    else:
        how = f"train it with `python -m dlcv train {name} --out checkpoints/{name}`"
    why = why or f"no checkpoint in {where}{hub_part}"
    return f"`{name}` is not available ({why}); {how}, or pull it with " \
           f"`python -m dlcv hub pull <org>/{name}`."


def hub_repos() -> list[str]:
    """Hub model repos named in $DLCV_HUB_REPOS (comma or space separated <org>/<name>), in order."""
    return [r for r in re.split(r"[,\s]+", os.environ.get("DLCV_HUB_REPOS", "")) if r]


def catalog(root: str | Path | None = None, repos: list[str] | None = None, endpoint: str | None = None) -> Catalog:
    """The checkpoints in `root` (default checkpoints_root()) plus the Hub repos (default hub_repos()), pulled
    into the Hugging Face cache (from `endpoint`, default HF_ENDPOINT or the Hub); a repo that cannot be pulled
    leaves a note, and the local folder of that name, if any, is used."""
    models = {m.name: m for m in list_models(root)}
    notes = []
    for repo in hub_repos() if repos is None else repos:
        name = repo.rsplit("/", 1)[-1]
        try:
            folder = hub.pull(repo, endpoint=endpoint)
            models[name] = _info(name, folder, checkpoint.read_config(folder), f"hub:{repo}")
        except checkpoint.CheckpointError as err:  # HubError included
            fallback = "using the local copy" if name in models else "not available"
            notes.append(f"{repo}: {err} ({fallback})")
            log.warning("hub pull of %s failed: %s", repo, err)
    return Catalog(models, notes)


@functools.lru_cache(maxsize=32)
def load_cached(path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """load(path), kept for the process (Gradio's cache; Streamlit wraps load in st.cache_resource instead)."""
    return load(path)


# ---------------------------------------------------------------- faces

def check_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed outside 0..MAX_SEED (the CLI's range) in one line, before torch overflows or wraps it."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name}={seed!r} is out of range; give a whole number from 0 to {MAX_SEED}")


def _z(model: torch.nn.Module, seed: int, n: int) -> torch.Tensor:
    """The latent z_i of images 0..n-1 of a run seeded `seed`: the same draws sample_gan makes (seed + i)."""
    from dlcv.sampling import image_generators, per_image_noise

    return per_image_noise(image_generators(seed, 0, n), (model.z_dim,))  # (n, z_dim); G and VAE both say z_dim


@torch.no_grad()
def _decode(model: torch.nn.Module, document: dict[str, Any], z: torch.Tensor, label: int | None = None,
            ) -> torch.Tensor:
    """Images in [-1, 1] from latents: G(z, y) for a generator, decode(z) for a VAE."""
    model.eval()
    if document["architecture"] == "vae":
        return model.decode(z).float().clamp(-1, 1)
    y = torch.full((len(z),), int(label or 0), dtype=torch.long) if model.config.num_classes > 0 else None
    return model(z, y).float().clamp(-1, 1)


def generate_faces(model: torch.nn.Module, document: dict[str, Any], n: int, seed: int = 0,
                   truncation: float | None = None, temperature: float = 1.0, label: int | None = None,
                   prior: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1] from a GAN generator (with optional truncation; `label` for ACGAN) or a
    VAE (z ~ N(0, temperature^2 I), or the fitted `prior` of latent_prior(folder)). Image i uses seed + i, as
    sample_gan does."""
    from dlcv.sampling import sample_gan

    check_seed(seed)
    architecture = document["architecture"]
    if architecture == "vae":
        try:
            from dlcv.sampling import sample_vae
        except ImportError:  # a dlcv without the VAE sampler: the same z draws, decoded here
            return _decode(model, document, _z(model, seed, n) * temperature)
        return sample_vae(model, n, seed=seed, temperature=temperature, prior=prior)
    if architecture != "generator":
        raise ValueError(f"a {architecture} checkpoint does not generate faces; pick a generator or a vae")
    labels = torch.full((n,), int(label or 0), dtype=torch.long) if model.config.num_classes > 0 else None
    return sample_gan(model, n, seed=seed, labels=labels, truncation=truncation)


def latent_prior(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The fitted latent density stored in a VAE checkpoint folder (sampling.LATENT_PRIOR_NAME), else None: N(0, I)."""
    from safetensors.torch import load_file

    from dlcv.sampling import LATENT_PRIOR_NAME

    path = Path(folder) / LATENT_PRIOR_NAME
    return load_file(path) if path.is_file() else None


def smiling_pairs(generator: torch.nn.Module, n: int, seed: int = 0, truncation: float | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(not smiling, smiling): the same z_i with label 0 and with label 1 from an ACGAN with num_classes=2."""
    from dlcv.sampling import sample_gan

    check_seed(seed)
    if generator.config.num_classes != 2:
        raise ValueError(f"smiling pairs need an ACGAN with num_classes=2 (label 1 = Smiling); this generator "
                         f"has num_classes={generator.config.num_classes}")
    zeros, ones = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    return (sample_gan(generator, n, seed=seed, labels=zeros, truncation=truncation),
            sample_gan(generator, n, seed=seed, labels=ones, truncation=truncation))


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows z0 and z1 at fractions t (K,) -> (K, D) (Shoemake 1985; White 2016
    for GAN latents): stays near the shell where Gaussian z lives, unlike lerp through the low-norm middle."""
    omega = torch.arccos(torch.clamp(torch.dot(z0 / z0.norm(), z1 / z1.norm()), -1.0, 1.0))
    if omega.abs() < 1e-6:  # (nearly) parallel: slerp -> lerp
        return torch.lerp(z0[None], z1[None], t[:, None])
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def interpolate(model: torch.nn.Module, document: dict[str, Any], seed_a: int, seed_b: int, steps: int = 8,
                mode: str = "slerp", label: int | None = None) -> torch.Tensor:
    """(steps, C, H, W) images along the path from the z of seed_a's first image to seed_b's (GAN or VAE)."""
    if document["architecture"] not in ("generator", "vae"):
        raise ValueError(f"a {document['architecture']} checkpoint has no latent space to interpolate; pick a "
                         f"generator or a vae")
    if mode not in ("slerp", "lerp"):
        raise ValueError(f"mode={mode!r}; choose 'slerp' or 'lerp'")
    check_seed(seed_a, "seed A")
    check_seed(seed_b, "seed B")
    if steps < 2:
        raise ValueError(f"steps={steps}: an interpolation needs at least 2 images (the two ends)")
    z0, z1 = _z(model, seed_a, 1)[0], _z(model, seed_b, 1)[0]
    t = torch.linspace(0, 1, steps)
    z = slerp(z0, z1, t) if mode == "slerp" else torch.lerp(z0[None], z1[None], t[:, None])  # (steps, z_dim)
    return _decode(model, document, z, label)


@torch.no_grad()
def reconstruct(vae: torch.nn.Module, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(input, reconstruction decode(mu)), each (1, C, H, W) in [-1, 1], and the conversion note. Decoding the
    posterior mean makes the reconstruction deterministic."""
    image, note = fit_image(image, *input_shape(vae))
    x = image_to_tensor(image)
    vae.eval()
    mu, _logvar = vae.encode(x)
    return x, vae.decode(mu).float().clamp(-1, 1), note


@torch.no_grad()
def attribute_probability(classifier: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """P(class 1) of each image (N, C, H, W) in [-1, 1]: e.g. P(Smiling) from smiling_classifier."""
    classifier.eval()
    return torch.softmax(classifier(images).float(), dim=1)[:, 1].numpy()


# ---------------------------------------------------------------- digits

def reverse_keep(sampler: str, steps: int, schedule, frames: int = 50) -> tuple[int, ...]:
    """Timesteps whose x_t to keep for the reverse-process animation: every DDIM/DPM-Solver step (or `frames` of them),
    `frames` evenly spaced ones of a full DDPM run. `schedule` is the checkpoint's NoiseSchedule (noise_schedule)."""
    from dlcv.diffusion import sampler_timesteps

    timesteps = sampler_timesteps(sampler, schedule, steps)
    if len(timesteps) <= frames:
        return tuple(timesteps)
    return tuple(timesteps[round(i * (len(timesteps) - 1) / (frames - 1))] for i in range(frames))


def digits(model: torch.nn.Module, document: dict[str, Any], digit: int | None, count: int, seed: int = 0,
           guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
           frames: int = 50, progress=None) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """`count` images of `digit` (count, C, H, W) in [-1, 1], and the reverse process as [(t, x_t), ...] from
    x_T to x_0 (diffusion only; a GAN has none). Unset diffusion options use the checkpoint's defaults.
    digit=None gives one image of every digit 0..9 (count is ignored)."""
    from dlcv.sampling import sample_gan

    check_seed(seed)
    num_classes = model.config.num_classes
    if digit is None:
        labels = torch.arange(num_classes)
        count = num_classes
    elif not 0 <= digit < num_classes:
        raise ValueError(f"digit={digit}; this checkpoint knows digits 0..{num_classes - 1}")
    else:
        labels = torch.full((count,), digit, dtype=torch.long)
    if document["architecture"] == "generator":
        images = sample_gan(model, count, seed=seed, labels=labels)
        if progress is not None:
            progress(1, 1)
        return images, []
    from dlcv.metadata import sampling_config

    resolved = sampling_config(document, sampler=sampler, steps=steps)
    sampler, steps = resolved.sampler, resolved.steps
    keep = reverse_keep(sampler, steps, noise_schedule(document), frames)
    images, kept = generate_digits(model, document, labels, seed=seed, sampler=sampler, steps=steps,
                                   guidance=guidance, keep=keep, progress=progress)
    return images, [(t, kept[t]) for t in keep] + [(-1, images)]  # t = -1: the final x_0


# ---------------------------------------------------------------- adaptation and figures

def compare(models: dict[str, torch.nn.Module], image: Image.Image) -> tuple[dict[str, np.ndarray], str]:
    """Each model's class probabilities for one image ({method: (K,)}), and the conversion note."""
    probs, notes = {}, set()
    for method, model in models.items():
        probs[method], note = classify(model, image)
        notes.add(note)
    return probs, "; ".join(sorted(n for n in notes if n))


def figures_root() -> Path:
    """Where the figures are: $DLCV_FIGURES, else the repository's docs/figures folder."""
    return Path(os.environ.get("DLCV_FIGURES", Path(__file__).resolve().parents[1] / "docs" / "figures"))


def tsne_figures(pair: str | None = None, folder: str | Path | None = None) -> list[Path]:
    """t-SNE PNGs (docs/figures/tsne_*.png); with pair "src -> tgt", those naming src_to_tgt if any, else all."""
    folder = Path(folder) if folder else figures_root()
    figures = sorted(folder.glob("tsne_*.png")) if folder.is_dir() else []
    if pair:
        key = pair.replace(PAIR_SEPARATOR, "_to_")
        return [f for f in figures if key in f.stem] or figures
    return figures


def report_path() -> Path:
    """The grading report: $DLCV_REPORT, else runs/grading/report.md."""
    default = Path(__file__).resolve().parents[1] / "runs" / "grading" / "report.md"
    return Path(os.environ.get("DLCV_REPORT", default))


def scalar_metrics(info: ModelInfo) -> dict[str, Any]:
    """The metrics of a checkpoint that fit in one table cell (nested tables are left to RESULTS.md)."""
    return {k: v for k, v in info.metrics.items() if isinstance(v, (int, float, str))}


# the adaptation figures the demo and the README show, each under one name (the UDA metrics keep more: the last
# step's accuracy, the steps, the speed)
UDA_COLUMNS = (("target_test_acc", "target test accuracy"), ("selected_by", "checkpoint chosen by"),
               ("labelled_val_acc", "labelled val accuracy"),
               ("oracle_target_test_acc", "best target test accuracy of any evaluated step (oracle, never used)"))


def uda_rows(methods: dict[str, ModelInfo]) -> list[dict[str, Any]]:
    """One row per method of a pair: the shipped checkpoint's target test accuracy and how it was chosen."""
    rows = [{"method": method, "checkpoint": info.name,
             **{name: info.metrics.get(key) for key, name in UDA_COLUMNS}} for method, info in methods.items()]
    for row in rows:  # the rule's name, not its config key
        row["checkpoint chosen by"] = SELECTION_NAMES.get(row["checkpoint chosen by"], row["checkpoint chosen by"])
    return rows


# ---------------------------------------------------------------- uploads and downloads

class UploadError(ValueError):
    """An upload the demo refuses; the message says what to upload instead."""


def open_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """Decode uploaded bytes as an image, refusing files that are too big, too many pixels, or not images."""
    if len(data) > max_bytes:
        raise UploadError(f"that file is {len(data) / 2**20:.1f} MB; upload an image of at most "
                          f"{max_bytes / 2**20:.0f} MB")
    try:
        with warnings.catch_warnings():  # the pixel count is checked just below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise UploadError(f"that image is {image.width}x{image.height} pixels; upload one of at most "
                              f"{MAX_UPLOAD_PIXELS} pixels (e.g. 4096x4096)")
        image.load()
    except Image.DecompressionBombError:  # Pillow refuses to open it at all: over 2 x MAX_IMAGE_PIXELS
        raise UploadError(f"that image has more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; upload one of at "
                          f"most {MAX_UPLOAD_PIXELS} pixels (e.g. 4096x4096)") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, UploadError):
            raise
        raise UploadError("that file is not a readable image; upload a PNG or JPEG") from None
    try:
        image = ImageOps.exif_transpose(image)  # a phone photo upright, as its viewer shows it
    except (OSError, SyntaxError, ValueError):  # a damaged EXIF block: the pixels as stored (and as shown)
        pass
    try:
        return eight_bit(image)
    except ValueError as err:
        raise UploadError(f"that image {err}, and upload it again") from None


def open_upload_path(path: str | os.PathLike, max_bytes: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """open_upload for a file an app server saved (Gradio): the size is checked on disk before a byte is read."""
    size = os.stat(path).st_size
    if size > max_bytes:
        raise UploadError(f"that file is {size / 2**20:.1f} MB; upload an image of at most {max_bytes / 2**20:.0f} MB")
    with open(path, "rb") as f:
        return open_upload(f.read(), max_bytes)


def to_pil(images: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    """(N, C, H, W) in [-1, 1] -> N PIL images, each enlarged `scale` times (nearest, so pixels stay crisp)."""
    from dlcv.data.loaders import to_image_range

    arrays = to_image_range(images.float()).mul(255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    pils = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]
    return [p.resize((p.width * scale, p.height * scale), Image.NEAREST) for p in pils] if scale > 1 else pils


def grid_png(images: torch.Tensor, nrow: int = 8) -> bytes:
    """One PNG (bytes) of the images in a grid, `nrow` per row."""
    from torchvision.utils import make_grid

    grid = make_grid(images.float(), nrow=nrow, padding=2, pad_value=1.0)  # still in [-1, 1]
    buffer = io.BytesIO()
    to_pil(grid[None])[0].save(buffer, format="PNG")
    return buffer.getvalue()


def zip_pngs(images: torch.Tensor, prefix: str = "image") -> bytes:
    """A zip (bytes) of one PNG per image: <prefix>_000.png, <prefix>_001.png, ..."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, pil in enumerate(to_pil(images)):
            png = io.BytesIO()
            pil.save(png, format="PNG")
            archive.writestr(f"{prefix}_{i:03d}.png", png.getvalue())
    return buffer.getvalue()


def reverse_gif(frames: list[tuple[int, torch.Tensor]], nrow: int = 10, scale: int = 3,
                duration_ms: int = 80) -> bytes:
    """An animated GIF (bytes) of the reverse process: one grid of x_t per kept t, then x_0 held longer."""
    from torchvision.utils import make_grid

    pils = [to_pil(make_grid(x.float(), nrow=nrow, padding=2, pad_value=1.0)[None], scale)[0]
            for _, x in frames]
    buffer = io.BytesIO()
    durations = [duration_ms] * (len(pils) - 1) + [1500]
    pils[0].save(buffer, format="GIF", save_all=True, append_images=pils[1:], duration=durations, loop=0)
    return buffer.getvalue()


def example_digit(digit: int, size: int = 28, domain: str = "mnistm") -> Image.Image:
    """A printed digit to try the classifiers without uploading a file, in the style of `domain` (a UDA model's
    target): white on black for the grey domains (MNIST, USPS), yellow on a dark textured background otherwise."""
    from PIL import ImageDraw, ImageFont

    grey = domain in GREY_DOMAINS
    rng = np.random.default_rng(digit)
    background = np.zeros((size, size, 3), np.uint8) if grey else rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    font = ImageFont.load_default(size=math.floor(size * 0.85))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    draw.text(((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top), str(digit),
              fill=(255, 255, 255) if grey else (235, 220, 120), font=font)
    return image


# ---------------------------------------------------------------- landing and results pages

# (family, checkpoint, metric key, how to show it, protocol): the one figure that matters per shipped model
HEADLINE_METRICS = (
    ("faces: GAN method A (DCGAN)", "dcgan_faces", "fid", "FID {:.2f}", "1000 samples vs data/face/val"),
    ("faces: GAN method B (SNGAN)", "sngan_faces", "fid", "FID {:.2f}", "1000 samples vs data/face/val"),
    ("faces: Smiling ACGAN", "acgan_faces", "attribute_agreement", "Smiling agreement {:.3f}",
     "1000 samples, smiling_classifier on label vs image"),
    ("faces: VAE", "vae_faces", "test_mse", "reconstruction MSE {:.4f}", "data/face/test, pixels in [0, 1]"),
    ("digits: diffusion", "ddpm_digits", "digit_accuracy", "accuracy {:.3f}", "course classifier, 100 digits per class"),
    ("digits: ACGAN", "acgan_digits", "digit_accuracy", "accuracy {:.3f}", "course classifier, 100 digits per class"),
)
LANDING_FIGURES = (("faces (method A)", "dcgan_faces_grid.png"), ("smiling pairs", "acgan_faces_pairs.png"),
                   ("digits (diffusion)", "ddpm_digits_grid.png"), ("adaptation t-SNE", "tsne_*_class.png"))


def headline(cat: Catalog) -> list[dict[str, str]]:
    """One row per shipped model family: {family, model, metric, protocol}; only rows whose metric is recorded,
    and per adaptation pair its best method's target test accuracy (next to source-only's when shipped)."""
    rows = []
    for family, name, key, fmt, protocol in HEADLINE_METRICS:
        value = cat.models[name].metrics.get(key) if name in cat.models else None
        if isinstance(value, (int, float)):
            rows.append({"family": family, "model": name, "metric": fmt.format(value), "protocol": protocol})
    for pair, methods in cat.uda_pairs().items():
        scored = {m: info.metrics.get("target_test_acc") for m, info in methods.items()}
        scored = {m: v for m, v in scored.items() if isinstance(v, (int, float))}
        if not scored:
            continue
        best = max(scored, key=scored.get)
        lower = f" (source only {scored['source_only']:.3f})" if "source_only" in scored and best != "source_only" \
            else ""
        rows.append({"family": f"adaptation: {pair}", "model": methods[best].name,
                     "metric": f"target test accuracy {scored[best]:.3f}{lower}",
                     "protocol": "target test split, checkpoint chosen without target labels"})
    return rows


def landing_figures(folder: str | Path | None = None) -> list[tuple[str, Path]]:
    """(caption, path) of one picture per family that exists in the figures folder."""
    folder = Path(folder) if folder else figures_root()
    found = []
    for caption, pattern in LANDING_FIGURES:
        matches = sorted(folder.glob(pattern)) if folder.is_dir() else []
        preferred = [m for m in matches if "vada_mnistm_to_usps" in m.name] or matches
        if preferred:
            found.append((caption, preferred[0]))
    return found


def results_path() -> Path:
    """RESULTS.md of the repository."""
    return Path(__file__).resolve().parents[1] / "RESULTS.md"


def markdown_tables(text: str) -> list[tuple[str, list[str]]]:
    """The tables of a Markdown document by section: [(heading, [table markdown, ...]), ...], sections without
    a table left out (the Results page shows the figures, not the prose)."""
    sections: list[tuple[str, list[str]]] = []
    heading, tables, table = "", [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            tables.append("\n".join(table))
            table = []
        if line.startswith("#"):
            if tables:
                sections.append((heading, tables))
            heading, tables = line.lstrip("#").strip(), []
    if tables:
        sections.append((heading, tables))
    return sections
