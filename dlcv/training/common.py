"""Plumbing of the engine: MetricLog, every(), Deadline, resume state, the run folder, EMA."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from dlcv.config import RunConfig, to_dict
from dlcv.fileio import atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"


def every(step: int, n: int) -> bool:
    """True on the n-th, 2n-th, ... completed step (step counts from 0); n <= 0 never fires."""
    return n > 0 and (step + 1) % n == 0


class Deadline:
    """train.max_minutes as a clock: `passed()` is True once the budget is spent (never when it is 0)."""

    def __init__(self, minutes: float) -> None:
        self.end = time.monotonic() + 60.0 * minutes if minutes > 0 else None

    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


def run_record(cfg: RunConfig) -> dict[str, Any]:
    """The `run` a checkpoint's config.json records: to_dict(cfg) with cfg.method resolved to every option of its
    family's dataclass, defaults included, so the record says what trained it after a default changes."""
    from dlcv.training import method_config  # lazy: the families import this module

    return {**to_dict(cfg), "method": to_dict(method_config(cfg))}


def recorded_method(run: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """The method section of a run (a config, or a record of any age) as run_record writes it, for comparing: a
    record holding only the options its run set is filled in with the defaults; one that no longer parses (an option
    since removed) is returned as recorded. Only family and method are read, so other sections cannot spoil it."""
    from dlcv.training import parse_method

    if isinstance(run, dict):
        family, method = run.get("family", ""), run.get("method") or {}
    else:
        family, method = run.family, run.method
    try:
        return to_dict(parse_method(family, dict(method)))
    except (KeyError, ValueError, TypeError, AttributeError):  # AttributeError: a value of another type than today's
        return dict(method)


def snapshot_dir(cfg: RunConfig, step: int) -> Path:
    """runs/<name>/snapshots/step_<n>: the shippable model after n steps (train.snapshot_every)."""
    return run_dir(cfg) / "snapshots" / f"step_{step:06d}"


def run_dir(cfg: RunConfig) -> Path:
    """runs/<name>: metrics.jsonl, samples/, state.pt (git-ignored; never read by app or grading)."""
    return Path(cfg.train.out_dir) / cfg.name


class MetricLog:
    """runs/<name>/metrics.jsonl: one JSON line per log point (the engine averages the steps between them).

    `start` is the step the run resumes from. Records past it were written by the interrupted process for steps that
    will now be trained again, so they are dropped (as is a line cut short): the log reads as one run, with no step
    twice, and time_s goes on from the last kept record.
    """

    def __init__(self, path: Path, bar: Any = None, start: int = 0) -> None:
        self.path, self.bar = path, bar
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= start:
                    kept.append(record)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.start = time.perf_counter() - (kept[-1].get("time_s", 0.0) if kept else 0.0)

    def write(self, step: int, values: dict[str, float]) -> None:
        """Append one record (step, time_s, values) and show the values as the tqdm postfix."""
        record = {"step": step, "time_s": round(time.perf_counter() - self.start, 2), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})


def save_state(cfg: RunConfig, step: int, modules: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Atomically write runs/<name>/state.pt: step, config, every module/optimizer state dict, torch RNG."""
    state = {"step": step, "config": run_record(cfg), "rng": torch.get_rng_state(),
             "modules": {k: m.state_dict() for k, m in modules.items()}, "extra": extra or {}}
    atomic_torch_save(state, run_dir(cfg) / STATE_NAME)


def branch_state_path(branch_from: str) -> Path:
    """train.branch_from (a run folder or its state.pt) -> the state file, or an error naming what is missing."""
    path = Path(branch_from)
    if path.is_dir():
        path = path / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"train.branch_from: no saved run state at {path}; give a run folder "
                                f"(runs/<name>, holding {STATE_NAME}) or the state file itself")
    return path


def load_state(cfg: RunConfig, modules: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Resume from runs/<name>/state.pt if present: returns (next step, extra); (0, {}) for a fresh run.

    A fresh run with train.branch_from starts from that run's state instead; its method config may differ (that is
    what a branch is for), its architecture, model and data may not. A state written by a run with another config
    is refused rather than mixed in.
    """
    path = run_dir(cfg) / STATE_NAME
    branching = not path.is_file()
    if branching:
        if not cfg.train.branch_from:
            return 0, {}
        path = branch_state_path(cfg.train.branch_from)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:  # truncated, or not a torch file
        detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:100]
        raise RuntimeError(f"{path} is corrupt or unreadable ({detail}); pass --fresh to start over "
                           f"(or delete it)") from None
    saved, now = state["config"], to_dict(cfg)
    for config in (saved, now):  # data.root is where the data is, not what it is: a run may move to another machine
        config.get("data", {}).pop("root", None)
    if not branching:  # compared with every option filled in, so a default changed since the save is caught
        saved["method"], now["method"] = recorded_method(state["config"]), recorded_method(cfg)
    for section in ("architecture", "model", "data") + (() if branching else ("method",)):
        if saved.get(section) != now.get(section):
            if branching:
                raise RuntimeError(f"train.branch_from: {path} belongs to a run with a different {section} config; "
                                   f"a branch changes only the method (give it the same {section} flags)")
            raise RuntimeError(f"{path} belongs to a run with a different {section} config; "
                               f"pass --fresh to start over or --name to train under another name")
    for k, m in modules.items():
        try:
            m.load_state_dict(state["modules"][k])
        except (KeyError, RuntimeError, ValueError) as err:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            fix = ("a branch may change losses and their weights, not the networks or optimizers" if branching else
                   "pass --fresh to start over or --name to train under another name")
            raise RuntimeError(f"{path}: its {k!r} does not fit this run's ({detail}); {fix}") from None
    torch.set_rng_state(state["rng"])
    log.info("%s %s from step %d%s", "branching" if branching else "resuming", cfg.name, state["step"],
             f" of {path}" if branching else "")
    return state["step"], state["extra"]


class EMA(torch.nn.Module):
    """theta' <- d theta' + (1 - d) theta after each update, with warm-up d_n = min(decay, (1 + n) / (10 + n)) after
    n updates (diffusers' EMAModel), so the random initial weights fade out within the first few hundred steps
    instead of weighing 0.999^n, which is still 13 % after 2,000 steps. Float buffers (batch-norm statistics) are
    averaged too, integer ones copied.

    One fused foreach lerp, and the update count lives in Python: AveragedModel reads its count tensor every step,
    a GPU sync that made EMA runs 6x slower when several runs shared one GPU. The state dict has AveragedModel's
    keys (module.*, n_averaged), so older runs resume.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.updates = decay, 0
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=next(model.parameters()).device))

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        mine = list(self.module.parameters()) + list(self.module.buffers())
        theirs = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
        floats = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
        if self.updates == 0:
            for a, b in zip(mine, theirs):
                a.copy_(b)
        else:
            d = min(self.decay, (1 + self.updates) / (10 + self.updates))
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1.0 - d)
            for a, b in zip(mine, theirs):
                if not a.is_floating_point():
                    a.copy_(b)
        self.updates += 1
        self.n_averaged.fill_(self.updates)  # a host-to-device write: no sync

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)
        return result


def ema_copy(model: torch.nn.Module, decay: float) -> EMA:
    """An EMA of `model` (see EMA), placed on the model's device."""
    return EMA(model, decay)
