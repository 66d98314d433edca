"""Plumbing shared by the training loops: MetricLog, every(), resume state, the run folder."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from dlcv.config import RunConfig, to_dict
from dlcv.fileio import atomic_torch_save

log = logging.getLogger(__name__)

STATE_NAME = "state.pt"


def every(step: int, n: int) -> bool:
    """True on the n-th, 2n-th, ... completed step (step counts from 0); n <= 0 never fires."""
    return n > 0 and (step + 1) % n == 0


def run_dir(cfg: RunConfig) -> Path:
    """runs/<name>: metrics.jsonl, samples/, state.pt (git-ignored; never read by app or grading)."""
    return Path(cfg.train.out_dir) / cfg.name


class MetricLog:
    """Averages step metrics between log points; writes one JSON line per log point and a tqdm postfix."""

    def __init__(self, path: Path, bar: Any = None) -> None:
        self.path, self.bar = path, bar
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.start = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        """Accumulate without .item() (no CPU-GPU sync per step)."""
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.sums[k] = self.sums.get(k, 0) + v
        self.count += 1

    def flush(self, step: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Write the means since the last flush (plus `extra`) and reset."""
        means = {k: round((v / max(self.count, 1)).item(), 6) for k, v in self.sums.items()}
        means.update(extra or {})
        record = {"step": step, "time_s": round(time.perf_counter() - self.start, 2), **means}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
        self.sums, self.count = {}, 0
        return means


def save_state(cfg: RunConfig, step: int, modules: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Atomically write runs/<name>/state.pt: step, config, every module/optimizer state dict, torch RNG."""
    state = {"step": step, "config": to_dict(cfg), "rng": torch.get_rng_state(),
             "modules": {k: m.state_dict() for k, m in modules.items()}, "extra": extra or {}}
    atomic_torch_save(state, run_dir(cfg) / STATE_NAME)


def load_state(cfg: RunConfig, modules: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Resume from runs/<name>/state.pt if present: returns (next step, extra); (0, {}) for a fresh run.

    A state written by a run with another model or data config is refused rather than mixed in.
    """
    path = run_dir(cfg) / STATE_NAME
    if not path.is_file():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved, now = state["config"], to_dict(cfg)
    for section in ("architecture", "model", "data", "method"):
        if saved.get(section) != now.get(section):
            raise RuntimeError(f"{path} belongs to a run with a different {section} config; "
                               f"pass --fresh to start over or --name to train under another name")
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    torch.set_rng_state(state["rng"])
    log.info("resuming %s from step %d", cfg.name, state["step"])
    return state["step"], state["extra"]


def ema_copy(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """EMA of a model's weights (and buffers) with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n
    updates (diffusers' EMAModel), so the random initial weights fade out within the first few hundred steps
    instead of weighing 0.999^n, which is still 13 % after 2,000 steps."""

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay).to(averaged.dtype)
        return d * averaged + (1 - d) * current

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)
