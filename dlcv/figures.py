"""The course's figures of one checkpoint, written by code (`python -m dlcv figures CKPT --out DIR`):

- face GAN: a 32-face grid; Smiling ACGAN: also 10 pairs, each pair one z with Smiling off (top) and on (bottom);
- digit generators: a 10x10 grid (rows = digits); diffusion: also the reverse process of the first "0";
- VAE: test faces over their reconstructions with the per-image MSE, 32 samples, t-SNE of the latent means of val
  faces coloured by an attribute (Male by default); learning curves when the run's metrics.jsonl is given;
- UDA net: t-SNE of its features on 1,000 source and 1,000 target test digits, by class and by domain.

Everything is seeded, so the same checkpoint and seed give the same figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from dlcv import checkpoint
from dlcv.data.loaders import to_model_range
from dlcv.sampling import sample_gan, sample_vae
from dlcv.viz import plot_curves, plot_tsne, plot_tsne_columns, save_captioned_rows, save_grid, save_strip

log = logging.getLogger(__name__)

CURVE_KEYS = {"vae": ["recon", "kl", "train_mse"], "generator": ["d_loss", "g_loss"],
              "unet": ["loss"], "classifier": ["loss"]}


def write_figures(folder: str | Path, out: str | Path, data_root: str | Path | None = None, seed: int = 0,
                  metrics: str | Path | None = None, attribute: str = "Male") -> list[Path]:
    """Write every figure that the checkpoint `folder` supports into `out` (named <folder>_<figure>.png); returns them.

    Figures that need data (VAE reconstructions, every t-SNE) are skipped with a log line when data_root is None.
    """
    folder, out = Path(folder), Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the figures")
    records = read_metrics_log(metrics) if metrics is not None else []  # a bad log is refused before any figure
    model, document = checkpoint.load(folder)
    name, architecture = folder.name, document["architecture"]
    written: list[Path] = []
    if architecture == "generator":
        written += gan_figures(model, out, name, seed)
    elif architecture == "unet":
        written += diffusion_figures(model, document, out, name, seed)
    elif architecture == "vae":
        written += vae_figures(model, out, name, seed, data_root, attribute)
    elif architecture == "uda_net":
        written += uda_figures(model, document, out, name, seed, data_root)
    else:
        log.info("%s: no generation figures for a %s checkpoint", name, architecture)
    if metrics is not None:
        keys = [k for k in CURVE_KEYS.get(architecture, []) if any(k in r for r in records)]
        if keys:
            written.append(plot_curves(records, keys, out / f"{name}_curves.png", title=name))
    return written


def read_metrics_log(path: str | Path) -> list[dict]:
    """A run's metrics.jsonl: one JSON object per line."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"--metrics {path}: line {number} is not a JSON object; give a run's metrics.jsonl")
        records.append(record)
    return records


def gan_figures(generator: torch.nn.Module, out: Path, name: str, seed: int) -> list[Path]:
    k = generator.config.num_classes
    if k == 0:  # unconditional faces: 32 of them
        return [save_grid(sample_gan(generator, 32, seed=seed), out / f"{name}_grid.png", nrow=8)]
    if k == 2:  # Smiling ACGAN: a grid (rows 1-2 not smiling, 3-4 smiling) and 10 pairs from the same z
        labels = torch.tensor([0] * 16 + [1] * 16)
        grid = save_grid(sample_gan(generator, 32, seed=seed, labels=labels), out / f"{name}_grid.png", nrow=8)
        # z_i comes from seed + i, so two calls with the same seed give both halves of each pair the same z
        off = sample_gan(generator, 10, seed=seed, labels=torch.zeros(10, dtype=torch.long))
        on = sample_gan(generator, 10, seed=seed, labels=torch.ones(10, dtype=torch.long))
        pairs = save_captioned_rows([off, on], [["not smiling"] + [""] * 9, ["smiling"] + [""] * 9],
                                    out / f"{name}_pairs.png")
        return [grid, pairs]
    labels = torch.arange(k).repeat_interleave(10)  # digits: rows = classes
    return [save_grid(sample_gan(generator, len(labels), seed=seed, labels=labels), out / f"{name}_grid.png",
                      nrow=10)]


def diffusion_figures(model: torch.nn.Module, document: dict, out: Path, name: str, seed: int) -> list[Path]:
    from dlcv.service import generate_digits

    labels = torch.arange(model.config.num_classes).repeat_interleave(10)
    from dlcv.metadata import sampling_config

    sampling = sampling_config(document)
    from dlcv.diffusion import sampler_timesteps
    from dlcv.service import noise_schedule

    timesteps = sampler_timesteps(sampling.sampler, noise_schedule(document), sampling.steps)
    ts = [timesteps[round(i * (len(timesteps) - 1) / 5)] for i in range(5)]  # five x_t from t = T-1 down
    images, kept = generate_digits(model, document, labels, seed=seed, keep=tuple(ts))
    grid = save_grid(images, out / f"{name}_grid.png", nrow=10)
    strip = save_strip([kept[t][0] for t in ts] + [images[0]], [f"t={t}" for t in ts] + ["x0"],
                       out / f"{name}_reverse.png")
    return [grid, strip]


@torch.no_grad()
def vae_figures(vae: torch.nn.Module, out: Path, name: str, seed: int, data_root: str | Path | None,
                attribute: str) -> list[Path]:
    from dlcv.data.faces import read_faces
    from dlcv.metrics import reconstruction_mse

    val = read_faces(data_root, "val") if data_root is not None else None
    if val is not None and val.attribute_names and attribute not in val.attribute_names:  # before any figure
        raise ValueError(f"--attribute {attribute!r}: the val faces carry no such attribute; choose from "
                         f"{list(val.attribute_names)}")
    written = [save_grid(sample_vae(vae, 32, seed=seed), out / f"{name}_samples.png", nrow=8)]
    if val is None:
        log.info("%s: pass --data for the reconstruction and t-SNE figures", name)
        return written
    vae.eval()
    split = "test" if (Path(data_root) / "face" / "test").is_dir() else "val"
    faces = read_faces(data_root, split).images[:10]
    errors = reconstruction_mse(vae, faces, per_image=True)
    x = to_model_range(faces)
    recon = vae.decode(vae.encode(x)[0]).float()
    written.append(save_captioned_rows([x, recon], [[""] * 10, [f"MSE {e:.4f}" for e in errors.tolist()]],
                                       out / f"{name}_reconstruction.png"))
    if attribute in val.attribute_names:
        labels = val.labels(attribute)
        known = (labels >= 0).nonzero().flatten()
        known = known[torch.randperm(len(known), generator=torch.Generator().manual_seed(seed))[:1000]]
        mu = torch.cat([vae.encode(to_model_range(val.images[known[i:i + 250]]))[0]
                        for i in range(0, len(known), 250)])
        written.append(plot_tsne(mu, labels[known], out / f"{name}_tsne_{attribute}.png",
                                 title=f"VAE latent means (t-SNE), val faces by {attribute}",
                                 label_names=[f"not {attribute}", attribute], seed=seed))
    else:
        log.info("%s: val faces carry no attributes; t-SNE skipped", name)
    return written


def uda_figures(model: torch.nn.Module, document: dict, out: Path, name: str, seed: int,
                data_root: str | Path | None, per_domain: int = 1000) -> list[Path]:
    """The course's two adaptation figures of a UDA checkpoint: t-SNE of its features on up to `per_domain` seeded
    random test digits (val where a domain has no test split) of its source and of its target, by class and by
    domain."""
    from dlcv.data.digits import read_digits

    if data_root is None:
        log.info("%s: t-SNE skipped (needs --data)", name)
        return []
    source, target = _uda_pair(document, name)
    data_root, splits = Path(data_root), []
    for domain in (source, target):
        split = "test" if (data_root / "digits" / domain / "test.csv").is_file() else "val"
        digits = read_digits(data_root, domain, split, image_size=model.config.image_size, resize=True)
        keep = torch.randperm(len(digits), generator=torch.Generator().manual_seed(seed))[:per_domain]
        splits.append((digits.images[keep], digits.labels[keep]))
    out.mkdir(parents=True, exist_ok=True)
    return domain_tsne(model, splits[0], splits[1], out / f"{name}_tsne",
                       (f"{name}: features by digit", f"{name}: features by domain"),
                       [f"source {source}", f"target {target}"], seed=seed)


def _uda_pair(document: dict, name: str) -> tuple[str, str]:
    """(source, target) of a UDA checkpoint: from the run config it records, else from its name."""
    from dlcv.catalog import parse_uda_name

    data = document.get("run", {}).get("data", {})
    if data.get("domain") and data.get("target_domain"):
        return data["domain"], data["target_domain"]
    parsed = parse_uda_name(name)
    if parsed is None:
        raise ValueError(f"{name}: its config.json records no run and its name is not uda_<method>_<source>_to_"
                         f"<target>; rename the folder so the t-SNE knows which domains to draw")
    return parsed.source, parsed.target


@torch.no_grad()
def _uda_features(model: torch.nn.Module, source: tuple[torch.Tensor, torch.Tensor],
                  target: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, classes, domains) of source then target images ((uint8 images, labels) each) under `model`."""
    from dlcv.models.uda import SOURCE, TARGET, UDANet

    features, classes, domains = [], [], []
    for domain, (images, labels) in ((SOURCE, source), (TARGET, target)):
        x = to_model_range(images)
        # a UDA net sends each domain through its own normalisation and BN statistics; a plain classifier has one
        embed = (lambda b: model.features(b, domain=domain)) if isinstance(model, UDANet) else model.embed
        features.append(torch.cat([embed(x[i:i + 500]) for i in range(0, len(x), 500)]))
        classes.append(labels)
        domains.append(torch.full((len(x),), domain))
    return torch.cat(features).float(), torch.cat(classes), torch.cat(domains)


def domain_tsne(model: torch.nn.Module, source: tuple[torch.Tensor, torch.Tensor],
                target: tuple[torch.Tensor, torch.Tensor], stem: str | Path, titles: tuple[str, str],
                domain_names: list[str], seed: int = 0) -> list[Path]:
    """The course's two adaptation figures: t-SNE of a UDA model's features on source and target digits, coloured
    by class (<stem>_class.png) and by domain (<stem>_domain.png). source / target: (uint8 images, labels)."""
    features, classes, domains = _uda_features(model, source, target)
    return [plot_tsne(features, classes, f"{stem}_class.png", titles[0], seed=seed),
            plot_tsne(features, domains, f"{stem}_domain.png", titles[1], label_names=domain_names, seed=seed)]


def tsne_over_training(models: list[tuple[str, torch.nn.Module]], source: tuple[torch.Tensor, torch.Tensor],
                       target: tuple[torch.Tensor, torch.Tensor], path: str | Path, domain_names: list[str],
                       seed: int = 0) -> Path:
    """How the features move while a UDA model trains: one column per (caption, model), e.g. snapshots at several
    steps, each a t-SNE of the same source and target images, by class (top) and by domain (bottom)."""
    sets = [_uda_features(model, source, target) for _, model in models]
    return plot_tsne_columns([f for f, _, _ in sets], sets[0][1], sets[0][2], [c for c, _ in models], path,
                             domain_names, seed=seed)
