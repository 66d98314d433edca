"""Command line: `python -m dlcv {data,train,eval,evaluate,sample,predict,figures,fid-curve,hub,average,export,
sampling-config} ...`; the only module that prints or parses strings."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import typing
from pathlib import Path

from dlcv.config import MAX_SEED, default_data_root
from dlcv.metadata import Sampler

log = logging.getLogger("dlcv")


def _presets_help() -> str:
    try:
        from dlcv.presets import PRESETS
    except ImportError as err:  # e.g. `pip install --no-deps .`: the help still shows the commands
        return f"presets: not listed ({err}; install the dependencies: pip install .)"

    lines = [f"  {name:<22} {cfg.family:<11} {cfg.data.dataset}" for name, cfg in sorted(PRESETS.items())]
    return "presets (name, family, data):\n" + "\n".join(lines)


def count_type(text: str) -> int:
    """argparse type of a count that may be zero (0 = none)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def seed_type(text: str) -> int:
    """argparse type of every --seed: an integer 0 .. MAX_SEED."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a seed such as 0") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range; give a seed from 0 to {MAX_SEED}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; `python -m dlcv --help` lists the presets."""
    parser = argparse.ArgumentParser(prog="python -m dlcv", description="dlcv: train, sample and evaluate.",
                                     epilog=_presets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare the course's on-disk layout")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="build <out>/face and <out>/digits/<domain> from a source")
    prep.add_argument("--source", required=True,
                      help="a folder laid out like ../shared/data, or 'torchvision' (downloads; needs internet)")
    prep.add_argument("--out", default=default_data_root(), help="output root (default $DLCV_DATA or ./data)")
    prep.add_argument("--only", nargs="+", metavar="DATASET",
                      help="subset of mnistm usps mnist svhn face mnistm_synth (default: all that are present)")
    prep.add_argument("--val-fraction", type=float, default=0.1, help="share of each class held out as val")
    prep.add_argument("--seed", type=seed_type, default=0, help="split seed")
    prep.add_argument("--synth-mnistm", type=count_type, default=0, metavar="N",
                      help="also build `mnistm_synth`: N MNIST-M-style digits from MNIST + BSDS500 (Ganin & Lempitsky)")
    prep.add_argument("--overwrite", action="store_true", help="replace an output folder that holds other data")
    prep.add_argument("--download-dir", default=None, help="torchvision download folder")

    train = sub.add_parser("train", help="train a preset", epilog=_presets_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("preset")
    train.add_argument("--out", default=None, help="checkpoint folder (default runs/<name>/checkpoint)")
    train.add_argument("--fresh", action="store_true",
                       help="delete runs/<name> (state, logs, samples) and start over; a folder that is not a "
                            "run's is refused")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    ev = sub.add_parser("eval", help="accuracy of a classifier checkpoint (or the course's Classifier.pth)")
    ev.add_argument("checkpoint", help="checkpoint folder, or a .pth file of the course's digit classifier")
    ev.add_argument("--data", default=default_data_root(), help="course-layout root")
    ev.add_argument("--domain", default="mnistm", help="digits domain (ignored with --attribute)")
    ev.add_argument("--attribute", default="", help="evaluate on faces, labels from this attribute (e.g. Smiling)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")

    samp = sub.add_parser("sample", help="write generated images from a checkpoint (course file names)")
    samp.add_argument("checkpoint")
    samp.add_argument("--out", required=True, help="folder; it will hold exactly the generated files")
    count = samp.add_mutually_exclusive_group(required=True)
    count.add_argument("--per-class", type=int, help="class-conditional: K images per class, {digit}_{001..K}.png")
    count.add_argument("--n", type=int, help="unconditional: N images 0000.png ...")
    samp.add_argument("--seed", type=seed_type, default=0, help="image i uses seed + i")
    samp.add_argument("--sampler", choices=typing.get_args(Sampler), default=None,
                      help="diffusion sampler (default: checkpoint's)")
    samp.add_argument("--steps", type=int, default=None, help="ddim / dpm++2m steps (default: checkpoint's)")
    samp.add_argument("--eta", type=float, default=None, help="ddim's eta (0 = deterministic; ddim only)")
    samp.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight w")
    samp.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                      help="apply guidance only for LO <= t <= HI (default: checkpoint's, else every step)")
    samp.add_argument("--uncond-every", type=int, default=None, metavar="K",
                      help="run the unconditional model every K-th guided step, reusing it in between "
                           "(default: checkpoint's, else 1 = exact guidance)")
    samp.add_argument("--force", action="store_true", help="replace a non-empty --out folder")

    hub = sub.add_parser("hub", help="push a checkpoint folder to the Hugging Face Hub, or pull one")
    hub_sub = hub.add_subparsers(dest="hub_command", required=True)
    hub_push = hub_sub.add_parser("push", help="upload config.json + model.safetensors + a model card in one commit "
                                               "(token: $HF_TOKEN or `hf auth login`)")
    hub_push.add_argument("checkpoint", help="checkpoint folder, e.g. checkpoints/ddpm_digits")
    hub_push.add_argument("--repo", required=True, help="model repo <org>/<name>; created if missing")
    hub_push.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its)")
    hub_push.add_argument("--endpoint", default=None, help="Hub URL (default $HF_ENDPOINT or https://huggingface.co)")
    hub_pull = hub_sub.add_parser("pull", help="download a checkpoint into the Hugging Face cache, check that it "
                                               "loads, print its folder (HF_HUB_OFFLINE=1: from the cache only)")
    hub_pull.add_argument("repo", help="model repo <org>/<name>")
    hub_pull.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    hub_pull.add_argument("--cache-dir", default=None, help="cache folder (default $HF_HUB_CACHE)")
    hub_pull.add_argument("--endpoint", default=None, help="Hub URL (default $HF_ENDPOINT or https://huggingface.co)")

    fig = sub.add_parser("figures", help="write the course's figures of a checkpoint (grids, pairs, VAE "
                                         "reconstructions, t-SNE, curves)")
    fig.add_argument("checkpoint")
    fig.add_argument("--out", required=True, help="folder for <checkpoint>_<figure>.png")
    fig.add_argument("--data", default=None,
                     help="data root for figures that need data (VAE faces, UDA t-SNE digits); default none")
    fig.add_argument("--seed", type=seed_type, default=0)
    fig.add_argument("--metrics", default=None, help="the run's metrics.jsonl, for learning curves")
    fig.add_argument("--attribute", default="Male", help="attribute that colours the VAE t-SNE")

    avg = sub.add_parser("average", help="uniform weight average of checkpoints of one run (e.g. a GAN's "
                                          "snapshots), written as a new checkpoint")
    avg.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="two or more checkpoint folders")
    avg.add_argument("--out", required=True, help="folder for the averaged checkpoint (new, or a checkpoint)")

    evl = sub.add_parser("evaluate", help="a checkpoint's family metrics: FID/KID (+ Smiling agreement) for face "
                                          "generators, course-classifier accuracy for digit generators, VAE MSE, "
                                          "UDA target accuracy; --record writes them into its config.json")
    evl.add_argument("checkpoint")
    evl.add_argument("--data", default=default_data_root(), help="course-layout root (default $DLCV_DATA or ./data)")
    evl.add_argument("--record", action="store_true", help="write the metrics into the checkpoint's config.json")
    evl.add_argument("--samples", type=int, default=1000, help="generated images (conditional: split over classes)")
    evl.add_argument("--seed", type=seed_type, default=0, help="image i uses seed + i (independent samples: seeds >= "
                                                        "--samples apart)")
    evl.add_argument("--reference-split", default="val", help="faces: compare with face/<split>")
    evl.add_argument("--judge", default="", help="attribute classifier of a conditional face GAN "
                                                  "(default checkpoints/smiling_classifier)")
    evl.add_argument("--classifier", default="", help="the course's digit Classifier.pth (default "
                                                       "$DLCV_COURSE_CLASSIFIER or ../shared/data/weights/...)")
    evl.add_argument("--no-progress", action="store_true", help="no progress bar")

    curve = sub.add_parser("fid-curve", help="FID of every snapshot of face GAN runs against training time, as a "
                           "figure (results cached in runs/<name>/fid_curve.jsonl)")
    curve.add_argument("runs", nargs="+", help="run folders, e.g. runs/lecam_faces")
    curve.add_argument("--data", default=default_data_root())
    curve.add_argument("--out", required=True, help="the PNG to write")
    curve.add_argument("--reference", nargs="*", default=[], help="checkpoints drawn as a line at their recorded FID")
    curve.add_argument("--target", type=float, nargs="*", default=[], help="FID targets drawn as dotted lines")
    curve.add_argument("--floor", type=float, default=0.0,
                       help="lowest asymptote the extrapolation may have: the FID of real images against the "
                            "reference (13.23 for 1000 face/test vs face/val)")
    exp = sub.add_parser("export", help="copy a checkpoint (e.g. a run's snapshot) to a new folder, optionally with "
                                        "sampling defaults (--sampling.KEY=VALUE); the copy records this command")
    exp.add_argument("checkpoint")
    exp.add_argument("--out", required=True, help="folder for the copy (new, or a checkpoint)")

    scfg = sub.add_parser("sampling-config", help="set a checkpoint's sampling defaults in place: "
                                                  "--sampling.guidance=4 --sampling.uncond_every=2 ... (others keep "
                                                  "their values; the checkpoint records this command)")
    scfg.add_argument("checkpoint")
    scfg.add_argument("--show", action="store_true", help="print the resolved sampling defaults and exit")

    pred = sub.add_parser("predict", help="write image_name,label for every image in a folder")
    pred.add_argument("checkpoint")
    pred.add_argument("--images", required=True, help="folder of images (sorted by name)")
    pred.add_argument("--out", required=True, help="CSV path")
    pred.add_argument("--resize", action="store_true", help="resize images of another size (bilinear)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code. Errors are one line naming the problem and the fix."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if rest and args.command not in ("train", *SAMPLING_COMMANDS):
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    try:
        return COMMANDS[args.command](args, rest)
    except ImportError as err:
        print(f"error: {err}; install the dependencies: pip install . (or pip install -r requirements.txt)",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader stopped early (`| head`): not an error of the command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 1
    except OSError as err:  # a path that is a folder, a file, unreadable, or a full disk
        from dlcv.fileio import describe_os_error

        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 2


def cmd_data(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.data.prepare import prepare

    start = time.perf_counter()
    report = prepare(args.source, args.out, only=args.only, val_fraction=args.val_fraction, seed=args.seed,
                     synth_mnistm=args.synth_mnistm, overwrite=args.overwrite, download_dir=args.download_dir,
                     progress=lambda msg: print(msg, flush=True))
    for name, entry in report.items():
        print(f"\n{name}: {entry['status']} ({entry['path']})")
        counts = entry["counts"]
        columns = list(next(iter(counts.values())).keys())
        widths = [max(8, len(c)) + 1 for c in columns]
        print("  " + f"{'split':<6}" + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
        for split, row in counts.items():
            print("  " + f"{split:<6}" + "".join(f"{row.get(c, 0):>{w}}" for c, w in zip(columns, widths)))
    print(f"\ndone in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.config import apply_overrides, to_dict
    from dlcv.presets import get_preset
    from dlcv.training import method_config, train

    cfg = apply_overrides(get_preset(args.preset), rest)
    method_config(cfg)  # an unknown --method.* key is an error here too
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from dlcv.metadata import commands_that_write, starts_from

    # what built the checkpoints it starts from, read now: after training, a broken record must not cost the run
    before = [c for start in starts_from(cfg.method).values() for c in commands_that_write(start)]
    out = train(cfg, out=args.out, fresh=args.fresh)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone writes the checkpoint
        _record_train_command(out, args.preset, rest, before)
    print(f"checkpoint written to {out}")
    return 0


def _record_train_command(out, preset: str, overrides: list[str], before: list[str] | None = None) -> None:
    """The checkpoint's rebuild list: the commands that built the checkpoints it started from (`before`: those of
    --method.init / --method.peer outside checkpoints/), then the command that trained it."""
    from dlcv import checkpoint
    from dlcv.metadata import train_command

    command = train_command(preset, overrides, str(out))
    unique = list(dict.fromkeys(before or []))  # init and peer may share a history
    checkpoint.update_document(out, lambda d: {**d, "rebuild": [*unique, command]})


CLASSIFIERS = ("classifier", "uda_net")  # the architectures that eval and predict can use


def _load_classifier(path: str):
    from dlcv import checkpoint

    if Path(path).is_file():
        return checkpoint.load_course_classifier(path)
    model, document = checkpoint.load(path)
    if document["architecture"] not in CLASSIFIERS:
        raise ValueError(f"{path} is a {document['architecture']} checkpoint, which does not classify; use a "
                         f"classifier or UDA checkpoint ({', '.join(CLASSIFIERS)}) or the course's .pth")
    return model


def _recorded_attribute(path: str) -> str:
    """The face attribute a classifier checkpoint was trained on ("" for digits, the course .pth, or none recorded)."""
    from dlcv import checkpoint

    if Path(path).is_file():
        return ""
    return ((checkpoint.read_config(path).get("run") or {}).get("data") or {}).get("attribute", "") or ""


def cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.config import DataConfig
    from dlcv.data.loaders import load_split
    from dlcv.metrics import accuracy, per_class_accuracy, predict_logits

    model = _load_classifier(args.checkpoint)
    mc = model.config
    trained_on = _recorded_attribute(args.checkpoint)
    if trained_on and args.attribute and args.attribute != trained_on:  # its logits say nothing about another one
        raise ValueError(f"{args.checkpoint} classifies the face attribute {trained_on}, not {args.attribute}; "
                         f"pass --attribute {trained_on}")
    data = DataConfig(root=args.data, dataset="face" if args.attribute else "digits", domain=args.domain,
                      attribute=args.attribute, image_size=mc.image_size, channels=mc.in_channels)
    images, labels = load_split(data, args.split)
    if labels is None:
        raise ValueError("faces need --attribute to have labels to score")
    pred = predict_logits(model, images).argmax(1)
    result = {"accuracy": accuracy(pred, labels), "n": len(labels),
              "per_class": per_class_accuracy(pred, labels, mc.num_classes)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        what = f"face/{args.split} ({args.attribute})" if args.attribute else f"digits/{args.domain}/{args.split}"
        print(f"{what}: accuracy {result['accuracy']:.4f} on {result['n']} images")
        print("class " + " ".join(f"{c:>6}" for c in result["per_class"]))
        print("acc   " + " ".join(f"{a:6.3f}" for a in result["per_class"].values()))
    return 0


def cmd_predict(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.data.digits import check_predictions_target, read_image_folder, write_predictions
    from dlcv.metrics import predict_logits

    check_predictions_target(args.out, args.images)  # before loading and predicting
    model = _load_classifier(args.checkpoint)
    images, names = read_image_folder(args.images, channels=model.config.in_channels,
                                      image_size=model.config.image_size, resize=args.resize)
    logits = predict_logits(model, images, amp="auto", channels_last="auto")  # a prediction file: the fastest here
    write_predictions(args.out, names, logits.argmax(1).tolist())
    print(f"wrote {len(names)} predictions to {args.out}")
    return 0


def _pair(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval {text!r} must be two integers LO,HI, e.g. 200,800") from None
    return lo, hi


def cmd_sample(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv import service

    start = time.perf_counter()
    folder = service.sample_to_folder(args.checkpoint, args.out, per_class=args.per_class, n=args.n, seed=args.seed,
                                      sampler=args.sampler, steps=args.steps, eta=args.eta, guidance=args.guidance,
                                      guidance_interval=_pair(args.guidance_interval),
                                      uncond_every=args.uncond_every, force=args.force)
    count = sum(1 for _ in folder.iterdir())
    print(f"wrote {count} images to {folder} in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_hub(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv import checkpoint, hub

    if args.hub_command == "push":
        url = hub.push(args.checkpoint, args.repo, private=args.private, endpoint=args.endpoint)
        print(f"pushed {args.checkpoint} to {url}")
        return 0
    folder = hub.pull(args.repo, revision=args.revision, cache_dir=args.cache_dir, endpoint=args.endpoint)
    checkpoint.load(folder)  # strict load before handing the path to a script
    print(folder)  # only the path, so `$(python -m dlcv hub pull ...)` works
    return 0


def cmd_figures(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.figures import write_figures

    for path in write_figures(args.checkpoint, args.out, data_root=args.data, seed=args.seed, metrics=args.metrics,
                              attribute=args.attribute):
        print(path)
    return 0


def cmd_average(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.checkpoint import average

    print(average(args.checkpoints, args.out))
    return 0


def cmd_evaluate(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv.evaluate import EvalOptions, evaluate, record

    options = EvalOptions(samples=args.samples, seed=args.seed, reference_split=args.reference_split,
                          judge=args.judge, course_classifier=args.classifier, progress=not args.no_progress,
                          sampling=rest)
    start = time.perf_counter()
    metrics = evaluate(args.checkpoint, args.data, options)
    print(json.dumps(metrics, indent=2))
    if args.record:
        record(args.checkpoint, metrics)
        print(f"recorded in {Path(args.checkpoint) / 'config.json'}")
    print(f"measured in {time.perf_counter() - start:.1f} s")
    return 0


SAMPLING_COMMANDS = ("export", "sampling-config", "evaluate")  # take --sampling.KEY=VALUE items


def _sampling(document: dict, rest: list[str]):
    from dlcv.metadata import check_sampling_for, parse_sampling_overrides, sampling_config

    sampling = parse_sampling_overrides(rest, sampling_config(document))
    check_sampling_for(document, sampling)
    return sampling


def cmd_fid_curve(args: argparse.Namespace, rest: list[str]) -> int:
    from dlcv import checkpoint
    from dlcv.evaluate import EvalOptions, fid_curve, fit_fid_curve, hours_to
    from dlcv.viz import plot_fid_curve

    curves = {}
    for run in args.runs:
        records = fid_curve(run, args.data, EvalOptions(progress=False))
        curves[Path(run).name] = [r for r in records if r["train_hours"] is not None]
        for r in records:
            print(f"{Path(run).name} step {r['step']}: FID {r['fid']:.2f} at {r['train_hours']} h", flush=True)
    references = {}
    for folder in args.reference:
        fid = (checkpoint.read_config(folder).get("metrics") or {}).get("fid")
        if fid is None:
            raise ValueError(f"--reference {folder} records no FID; measure it with python -m dlcv evaluate "
                             f"{folder} --record")
        references[Path(folder).name] = fid
    fits = {}
    for name, records in curves.items():
        fits[name] = fit_fid_curve(records, args.floor)
        if fits[name] is None:
            print(f"{name}: fewer than 4 timed snapshots, no extrapolation", flush=True)
            continue
        a, b, c = fits[name]
        last = max(records, key=lambda r: r["step"])
        pace = last["step"] / last["train_hours"]  # steps per hour so far
        reach = ", ".join(f"FID {t:g} at {hours:.1f} h (~{hours * pace:,.0f} steps)" if hours is not None
                          else f"FID {t:g} never (floor above it)"
                          for t, hours in ((t, hours_to(fits[name], t)) for t in args.target))
        print(f"{name}: fitted FID(h) = {a:.2f} + {b:.2f} h^-{c:.3f} (extrapolated: {reach or 'no --target'})",
              flush=True)
    print(f"wrote {plot_fid_curve(curves, references, args.out, tuple(args.target), fits)}")
    return 0


def cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    from dataclasses import asdict

    from dlcv import checkpoint
    from dlcv.metadata import command_of

    model, document = checkpoint.load(args.checkpoint)
    meta = {k: v for k, v in document.items() if k not in ("format", "architecture", "config")}
    if rest:
        meta["sampling"] = asdict(_sampling(document, rest))
    meta["rebuild"] = [*document.get("rebuild", []),
                       command_of(["export", args.checkpoint, "--out", args.out, *rest])]
    print(checkpoint.save(model, args.out, meta))
    return 0


def cmd_sampling_config(args: argparse.Namespace, rest: list[str]) -> int:
    from dataclasses import asdict

    from dlcv import checkpoint
    from dlcv.metadata import command_of

    document = checkpoint.read_config(args.checkpoint)
    sampling = asdict(_sampling(document, rest))
    if not args.show:
        command = command_of(["sampling-config", args.checkpoint, *rest])
        checkpoint.update_document(args.checkpoint, lambda d: {
            **d, "sampling": sampling, "rebuild": [*d.get("rebuild", []), command]})
    print(json.dumps(sampling, indent=2))
    return 0


COMMANDS = {"fid-curve": cmd_fid_curve, "data": cmd_data, "train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "predict": cmd_predict,
            "figures": cmd_figures, "hub": cmd_hub, "average": cmd_average, "export": cmd_export, "evaluate": cmd_evaluate,
            "sampling-config": cmd_sampling_config}
