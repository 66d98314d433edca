"""Precision (fp32 or bf16 autocast) and memory layout (default or channels_last), chosen per machine by a short
timed probe of the model at hand and cached in the user cache.

A capability flag cannot pick: bf16 autocast is 2.7x faster than fp32 on a CPU with AMX, slower on one with
AVX512-BF16 but no AMX, and ~10x slower where it is emulated (AVX2 only); channels_last helps some nets and hurts
others. So `choose` times each allowed combination on the real model and batch, keeps the fastest, and remembers it
under (device, torch version, threads, kind, model, batch size). The flags only rule out: a CPU with no bf16
instructions (emulated there, ~10x slower) is not timed in bf16, where timing it costs minutes per new model.
An explicit setting always wins: `fp32`/`bf16` pins the precision, `true`/`false` the layout, and only what is left
open is probed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlcv.fileio import atomic_write_text

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "bf16", "fp32")
LAYOUT_CHOICES = ("auto", "true", "false")
CACHE_NAME = "precision.json"
# A combination other than plain fp32 / default layout must beat it by this much to be picked: the auto choice is
# then always >= 1 / 1.03 = 0.97x the fastest one the probe measured, and noise does not flip it to bf16.
MARGIN = 1.03


@dataclass(frozen=True)
class Choice:
    """One combination: bf16 autocast on or off, channels_last on or off."""

    bf16: bool = False
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def label(self) -> str:
        return f"{'bf16' if self.bf16 else 'fp32'} + {'channels_last' if self.channels_last else 'default layout'}"

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """bf16 autocast on `device` for this choice, else a no-op."""
        device = torch.device(device)
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def to_dict(self) -> dict[str, Any]:
        return {"amp": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last}


FP32 = Choice()


def normalize_amp(value: Any) -> str:
    """train.amp as one of AMP_CHOICES; the booleans of older configs map to auto (True) and fp32 (False)."""
    if isinstance(value, bool):
        return "auto" if value else "fp32"
    text = str(value).lower()
    aliases = {"true": "auto", "false": "fp32", "on": "auto", "off": "fp32", "1": "auto", "0": "fp32"}
    text = aliases.get(text, text)
    if text not in AMP_CHOICES:
        raise ValueError(f"amp={value!r} is not allowed; choose from {list(AMP_CHOICES)}")
    return text


def normalize_layout(value: Any) -> str:
    """train.channels_last as one of LAYOUT_CHOICES; booleans (older configs) map to 'true' / 'false'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).lower()
    text = {"1": "true", "0": "false", "yes": "true", "no": "false", "on": "true", "off": "false"}.get(text, text)
    if text not in LAYOUT_CHOICES:
        raise ValueError(f"channels_last={value!r} is not allowed; choose from {list(LAYOUT_CHOICES)}")
    return text


def bf16_available(device: torch.device) -> bool:
    """Whether bf16 autocast runs on `device` at all (natively or emulated): the probe decides if it pays."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the first CPU in a /proc/cpuinfo text: x86 says `flags`, Arm `Features`."""
    model, flags = "cpu", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "cpu":
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """This CPU's model name and feature flags ("cpu" and no flags without /proc/cpuinfo)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return "cpu", frozenset()


# bf16 dot products in hardware: x86 AVX512-BF16 or AMX, Arm's BF16 extension
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_bf16() -> str:
    """The CPU's bf16: "native" where it has bf16 instructions, "emulated" where its flags show none, "unknown"
    without flags (no /proc/cpuinfo). Only "emulated" keeps bf16 out of what auto times."""
    flags = cpu_info()[1]
    if not flags:
        return "unknown"
    return "native" if any(f in flags for f in BF16_FLAGS) else "emulated"


def bf16_may_pay(device: torch.device) -> bool:
    """Whether the probe times bf16 autocast on `device`: wherever it runs, except on a CPU that emulates it. (It
    stays among the candidates there, so a run resumed in bf16 or a pinned amp=bf16 still runs.)"""
    return bf16_available(device) and not (device.type == "cpu" and cpu_bf16() == "emulated")


def candidates(amp: Any, channels_last: Any, device: torch.device | str) -> list[Choice]:
    """The combinations that the settings leave open, plain fp32 / default layout first. $DLCV_AMP and
    $DLCV_CHANNELS_LAST (same values) stand in for a setting left on auto, e.g. DLCV_AMP=fp32 for a whole command."""
    device = torch.device(device)
    amp, layout = normalize_amp(amp), normalize_layout(channels_last)
    if amp == "auto":
        amp = normalize_amp(os.environ.get("DLCV_AMP") or "auto")
    if layout == "auto":
        layout = normalize_layout(os.environ.get("DLCV_CHANNELS_LAST") or "auto")
    precisions = {"fp32": [False], "bf16": [True], "auto": [False, True]}[amp]
    if amp == "auto" and not bf16_available(device):
        precisions = [False]
    if amp == "bf16" and not bf16_available(device):
        raise ValueError(f"amp=bf16 asked for, but {device} has no bf16 autocast; use amp=fp32 or auto")
    layouts = {"false": [False], "true": [True], "auto": [False, True]}[layout]
    return [Choice(p, c) for p in precisions for c in layouts]


def device_name(device: torch.device | str) -> str:
    """What the speed of a combination depends on: the GPU's name, or the CPU's model and instruction set."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    model, flags = cpu_info()
    isa = torch.backends.cpu.get_cpu_capability()
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return " ".join([model, f"[{isa}{''.join('+' + f for f in extras)}]"])


def cache_path() -> Path:
    """$DLCV_CACHE/precision.json, else ~/.cache/dlcv/precision.json."""
    return Path(os.environ.get("DLCV_CACHE") or Path.home() / ".cache" / "dlcv") / CACHE_NAME


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _cached(entry: Any, options: list[Choice]) -> Choice | None:
    """A cache entry as a Choice, if it is well-formed and one of the options still open."""
    if not isinstance(entry, dict) or not isinstance(entry.get("bf16"), bool) \
            or not isinstance(entry.get("channels_last"), bool):
        return None
    choice = Choice(entry["bf16"], entry["channels_last"])
    return choice if choice in options else None


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """The probe runs real steps; the run's random streams must come out as if it had not."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_options(options: list[Choice], run: Callable[[Choice], Any], device: torch.device, repeats: int = 3,
                 warmup: int = 2) -> dict[Choice, float]:
    """Seconds per call of run(choice) for each option: `warmup` untimed calls each (oneDNN builds its kernels for
    a dtype and layout on first use; an optimizer creates its state), then `repeats` rounds in turn (so load that
    comes and goes hits every option alike), best round kept."""
    best = {c: float("inf") for c in options}
    with _rng_preserved():
        for choice in options:
            for _ in range(warmup):
                run(choice)
        for _ in range(repeats):
            for choice in options:
                _sync(device)
                start = time.perf_counter()
                run(choice)
                _sync(device)
                best[choice] = min(best[choice], time.perf_counter() - start)
    return best


def pick(seconds: dict[Choice, float]) -> Choice:
    """The fastest option, except that the first (plain) option is kept unless another beats it by MARGIN."""
    first = next(iter(seconds))
    fastest = min(seconds, key=seconds.get)
    return fastest if seconds[first] > MARGIN * seconds[fastest] else first


def describe(choice: Choice, seconds: dict[Choice, float]) -> str:
    """One line: "bf16 + channels_last: 1.90x fp32 on this machine" or "fp32 + default layout: bf16 is 0.87x here"."""
    plain = seconds.get(FP32)
    if plain is None:
        return f"{choice.label} (of {', '.join(c.label for c in seconds)})"
    if choice != FP32:
        return f"{choice.label}: {plain / seconds[choice]:.2f}x fp32 on this machine"
    others = {c: plain / s for c, s in seconds.items() if c != FP32}
    if not others:
        return f"{choice.label} (asked)"
    other, ratio = max(others.items(), key=lambda kv: kv[1])
    return f"{choice.label}: {other.label} is {ratio:.2f}x here"


def choose(kind: str, model_key: str, batch_size: int, run: Callable[[Choice], Any], device: torch.device | str,
           amp: Any = "auto", channels_last: Any = "auto", repeats: int = 3) -> Choice:
    """choose_explained() without the line."""
    return choose_explained(kind, model_key, batch_size, run, device, amp, channels_last, repeats)[0]


def choose_explained(kind: str, model_key: str, batch_size: int, run: Callable[[Choice], Any],
                     device: torch.device | str, amp: Any = "auto", channels_last: Any = "auto", repeats: int = 3,
                     ) -> tuple[Choice, str]:
    """The combination to use for `kind` ("train", "sample", "predict", ...) of `model_key` at `batch_size`.

    Pinned settings leave one option and nothing is timed. Otherwise the cached choice for this device, torch
    version and thread count is used, or the options are timed with run(choice) (which must do one representative
    call: a training update, a forward pass) and the result cached. Logs one line saying what was chosen and why.
    """
    device = torch.device(device)
    options = candidates(amp, channels_last, device)
    if len(options) == 1:
        return options[0], f"{options[0].label} (asked)"
    if not bf16_may_pay(device):
        options = [o for o in options if not o.bf16]
        if len(options) == 1:
            return options[0], f"{options[0].label} (bf16 is emulated on this CPU)"
    key = " | ".join([device_name(device), f"torch {torch.__version__}", f"{torch.get_num_threads()} threads",
                      kind, model_key, f"batch {batch_size}", ",".join(c.label for c in options)])
    path = cache_path()
    cache = _read_cache(path)
    hit = _cached(cache.get(key), options)
    if hit is not None:
        line = f"{cache[key].get('line', hit.label)} (cached)"
        log.info("%s %s: %s", kind, model_key, line)
        return hit, line
    seconds = time_options(options, run, device, repeats)
    choice = pick(seconds)
    line = describe(choice, seconds)
    log.info("%s %s (batch %d): %s", kind, model_key, batch_size, line)
    cache = _read_cache(path)  # re-read: another process may have written meanwhile
    cache[key] = {"bf16": choice.bf16, "channels_last": choice.channels_last, "line": line,
                  "seconds": {c.label: round(s, 6) for c, s in seconds.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as err:  # a read-only home: the choice still holds for this process
        log.warning("could not cache the precision choice in %s (%s)", path, err)
    return choice, line


@torch.no_grad()
def for_inference(model: torch.nn.Module, kind: str, batch_size: int, forward: Callable[[Choice], Any],
                  device: torch.device | str = "cpu", amp: Any = "auto", channels_last: Any = "auto") -> Choice:
    """choose() for a model in eval mode: `forward(choice)` runs one representative batch (inputs in
    choice.memory_format). The model is left in the chosen memory layout; wrap the real calls in
    choice.autocast(device)."""
    def run(choice: Choice) -> None:
        model.to(memory_format=choice.memory_format)
        with choice.autocast(device):
            forward(choice)

    key = f"{type(model).__name__} {json.dumps(_config_dict(model), sort_keys=True)}"
    choice = choose(kind, key, batch_size, run, device, amp, channels_last, repeats=2)
    model.to(memory_format=choice.memory_format)
    return choice


def _config_dict(model: torch.nn.Module) -> Any:
    from dlcv.config import to_dict

    config = getattr(model, "config", None)
    return to_dict(config) if config is not None else None
