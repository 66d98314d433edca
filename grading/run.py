"""Homework outputs from the shipped checkpoints: `bash grading/hw_run.sh OUT_DIR [DATA_DIR] [--force]`.

Three parts (faces, digits, adaptation), each made of entries (one output folder, CSV or figure set). Every entry
records its checkpoint, the sha256 of the weights, the seed, its time and its status in OUT_DIR/manifest.json; an
entry whose checkpoint is not shipped, or that fails, is recorded with the reason and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dlcv import catalog, checkpoint, service
from dlcv.config import default_data_root
from dlcv.data.digits import write_predictions
from dlcv.fileio import atomic_write_text

log = logging.getLogger(__name__)

PARTS = ("faces", "digits", "adaptation")
N_FACES = 1000
PER_CLASS = 100  # digits: 10 classes x 100 = 1000 files {d}_{001..100}.png
FACE_MODELS = {"gan_a": catalog.GAN_A, "gan_b": catalog.GAN_B}  # output folder -> shipped checkpoint
FACE_FIGURE_MODELS = (catalog.GAN_A, catalog.GAN_B, catalog.SMILING_GAN, catalog.FACE_VAE)
DIGIT_MODELS = {"acgan": catalog.DIGIT_GAN, "diffusion": catalog.DIGIT_DIFFUSION}
TARGET_ACCURACY = "target_test_acc"  # the one metric a UDA checkpoint is graded by (dlcv.metadata's UDA schema)


@dataclass
class Entry:
    """One output of one part, as manifest.json records it."""

    output: str  # path relative to OUT_DIR
    checkpoint: str = ""
    sha256: str = ""
    seed: int | None = None
    status: str = "ok"  # ok | skipped (its data is not in DATA_DIR) | missing (checkpoint not shipped) | failed
    message: str = ""
    seconds: float = 0.0
    files: int = 0
    details: dict[str, Any] = field(default_factory=dict)


class Missing(Exception):
    """A checkpoint that is not shipped: recorded as status 'missing', not as a crash."""


class Skipped(Exception):
    """Data the entry needs is not in DATA_DIR: recorded as status 'skipped'; it does not fail the run."""


def has_face_data(data: Path) -> bool:
    """Whether DATA_DIR has face images (data/face/<split>/*.png)."""
    return (data / "face").is_dir() and any((data / "face").rglob("*.png"))


def has_digit_data(data: Path, domain: str) -> bool:
    """Whether DATA_DIR has the digits domain with images (data/digits/<domain>/data/)."""
    folder = data / "digits" / domain / "data"
    return folder.is_dir() and any(folder.iterdir())


def need_data(present: bool, what: str) -> None:
    """Skip the entry, with the one-line reason, when its data is absent."""
    if not present:
        raise Skipped(f"skipped (no {what} data)")


ENTRY_COUNTER = {"done": 0}  # entries started in this run, for the progress lines


def checkpoint_path(name: str, root: Path) -> Path:
    """root/name, or Missing naming the folder and what would produce it."""
    path = root / name
    if not (path / checkpoint.CONFIG_NAME).is_file() or not (path / checkpoint.WEIGHTS_NAME).is_file():
        raise Missing(f"checkpoint {name} is not shipped ({path} has no {checkpoint.CONFIG_NAME} + {checkpoint.WEIGHTS_NAME}); "
                      f"train it or pull it into {root}")
    return path


def run_entry(entry: Entry, work: Callable[[Entry], None]) -> Entry:
    """Run one entry's work, timing it; any exception becomes status 'failed' with a one-line message. One line
    when it starts and one when it ends."""
    start = time.perf_counter()
    ENTRY_COUNTER["done"] += 1
    log.info("  [%d] %s ...", ENTRY_COUNTER["done"], entry.output)
    try:
        work(entry)
    except Skipped as err:
        entry.status, entry.message = "skipped", str(err)
    except Missing as err:
        entry.status, entry.message = "missing", str(err)
    except Exception as err:  # noqa: BLE001 - a failed output must never hide the other outputs
        entry.status, entry.message = "failed", f"{type(err).__name__}: {err}"
        log.debug("%s failed:\n%s", entry.output, traceback.format_exc())
    entry.seconds = round(time.perf_counter() - start, 2)
    log.info("      %-40s %-7s %6.1f s  %s", entry.output, entry.status, entry.seconds, entry.message)
    return entry


def record_checkpoint(entry: Entry, path: Path) -> None:
    entry.checkpoint = path.name
    entry.sha256 = checkpoint.weights_sha256(path)


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- figures

def figures_available() -> bool:
    """Whether this dlcv has `python -m dlcv figures`."""
    from dlcv import cli

    return "figures" in cli.COMMANDS


def run_figures_command(checkpoint: Path, out: Path, data: Path, seed: int = 0) -> None:
    """`python -m dlcv figures CKPT --out DIR --data DATA --seed S`, in-process; a non-zero exit, or no figure
    written, raises with the reason."""
    from dlcv import cli

    if not figures_available():
        raise RuntimeError("figures command unavailable (this dlcv has no `python -m dlcv figures`)")
    err, out_text = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out_text):
        try:
            code = cli.main(["figures", str(checkpoint), "--out", str(out), "--data", str(data), "--seed", str(seed)])
        except SystemExit as exit_:  # argparse rejects an option this dlcv's figures command lacks
            code = exit_.code
    if code != 0:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        raise RuntimeError(f"`python -m dlcv figures {checkpoint.name}` exited {code}: "
                           f"{lines[-1] if lines else 'no message'}")
    if not out.is_dir() or not any(out.glob("*.png")):
        raise RuntimeError(f"`python -m dlcv figures {checkpoint.name}` wrote no figure for this checkpoint")


def figures_entry(name: str, rel: str, ctx: Context, needs: tuple[tuple[bool, str], ...] = ()) -> Entry:
    """Every figure of checkpoint `name` into OUT/rel; `needs` = ((present, what), ...) skips it without data."""
    def work(entry: Entry) -> None:
        for present, what in needs:
            need_data(present, what)
        path = checkpoint_path(name, ctx.checkpoints)
        record_checkpoint(entry, path)
        entry.seed = ctx.seed
        run_figures_command(path, ctx.out / rel, ctx.data, ctx.seed)
        entry.files = count_files(ctx.out / rel)
    return run_entry(Entry(output=rel), work)


# ---------------------------------------------------------------- parts

@dataclass
class Context:
    """What every part needs: where to write, read checkpoints and data, and the seed."""

    out: Path
    data: Path
    checkpoints: Path
    seed: int


def sample_entry(rel: str, name: str, ctx: Context, **count: int) -> Entry:
    """Sample a generator checkpoint into OUT/rel (n=... faces or per_class=... digits)."""
    def work(entry: Entry) -> None:
        path = checkpoint_path(name, ctx.checkpoints)
        record_checkpoint(entry, path)
        entry.seed = ctx.seed
        options = {}
        if checkpoint.read_config(path).get("architecture") == "unet":  # minutes on a CPU: show a bar
            options["progress"] = progress_bar(rel)
        folder = service.sample_to_folder(path, ctx.out / rel, seed=ctx.seed, force=True, **count, **options)
        entry.files = count_files(folder)
    return run_entry(Entry(output=rel), work)


def progress_bar(what: str) -> Callable[[int, int], None]:
    """A progress(done, total) callback drawing a tqdm bar on stderr (closed when done reaches total)."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"      {what}", unit="img-step", leave=False, mininterval=1.0)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def part_faces(ctx: Context) -> list[Entry]:
    """faces/gan_a, faces/gan_b (1000 PNGs each) and faces/figures/<checkpoint>/ (the VAE's need face data:
    reconstructions)."""
    entries = [sample_entry(f"faces/{folder}", name, ctx, n=N_FACES) for folder, name in FACE_MODELS.items()]
    for name in FACE_FIGURE_MODELS:
        needs = ((has_face_data(ctx.data), "face"),) if name == "vae_faces" else ()
        entries.append(figures_entry(name, f"faces/figures/{name}", ctx, needs))
    return entries


def part_digits(ctx: Context) -> list[Entry]:
    """digits/acgan, digits/diffusion ({d}_{001..100}.png) and digits/figures/<checkpoint>/."""
    entries = [sample_entry(f"digits/{folder}", name, ctx, per_class=PER_CLASS)
               for folder, name in DIGIT_MODELS.items()]
    for folder, name in DIGIT_MODELS.items():
        rel = f"digits/figures/{name}"
        if figures_available():
            entries.append(figures_entry(name, rel, ctx))
        else:
            entries.append(run_entry(Entry(output=rel), lambda e, n=name, f=folder: digit_figures(e, n, f, ctx)))
    return entries


def digit_figures(entry: Entry, name: str, folder: str, ctx: Context) -> None:
    """Fallback while `dlcv figures` is missing: a 10x10 grid (rows = digits) from the written files, and for
    diffusion the reverse process of the first "0" (the same seed as 0_001.png)."""
    from dlcv.data.digits import read_image_folder
    from dlcv.data.loaders import to_model_range
    from dlcv.diffusion import sampler_timesteps
    from dlcv.viz import save_grid, save_strip

    path = checkpoint_path(name, ctx.checkpoints)
    record_checkpoint(entry, path)
    entry.seed = ctx.seed
    samples = ctx.out / "digits" / folder
    if not samples.is_dir():
        raise RuntimeError(f"{samples} was not written, so there is nothing to draw")
    images, names = read_image_folder(samples, channels=3)
    rows = [[i for i, n in enumerate(names) if n.startswith(f"{d}_")][:10] for d in range(10)]
    grid = to_model_range(images[[i for row in rows for i in row]])
    out = ctx.out / entry.output
    save_grid(grid, out / f"{name}_grid.png", nrow=10)
    model, document = service.load(path)
    if document["architecture"] == "unet":
        from dlcv.metadata import sampling_config

        sampling = sampling_config(document)
        steps = sampler_timesteps(sampling.sampler, service.noise_schedule(document), sampling.steps)
        keep = tuple(steps[i] for i in torch.linspace(0, len(steps) - 1, 6).round().long().tolist())
        x0, kept = service.generate_digits(model, document, torch.zeros(1, dtype=torch.long), seed=ctx.seed,
                                           keep=keep)
        ts = sorted(kept, reverse=True)
        save_strip([kept[t][0] for t in ts] + [x0[0]], [f"t={t}" for t in ts] + ["x0"], out / f"{name}_reverse.png")
    entry.files = count_files(out)
    entry.message = "figures command unavailable; wrote the grid (and reverse strip) with dlcv.viz"


def uda_checkpoints(root: Path) -> dict[tuple[str, str], catalog.UDAPair]:
    """The uda_<method>_<source>_to_<target> folders with weights under `root`, grouped by pair
    (dlcv.catalog.uda_pairs); each pair's `shipped` is the model hw_run and hw2_3 use."""
    names = [f.name for f in root.glob("uda_*") if (f / checkpoint.WEIGHTS_NAME).is_file()] if root.is_dir() else []
    return catalog.uda_pairs(names)


def target_accuracy(metrics: dict[str, Any]) -> float | None:
    """The recorded target-test accuracy of a UDA checkpoint (of the weights it ships)."""
    value = metrics.get(TARGET_ACCURACY)
    return float(value) if isinstance(value, (int, float)) else None


def target_images(data: Path, domain: str) -> tuple[Path, list[str], str]:
    """(image folder, names, what chose them) for a target domain: test.csv, else val.csv, else every image."""
    from dlcv.data.digits import domain_dir
    from dlcv.data.images import list_images, read_csv

    path = domain_dir(data, domain)
    for split in ("test", "val"):
        csv_path = path / f"{split}.csv"
        if csv_path.is_file():
            _, rows = read_csv(csv_path, required=("image_name", "label"))
            return path / "data", [r["image_name"] for r in rows], f"{split}.csv"
    return path / "data", list_images(path / "data"), "every image in data/"


def predict_folder(checkpoint: Path, folder: Path, names: list[str]) -> list[int]:
    """Predicted labels of images `names` in `folder` (resized to the model's size if they differ)."""
    from dlcv.data.images import read_images
    from dlcv.metrics import predict_logits

    model, _ = service.load(checkpoint)
    config = model.config
    size, channels = config.image_size, getattr(config, "in_channels", getattr(config, "channels", 3))
    array = read_images(folder, names, size=size, channels=channels, resize=True, cache=False)
    images = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
    return predict_logits(model, images, amp="auto", channels_last="auto").argmax(1).tolist()


def part_adaptation(ctx: Context) -> list[Entry]:
    """adaptation/<source>_to_<target>.csv for every shipped pair (best model), and t-SNE figures."""
    pairs = uda_checkpoints(ctx.checkpoints)
    if not pairs:
        def nothing_shipped(entry: Entry) -> None:
            raise Missing(f"no adaptation checkpoint is shipped (nothing matches "
                          f"{ctx.checkpoints}/uda_<method>_<source>_to_<target>)")
        return [run_entry(Entry(output="adaptation"), nothing_shipped)]
    entries = []
    for (source, target), pair in sorted(pairs.items()):
        candidates = {name: {"method": method, **_metrics(ctx.checkpoints / name)}
                      for method, name in pair.methods.items()}
        if pair.shipped is None:
            def unranked(entry: Entry, pair=pair) -> None:
                raise Missing(f"no ranked method among {sorted(pair.methods)} for {pair.source} -> {pair.target}; "
                              f"ship one of {', '.join(catalog.SHIP_RANK)}")
            entries.append(run_entry(Entry(output=f"adaptation/{catalog.pair_name(source, target)}.csv"), unranked))
            continue
        path = ctx.checkpoints / pair.shipped
        has_target, has_source = has_digit_data(ctx.data, target), has_digit_data(ctx.data, source)

        def work(entry: Entry, source=source, target=target, path=path, candidates=candidates,
                 has_target=has_target) -> None:
            need_data(has_target, target)
            record_checkpoint(entry, path)
            folder, names, chosen_by = target_images(ctx.data, target)
            write_predictions(ctx.out / entry.output, names, predict_folder(path, folder, names))
            entry.files = 1
            entry.details = {"source": source, "target": target, "images": chosen_by, "n": len(names),
                             "candidates": candidates}
        entries.append(run_entry(Entry(output=f"adaptation/{catalog.pair_name(source, target)}.csv"), work))
        rel = f"adaptation/figures/{path.name}"
        needs = ((has_source, source), (has_target, target))  # t-SNE of source and target features
        figures = figures_entry(path.name, rel, ctx, needs)
        entries.append(figures)
    return entries


def _metrics(path: Path) -> dict[str, Any]:
    try:
        return {"metrics": checkpoint.read_config(path).get("metrics", {})}
    except checkpoint.CheckpointError as err:
        return {"metrics": {}, "error": str(err)}


PART_FUNCTIONS: dict[str, Callable[[Context], list[Entry]]] = {
    "faces": part_faces, "digits": part_digits, "adaptation": part_adaptation}


# ---------------------------------------------------------------- manifest and entry point

def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def recorded_parts(manifest: Path) -> set[str]:
    """The parts an earlier hw_run.sh recorded in OUT_DIR/manifest.json (none when it is missing or unreadable)."""
    try:
        return set(json.loads(manifest.read_text())["parts"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def run(out: Path, data: Path, checkpoints: Path, seed: int = 0, parts: tuple[str, ...] = PARTS,
        force: bool = False) -> dict[str, Any]:
    """Write the selected parts into `out` and return the manifest (also written to out/manifest.json)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a folder as OUT_DIR")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} is not empty; pass --force to replace its outputs or choose another OUT_DIR")
        written = recorded_parts(out / "manifest.json")
        foreign = [name for name in parts if (out / name).exists() and name not in written]
        if foreign:  # e.g. OUT_DIR = a data root, whose digits/ is not ours to delete
            raise FileExistsError(f"{out} holds {', '.join(n + '/' for n in foreign)}, which its manifest.json does "
                                  f"not record as written by hw_run.sh; --force replaces only those; choose another "
                                  f"OUT_DIR")
        for name in parts:  # replace only what this run writes; other files in OUT_DIR stay
            shutil.rmtree(out / name, ignore_errors=True)
        if written:  # grades of the old outputs would be stale
            for name in ("score.json", "report.md"):
                (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest: dict[str, Any] = {"parts": {}}
    if force and manifest_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            manifest["parts"] = {k: v for k, v in json.loads(manifest_path.read_text())["parts"].items()
                                 if k not in parts}
    manifest.update({
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seed": seed,
        "data_dir": str(data), "checkpoints_dir": str(checkpoints), "device": "cpu",
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()})
    ctx = Context(out=out, data=data, checkpoints=checkpoints, seed=seed)
    ENTRY_COUNTER["done"] = 0
    domains = sorted(p.name for p in (data / "digits").iterdir() if has_digit_data(data, p.name)) \
        if (data / "digits").is_dir() else []
    manifest["data_found"] = {"face": has_face_data(data), "digits": domains}
    log.info("data in %s: face %s, digits %s", data, "yes" if has_face_data(data) else "no",
             ", ".join(domains) or "none")
    for name in parts:
        log.info("%s:", name)
        start = time.perf_counter()
        try:
            entries = PART_FUNCTIONS[name](ctx)
        except Exception as err:  # noqa: BLE001 - the parts are independent
            entries = [Entry(output=name, status="failed", message=f"{type(err).__name__}: {err}")]
        bad = [e for e in entries if e.status in ("missing", "failed")]
        skipped = [e for e in entries if e.status == "skipped"]
        status = "failed" if bad else "skipped" if skipped and len(skipped) == len(entries) else "ok"
        manifest["parts"][name] = {
            "status": status,
            "message": "; ".join(f"{e.output}: {e.message if e.status == 'skipped' else e.status}"
                                 for e in bad + skipped),
            "seconds": round(time.perf_counter() - start, 2),
            "entries": [asdict(e) for e in entries]}
        write_manifest(manifest_path, manifest)  # after each part, so an interrupted run still says what it wrote
    manifest["status"] = "failed" if any(p["status"] == "failed" for p in manifest["parts"].values()) else "ok"
    write_manifest(manifest_path, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """`python -m grading.run OUT_DIR [DATA_DIR] [--force] [--parts ...]`; exit 1 if any part failed."""
    parser = argparse.ArgumentParser(prog="grading/hw_run.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="output folder (refused if not empty, unless --force)")
    parser.add_argument("data", nargs="?", default=None,
                        help="course-layout data root (default $DLCV_DATA or ./data)")
    parser.add_argument("--force", action="store_true", help="replace the parts' outputs in a non-empty OUT_DIR")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seed", type=int, default=0, help="image i of every sample folder uses seed + i")
    parser.add_argument("--checkpoints", default=None,
                        help="checkpoint root (default $DLCV_CHECKPOINTS or checkpoints/)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.data is not None and not Path(args.data).is_dir():  # a mistyped root would skip every entry quietly
        print(f"error: DATA_DIR {args.data} is not a folder; give the course-layout data root (e.g. data, made by "
              f"`python -m dlcv data prepare`)", file=sys.stderr)
        return 2
    args.data = default_data_root() if args.data is None else args.data
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger("dlcv").setLevel(logging.WARNING)  # keep the per-entry lines readable
    checkpoints = Path(args.checkpoints) if args.checkpoints else service.checkpoints_root()
    start = time.perf_counter()
    try:
        manifest = run(Path(args.out), Path(args.data), checkpoints, seed=args.seed, parts=tuple(args.parts),
                       force=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"\n{'part':<11} {'status':<7} {'seconds':>8}")
    for name, part in manifest["parts"].items():
        print(f"{name:<11} {part['status']:<7} {part['seconds']:8.1f}")
        for entry in part["entries"]:  # one line per entry that did not write its output
            if entry["status"] == "skipped":
                print(f"  {entry['output']}: {entry['message']}")
            elif entry["status"] != "ok":
                print(f"  {entry['output']}: {entry['status']}: {entry['message']}")
    print(f"wrote {args.out}/manifest.json in {time.perf_counter() - start:.1f} s; "
          f"{'everything that could run is ok' if manifest['status'] == 'ok' else 'some parts failed (see above)'}")
    return 0 if manifest["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
