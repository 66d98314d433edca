"""The typed parts of a checkpoint's config.json: `metrics` (fixed keys per family plus the evaluation protocol),
`sampling` (SamplingConfig: one default per knob, read through sampling_config()), and `rebuild` (the
`python -m dlcv ...` commands that rebuild the folder). Validated when a checkpoint is saved and when it is read."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# how a UDA checkpoint's weights were picked, never by target labels: labelled-domain val accuracy, a score of the
# predictions on unlabelled target val (dlcv.validators: IM, entropy, SND, BNM), DEV, or the final weights
SelectionRule = Literal["labelled_val", "target_im", "target_entropy", "target_snd", "target_bnm", "dev", "last"]
SELECTION_NAMES = {"labelled_val": "labelled val accuracy", "target_im": "information maximisation on target val",
                   "target_entropy": "prediction entropy on target val",
                   "target_snd": "soft neighbourhood density (SND) on target val",
                   "target_bnm": "batch nuclear norm (BNM) on target val",
                   "dev": "deep embedded validation (DEV)", "last": "final weights"}

FAMILY_OF_ARCHITECTURE = {"generator": "gan", "unet": "diffusion", "vae": "vae", "classifier": "classifier",
                          "uda_net": "uda"}


class MetadataError(ValueError):
    """A config.json entry that does not fit the schema; the message names the key and the valid ones."""


# ---------------------------------------------------------------- metrics


@dataclass
class Protocol:
    """How a number was measured: how many images, against which real split, from which seed, judged by whom."""

    samples: int  # generated (or, for a VAE, reconstructed) images scored
    reference: str = ""  # the real split, relative to the data root: "face/val", "digits/mnistm/test"
    seed: int = 0  # image i of the sample uses seed + i
    judge: str = ""  # the classifier behind an accuracy or agreement: a checkpoint name, or "course_classifier"


@dataclass
class GeneratorMetrics:
    """A GAN generator: FID/KID against real faces (plus Smiling agreement and pair identity for the ACGAN), or the
    course classifier's accuracy and digit-FID for a digit ACGAN."""

    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    attribute_agreement: float | None = None  # share of samples the judge assigns to the requested label
    attribute_agreement_per_label: dict[str, float] | None = None
    pair_same: float | None = None  # feature cosine similarity of smiling pairs with the same z ...
    pair_other: float | None = None  # ... and with mismatched z
    digit_accuracy: float | None = None
    digit_fid: float | None = None  # Frechet distance of the course classifier's penultimate features
    per_class_accuracy: dict[str, float] | None = None
    protocol: Protocol | None = None
    other_seeds: dict[str, dict[str, float]] | None = None  # seed -> the scalar metrics above at that seed


@dataclass
class DiffusionMetrics:
    """A class-conditional diffusion model: the course classifier on its samples (with its sampling defaults)."""

    digit_accuracy: float | None = None
    digit_fid: float | None = None
    per_class_accuracy: dict[str, float] | None = None
    protocol: Protocol | None = None
    other_seeds: dict[str, dict[str, float]] | None = None


@dataclass
class VAEMetrics:
    """A VAE: mean squared error of decode(mu) against the input, pixels in [0, 1]."""

    val_mse: float | None = None
    test_mse: float | None = None
    protocol: Protocol | None = None


@dataclass
class ClassifierMetrics:
    """A classifier, as training records it: accuracy of the best-val weights."""

    val_accuracy: float | None = None
    test_accuracy: float | None = None
    best_step: int | None = None


@dataclass
class UDAMetrics:
    """A UDA model, as training/uda.py records it. target_test_acc is the shipped weights' target test accuracy, the
    one number grading reads; the oracle_* figures use target labels to select and are for reference only."""

    method: str | None = None
    source: str | None = None
    target: str | None = None
    steps: int | None = None
    steps_per_s: float | None = None
    train_seconds: float | None = None
    last_step_target_test_acc: float | None = None
    oracle_target_val_acc: float | None = None
    oracle_target_test_acc: float | None = None
    oracle_step: int | None = None
    target_val_acc: float | None = None
    target_test_acc: float | None = None
    selected_step: int | None = None
    selected_by: SelectionRule | None = None
    selected_score: float | None = None  # what selected_by scored the selected weights; ranks seeds (not for last)
    labelled_val_acc: float | None = None


METRICS: dict[str, type] = {"gan": GeneratorMetrics, "diffusion": DiffusionMetrics, "vae": VAEMetrics,
                            "classifier": ClassifierMetrics, "uda": UDAMetrics}


def metrics_schema(architecture: str) -> type:
    """The metrics dataclass of a checkpoint's architecture."""
    family = FAMILY_OF_ARCHITECTURE.get(architecture)
    if family is None:
        raise MetadataError(f"architecture {architecture!r} has no metrics schema; "
                            f"choose from {sorted(FAMILY_OF_ARCHITECTURE)}")
    return METRICS[family]


def check_metrics(architecture: str, metrics: dict[str, Any], where: str = "metrics") -> None:
    """Raise MetadataError unless `metrics` uses only its family's keys, each with its type."""
    schema = metrics_schema(architecture)
    _check(metrics, schema, where)
    scalars = {f.name for f in dataclasses.fields(schema) if typing.get_type_hints(schema)[f.name] == float | None}
    for seed, values in (metrics.get("other_seeds") or {}).items():
        unknown = sorted(set(values) - scalars)
        if unknown:
            raise MetadataError(f"{where}.other_seeds.{seed}: {unknown} are not scalar metrics of this family; "
                                f"use {sorted(scalars)}")


def clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without unset (None) entries, as config.json stores them."""
    return {k: v for k, v in metrics.items() if v is not None}


# ---------------------------------------------------------------- sampling defaults

Sampler = Literal["ddpm", "ddim", "dpm++2m"]  # a new sampler: add its name here and its branch in sampling.sample_diffusion


@dataclass
class SamplingConfig:
    """How a checkpoint samples unless told otherwise. Diffusion: sampler, steps, eta, guidance (w of
    classifier-free guidance, Ho & Salimans 2022; 0 = the conditional model alone), guidance_interval (guide only
    for lo <= t <= hi), uncond_every (run the unconditional model every k-th guided step). GAN: truncation.
    VAE: temperature."""

    sampler: Sampler = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 2.0
    guidance_interval: tuple[int, ...] | None = None
    uncond_every: int = 1
    truncation: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.sampler not in typing.get_args(Sampler):
            raise MetadataError(f"sampling.sampler={self.sampler!r}; choose from {list(typing.get_args(Sampler))}")
        if self.steps < 1 or self.uncond_every < 1:
            raise MetadataError(f"sampling.steps={self.steps} and sampling.uncond_every={self.uncond_every} must "
                                f"be >= 1")
        if self.sampler == "dpm++2m" and self.uncond_every > 1:  # a stale eps_uncond breaks its multistep extrapolation
            raise MetadataError(f"sampling.uncond_every={self.uncond_every} does not work with sampler dpm++2m "
                                "(accuracy 0.22 at 10 steps); use uncond_every=1, or sampler ddim")
        if self.eta < 0:
            raise MetadataError(f"sampling.eta={self.eta} must be >= 0 (0: deterministic DDIM, 1: DDPM's variance)")
        if self.eta > 0 and self.sampler != "ddim":
            raise MetadataError(f"sampling.eta={self.eta} applies to sampler ddim only, not {self.sampler}; choose "
                                "sampler ddim, or leave eta at 0")
        for key in ("eta", "guidance", "truncation", "temperature"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise MetadataError(f"sampling.{key}={value} must be a finite number")
        if self.guidance_interval is not None and (len(self.guidance_interval) != 2 or self.guidance_interval[0] < 0
                                                   or self.guidance_interval[0] > self.guidance_interval[1]):
            raise MetadataError(f"sampling.guidance_interval={self.guidance_interval} must be two timesteps "
                                f"0 <= LO <= HI, e.g. 200,800")
        if self.truncation is not None and self.truncation <= 0 or self.temperature <= 0:
            raise MetadataError("sampling.truncation and sampling.temperature must be > 0")


DIFFUSION_KEYS = ("sampler", "steps", "eta", "guidance", "guidance_interval", "uncond_every")
MODEL_KEYS = {"unet": DIFFUSION_KEYS, "generator": ("truncation",), "vae": ("temperature",)}


def check_sampling_for(document: dict[str, Any], sampling: SamplingConfig) -> None:
    """Refuse sampling values the checkpoint cannot use: keys of another kind of model, and diffusion steps or a
    guidance interval outside its noise schedule (which would only fail at the next `sample`)."""
    architecture = document.get("architecture", "")
    default, own = SamplingConfig(), MODEL_KEYS.get(architecture, ())
    foreign = [k for f in MODEL_KEYS.values() for k in f
               if k not in own and getattr(sampling, k) != getattr(default, k)]
    if foreign:
        raise MetadataError(f"sampling.{', sampling.'.join(foreign)}: a {architecture or 'model'} checkpoint does not "
                            f"use {'it' if len(foreign) == 1 else 'them'}; "
                            + (f"it takes sampling.{', sampling.'.join(own)}" if own else "it has no sampling options"))
    T = ((document.get("schedule") or {}).get("num_timesteps")) if architecture == "unet" else None
    if T:
        top = T if sampling.sampler == "ddim" else T - 1  # dpm++2m lands on t = 0 without a network call
        if sampling.sampler != "ddpm" and not 1 <= sampling.steps <= top:  # ddpm runs all T, whatever steps says
            raise MetadataError(f"sampling.steps={sampling.steps} must be between 1 and {top} for sampler "
                                f"{sampling.sampler} on this model's {T}-step schedule")
        if sampling.guidance_interval is not None and sampling.guidance_interval[1] > T - 1:
            raise MetadataError(f"sampling.guidance_interval={','.join(map(str, sampling.guidance_interval))} "
                                f"must lie within the schedule's timesteps 0..{T - 1}")


def sampling_config(document: dict[str, Any], **overrides: Any) -> SamplingConfig:
    """The checkpoint's sampling defaults (its config.json `sampling`, else SamplingConfig's), with every override
    that is not None applied: the one place that resolves how to sample."""
    recorded = document.get("sampling") or {}
    _check(recorded, SamplingConfig, "sampling")
    values = {**recorded, **{k: v for k, v in overrides.items() if v is not None}}
    if values.get("guidance_interval") is not None:
        values["guidance_interval"] = tuple(int(v) for v in values["guidance_interval"])
    return SamplingConfig(**values)


def parse_sampling_overrides(items: list[str], base: SamplingConfig | None = None) -> SamplingConfig:
    """`--sampling.guidance=4 --sampling.uncond_every=2` applied to `base` (default SamplingConfig()), each value cast
    to the field's type; an unknown key raises naming the valid ones."""
    from dlcv.config import parse_value

    values = dataclasses.asdict(base or SamplingConfig())
    hints = typing.get_type_hints(SamplingConfig)
    for item in items:
        text = item.removeprefix("--")
        key, eq, raw = text.partition("=")
        if not key.startswith("sampling.") or not eq:
            raise MetadataError(f"{item!r} must look like --sampling.KEY=VALUE, e.g. --sampling.guidance=4")
        key = key.removeprefix("sampling.")
        if key not in hints:
            raise MetadataError(f"unknown sampling key {key!r}; valid keys: {sorted(hints)}")
        values[key] = parse_value(hints[key], raw, f"sampling.{key}")
    return SamplingConfig(**values)


# ---------------------------------------------------------------- rebuild commands

# where it ran, its wall-clock limit and how often it logged or drew samples: none of them changes the weights; the
# precision and memory layout (chosen per machine when "auto") change them by rounding noise only
PLACE_FIELDS = ("data.root", "train.out_dir", "train.device", "train.progress", "train.max_minutes", "train.log_every",
                "train.eval_every", "train.sample_every", "train.tensorboard", "train.amp", "train.channels_last")


# the run options that name a trained checkpoint a run starts from (a refinement's init and peer)
START_KEYS = ("init", "peer")


def is_shipped(path: str | Path) -> bool:
    """A folder under checkpoints/ (relative, or the repository's / $DLCV_CHECKPOINTS): rebuilt by its own list."""
    from dlcv.service import checkpoints_root

    path = Path(path)
    return path.parts[:1] == ("checkpoints",) or checkpoints_root().resolve() in path.resolve().parents


def starts_from(method: dict[str, Any]) -> dict[str, str]:
    """{option: folder} of the checkpoints outside checkpoints/ that a run's method options start from."""
    return {k: str(method[k]) for k in START_KEYS if method.get(k) and not is_shipped(str(method[k]))}


def train_command(preset: str, overrides: list[str], out: str) -> str:
    """The `python -m dlcv train` line that rebuilds a run: a preset plus its overrides."""
    return shlex.join(["python", "-m", "dlcv", "train", preset, *overrides, "--out", out])


def command_of(argv: list[str]) -> str:
    """A `python -m dlcv ...` line for a parsed argv, to append to a checkpoint's rebuild list."""
    return shlex.join(["python", "-m", "dlcv", *argv])


def run_differences(run: Any, resolved: Any) -> dict[str, tuple[Any, Any]]:
    """{field: (recorded, resolved)} for every run field (dotted) in which two RunConfigs (or their dicts) differ,
    PLACE_FIELDS and train.steps aside (check_rebuild compares steps with trained_steps). Methods are compared with
    every option filled in (training.common.recorded_method), so a default changed after a run shows."""
    from dlcv.config import RunConfig, flat_fields, from_dict, override_text, to_dict
    from dlcv.training.common import recorded_method

    def normal(cfg: Any) -> dict[str, Any]:
        return flat_fields({**to_dict(from_dict(RunConfig, cfg) if isinstance(cfg, dict) else cfg),
                            "method": recorded_method(cfg)})

    a, b = normal(run), normal(resolved)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in PLACE_FIELDS and k != "train.steps"
            and override_text(a.get(k)) != override_text(b.get(k))}


def check_rebuild(document: dict[str, Any]) -> list[str]:
    """Problems with a checkpoint's rebuild commands: each must parse with `python -m dlcv`'s argparse; the last
    `train PRESET overrides...` must resolve to the recorded run (PLACE_FIELDS aside) and train at least the recorded
    trained_steps (exactly run.train.steps when none is recorded); a train command that starts from a checkpoint
    (method.init, method.peer) outside checkpoints/ needs an earlier command that writes it (--out)."""
    from dlcv.cli import SAMPLING_COMMANDS, build_parser
    from dlcv.config import apply_overrides
    from dlcv.presets import get_preset

    commands, problems = document.get("rebuild") or [], []
    if not commands:
        return ["no rebuild commands recorded"]
    parser = build_parser()
    parsed = []
    for command in commands:
        argv = shlex.split(command)
        if argv[:3] != ["python", "-m", "dlcv"]:
            problems.append(f"{command!r} is not a `python -m dlcv` command")
            continue
        try:
            args, rest = parser.parse_known_args(argv[3:])
        except SystemExit:
            problems.append(f"{command!r} does not parse")
            continue
        if rest and args.command not in ("train", *SAMPLING_COMMANDS):
            problems.append(f"{command!r}: unrecognised arguments {rest}")
        parsed.append((command, args, rest))
    trains = [(command, args, rest) for command, args, rest in parsed if args.command == "train"]
    if not trains:
        return problems + ["no `python -m dlcv train PRESET ...` command: record the one that trained it"]
    written, resolved = set(), None
    for command, args, rest in parsed:
        if args.command == "train":
            try:
                resolved = apply_overrides(get_preset(args.preset), rest)
            except (KeyError, ValueError, TypeError) as err:
                return problems + [f"{command!r} does not resolve: {err}"]
            for key, start in starts_from(resolved.method).items():
                if Path(start).resolve() not in written:
                    problems.append(f"method.{key}={start}: no earlier rebuild command writes it; record the "
                                    f"command that trains it (--out {start}) first")
        if getattr(args, "out", None):
            written.add(Path(args.out).resolve())
    for key, (recorded, got) in run_differences(document["run"], resolved).items():
        if key == "model.input_norm" and got == "auto":  # resolved from the domains' channels when it trained
            continue
        problems.append(f"{key}: recorded {recorded!r}, the command gives {got!r}")
    trained = document.get("trained_steps")
    steps = document["run"]["train"]["steps"] if trained is None else trained
    if resolved.train.steps < steps or (trained is None and resolved.train.steps != steps):
        problems.append(f"train.steps: the command trains {resolved.train.steps}, the checkpoint {steps}")
    return problems


def _out_of(command: str) -> str | None:
    """The --out of a recorded `python -m dlcv` command (None when it has none or does not parse)."""
    from dlcv.cli import build_parser

    try:
        args, _ = build_parser().parse_known_args(shlex.split(command)[3:])
    except (SystemExit, ValueError):
        return None
    return getattr(args, "out", None)


def commands_that_write(folder: str | Path) -> list[str]:
    """The rebuild commands of the checkpoint in `folder` (ending with one that writes there), for a run that starts
    from it to record before its own; [] when it records none."""
    path = Path(folder) / "config.json"
    try:
        commands = (json.loads(path.read_text()).get("rebuild") or []) if path.is_file() else []
    except (OSError, ValueError, AttributeError):
        return []
    if not commands:
        return []
    last_out = _out_of(commands[-1])
    if last_out and Path(last_out).resolve() != Path(folder).resolve():  # it was copied there afterwards
        commands = [*commands, command_of(["export", last_out, "--out", str(folder)])]
    return commands


def retarget(command: str, out: str | Path, *overrides: str) -> str:
    """A recorded `python -m dlcv train` command with more overrides and another --out (e.g. the final weights of a
    run that selected others: --method.select=last)."""
    argv = shlex.split(command)
    kept = [w for i, w in enumerate(argv)
            if w != "--out" and not w.startswith("--out=") and not (i and argv[i - 1] == "--out")]
    return shlex.join([*kept, *overrides, "--out", str(out)])


# ---------------------------------------------------------------- the whole document


def check_document(document: dict[str, Any], where: str = "config.json") -> None:
    """Raise MetadataError if metrics, sampling or rebuild do not fit the schema."""
    if document.get("metrics"):
        if not isinstance(document["metrics"], dict):
            raise MetadataError(f"{where}: metrics must be an object of {{metric: value}}")
        check_metrics(document.get("architecture", ""), document["metrics"], f"{where}: metrics")
    if document.get("sampling") is not None:
        sampling_config(document)
    rebuild = document.get("rebuild")  # the rebuild commands; check_rebuild parses them
    if rebuild is not None and not (isinstance(rebuild, list) and all(
            isinstance(c, str) and c.startswith("python -m dlcv ") for c in rebuild)):
        raise MetadataError(f"{where}: rebuild must be a list of `python -m dlcv ...` commands")


LEGACY_METRICS = {"accuracy": "digit_accuracy", "smiling_agreement": "attribute_agreement",
                  "smiling_agreement_per_label": "attribute_agreement_per_label"}
LEGACY_PROSE = ("agreement_by", "fid_reference", "training", "measured_with", "measured_by", "pair_identity_by",
                "plain_dcgan_fid", "guidance")  # guidance: a copy of the sampling block's
LEGACY_SAMPLING_PROSE = ("chosen_by",)


def upgrade(document: dict[str, Any]) -> dict[str, Any]:
    """A config.json written before the schema, in the schema: renamed metric keys, prose entries dropped, the
    digit ACGAN's accuracy_other_seeds as other_seeds. Idempotent; other documents come back unchanged."""
    metrics = document.get("metrics")
    if isinstance(metrics, dict):
        upgraded = {}
        for key, value in metrics.items():
            if key in LEGACY_PROSE:
                continue
            if key == "accuracy_other_seeds" and isinstance(value, dict):
                upgraded["other_seeds"] = {seed: {"digit_accuracy": v} for seed, v in value.items()}
            elif key == "other_seeds" and isinstance(value, dict):
                upgraded[key] = {seed: {LEGACY_METRICS.get(k, k): v for k, v in values.items()}
                                 for seed, values in value.items()}
            else:
                upgraded[LEGACY_METRICS.get(key, key)] = value
        document = {**document, "metrics": upgraded}
    sampling = document.get("sampling")
    if isinstance(sampling, dict) and any(k in sampling for k in LEGACY_SAMPLING_PROSE):
        document = {**document, "sampling": {k: v for k, v in sampling.items() if k not in LEGACY_SAMPLING_PROSE}}
    return document


# ---------------------------------------------------------------- type checks


def _check(value: Any, hint: Any, where: str) -> None:
    """Raise MetadataError unless the JSON value fits the type hint (dataclasses as objects with known keys)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MetadataError(f"{where} must be an object with keys {[f.name for f in dataclasses.fields(hint)]}")
        hints = typing.get_type_hints(hint)
        unknown = sorted(set(value) - set(hints))
        if unknown:
            raise MetadataError(f"{where}: unknown key(s) {unknown}; valid keys: {list(hints)}")
        required = [f.name for f in dataclasses.fields(hint)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in value]
        if missing:
            raise MetadataError(f"{where}: missing key(s) {missing}")
        for key, item in value.items():
            _check(item, hints[key], f"{where}.{key}")
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except MetadataError as err:
                errors.append(str(err))
        raise MetadataError(errors[0] if len(errors) == 1 else f"{where}={value!r} does not fit {hint}")
    if origin is Literal:
        if value not in args:
            raise MetadataError(f"{where}={value!r}; choose from {list(args)}")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise MetadataError(f"{where} must be an object, got {type(value).__name__}")
        for key, item in value.items():
            _check(item, args[1], f"{where}.{key}")
        return
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MetadataError(f"{where} must be a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            _check(item, args[0], f"{where}[{i}]")
        return
    ok = {float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}.get(hint)
    if ok is None or not ok(value):
        raise MetadataError(f"{where}={value!r} must be a {getattr(hint, '__name__', hint)}")
