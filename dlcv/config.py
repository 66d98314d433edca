"""Typed run configuration: DataConfig, TrainConfig, RunConfig, dict round trips and `--train.lr=1e-4` overrides."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_SEED = 2**32 - 1  # seeds are 0 .. MAX_SEED: numpy's and torch's generators take no other

DEFAULT_DATA_ROOT = "data"


def default_data_root() -> str:
    """The course-layout data root: $DLCV_DATA if set, else ./data."""
    return os.environ.get("DLCV_DATA", DEFAULT_DATA_ROOT)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """Raise a ValueError naming the field and the allowed values."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; choose from {list(choices)}")


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, typing.get_args(hints[f.name])) for f in dataclasses.fields(cls)
                 if typing.get_origin(hints[f.name]) is Literal)


def check_at_least(config: Any, section: str, least: int, *names: str) -> None:
    """Sizes a network is built from (widths, channels, classes): refused here, not as a tensor-shape error later."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, int) and value < least:  # another type is the typed round trip's to name
            raise ValueError(f"{section}.{name}={value} must be at least {least}")


def check_literals(config: Any, section: str) -> None:
    """check_choice on every Literal-typed field of a config dataclass, so its choices are written once, in the type."""
    for name, choices in _literal_fields(type(config)):
        check_choice(f"{section}.{name}", getattr(config, name), choices)


@dataclass
class DataConfig:
    """Which split of the course layout a run reads, and at which size."""

    root: str = field(default_factory=default_data_root)
    dataset: Literal["face", "digits"] = "digits"
    domain: str = "mnistm"  # digits: the (source) domain folder under <root>/digits/
    target_domain: str = ""  # digits UDA: the unlabelled target domain, "" for none
    attribute: str = ""  # faces: the 0/1 attribute column used as label, "" for none
    image_size: int = 28
    channels: int = 3  # grey domains are replicated to 3 channels when 3 is asked for

    def __post_init__(self) -> None:
        check_literals(self, "data")
        check_choice("data.channels", self.channels, (1, 3))


@dataclass
class TrainConfig:
    """Optimisation schedule, the same meaning in every family (a family refuses a field it cannot honour, by name).
    Steps count optimizer updates, never epochs."""

    steps: int = 1000
    batch_size: int = 64  # global: under torchrun each of N processes takes batch_size / N images of every batch
    lr: float = 2e-4  # the peak learning rate (each family's schedule scales it)
    betas: tuple[float, ...] = (0.5, 0.999)
    weight_decay: float = 0.0  # on every optimized network
    seed: int = 0
    log_every: int = 50  # one metrics.jsonl line (and TensorBoard scalars) per n steps, and at the end
    eval_every: int = 0  # > 0: the family's evaluation (val accuracy, val MSE) every n steps; at the end always
    sample_every: int = 0  # > 0: a sample grid (samples/step_n.png + TensorBoard) every n steps and at the end
    save_every: int = 500  # state.pt (resume) every n steps and at the end
    ema_decay: float = 0.0  # > 0: an EMA of the shipped network at this decay is what ships; 0 disables EMA
    max_minutes: float = 0.0  # > 0: stop at this wall-clock budget, saving state and checkpoint
    snapshot_every: int = 0  # > 0: also write the shippable model every n steps, to pick the best one by a metric
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" | "mps"; under torchrun each rank's local GPU
    # "auto" | "bf16" | "fp32" and "auto" | "true" | "false": auto times each combination on a real training step of
    # this run and keeps the fastest (dlcv.precision; cached per machine, model and batch); an explicit value wins.
    # Booleans of older configs still read: amp true = auto, false = fp32
    amp: str = "auto"
    channels_last: str = "auto"
    deterministic: bool = False
    progress: bool = True
    out_dir: str = "runs"
    # a run folder (or its state.pt): a fresh run starts from that run's saved state (weights, optimizers, EMA,
    # step) under its own method config, e.g. to add a loss part-way; model and data must be the same
    branch_from: str = ""
    tensorboard: bool = True  # event files in runs/<name>/tensorboard (needs the tensorboard package)
    sync_batchnorm: bool = False  # under torchrun on GPUs: batch-norm statistics over the global batch
    dist_timeout_minutes: float = 10.0  # under torchrun: a rank waiting this long on the others ends the run

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"train.steps must be >= 0 and train.batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"train.lr={self.lr} must be a positive number, e.g. --train.lr=2e-4")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas={','.join(map(str, self.betas))} must be two numbers in [0, 1), "
                             f"e.g. --train.betas=0.9,0.999")
        from dlcv.precision import normalize_amp, normalize_layout  # lazy: precision needs torch

        try:
            self.amp, self.channels_last = normalize_amp(self.amp), normalize_layout(self.channels_last)
        except ValueError as err:
            raise ValueError(f"train.{err}") from None


@dataclass
class RunConfig:
    """One training run: a family, an architecture with its model config, data and schedule."""

    name: str
    family: str  # key of dlcv.training.FAMILIES
    architecture: str  # key of dlcv.models.ARCHITECTURES
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: dict[str, Any] = field(default_factory=dict)  # the family's method dataclass as a dict

    def __post_init__(self) -> None:
        # the name is a folder under train.out_dir that --fresh empties: never a path
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*", self.name or ""):
            raise ValueError(f"name={self.name!r} is not a plain run name; use letters, digits and _ . + = - "
                             f"(it names the folder <train.out_dir>/<name>), e.g. --name=dann_s0")


def to_dict(cfg: Any) -> Any:
    """Dataclass (nested) -> plain JSON-able dict; tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Plain dict -> dataclass `cls`, recursively; an unknown key raises naming the valid ones."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a dict for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise KeyError(f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        if cls is RunConfig and key == "model":
            continue
        kwargs[key] = _coerce(hints[key], value, f"{cls.__name__}.{key}")
    if cls is RunConfig:
        from dlcv.models import model_config_class  # lazy: models sit above config in the import flow

        kwargs["model"] = from_dict(model_config_class(data["architecture"]), data.get("model", {}))
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Turn a JSON value into the declared type (lists -> tuples, nested dicts -> dataclasses)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, where) for v in value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# ---------------------------------------------------------------- overrides ("--train.lr=1e-4")


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a copy of `cfg` with `section.key=value` overrides applied, each cast to the field's type."""
    cfg = from_dict(RunConfig, to_dict(cfg))  # deep copy through the typed round trip
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --section.key=value, e.g. --train.lr=1e-4")
        path, raw = text.split("=", 1)
        parts = path.split(".")
        target: Any = cfg
        for part in parts[:-1]:
            if isinstance(target, dict) and isinstance(target.get(part), dict):  # method.schedule.kind=...
                target = target[part]
                continue
            if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
                raise KeyError(f"unknown override key {path!r}; valid sections: {_valid_keys(cfg)}")
            target = getattr(target, part)
        key = parts[-1]
        if isinstance(target, dict):  # RunConfig.method: free-form, values parsed as literals
            target[key] = _parse_literal(raw)
            continue
        fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
        if key not in fields or dataclasses.is_dataclass(getattr(target, key)):
            raise KeyError(f"unknown override key {path!r}; valid keys: {_valid_keys(cfg)}")
        hint = typing.get_type_hints(type(target))[key]
        setattr(target, key, parse_value(hint, raw, path))
    # re-run __post_init__ checks on every section so an override cannot smuggle in a bad choice
    return from_dict(RunConfig, to_dict(cfg))


def flat_fields(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config dict (nested) as {"section.key": value}: the keys apply_overrides takes."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flat_fields(item, f"{prefix}{key}.").items()}
    return {prefix[:-1]: value}


def override_text(value: Any) -> str:
    """A config value as apply_overrides parses it back (true/none, tuples as a,b,c)."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return ",".join(override_text(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _valid_keys(cfg: RunConfig) -> list[str]:
    keys = []
    for section in ("model", "data", "train"):
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(getattr(cfg, section))]
    keys += [f"method.{k}" for k in cfg.method] + ["name"]
    return keys


def parse_value(hint: Any, raw: str, where: str) -> Any:
    """Cast the string `raw` to `hint` (int, float, bool, str, Literal, tuple[...], Optional)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(f"{where}={raw!r} is not allowed; choose from {list(args)}")
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(arg, raw, where)
            except ValueError:
                continue
        raise ValueError(f"{where}={raw!r} does not parse as {hint}")
    if origin is tuple:
        inner = args[0] if args else str
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        return tuple(parse_value(inner, s.strip(), where) for s in items)
    if hint is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}={raw!r} is not a boolean; use true or false")
    if hint in (int, float):
        try:
            return hint(raw) if hint is float else int(raw)
        except ValueError:
            raise ValueError(f"{where}={raw!r} is not a valid {hint.__name__}") from None
    if hint is str or hint is Any:
        return raw
    raise ValueError(f"{where}: cannot parse a value of type {hint}")


def _parse_literal(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return raw
