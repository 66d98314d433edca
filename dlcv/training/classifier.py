"""The classifier family: a supervised classifier on one digits domain or one face attribute (e.g. the Smiling
classifier that checks the ACGAN). Model selection on val; test is measured once, at the end."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dlcv import checkpoint
from dlcv.config import from_dict
from dlcv.data.loaders import load_split, to_model_range
from dlcv.metrics import accuracy, predict_logits
from dlcv.models import build_model
from dlcv.training.common import run_dir, run_record
from dlcv.training.engine import Algorithm, Context

log = logging.getLogger(__name__)


@dataclass
class ClassifierMethod:
    """cfg.method of a classifier run (a key that is not a field raises)."""

    label_smoothing: float = 0.0  # cross-entropy against (1 - eps) one-hot + eps / K (Szegedy et al. 2016)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"method.label_smoothing={self.label_smoothing} must be in [0, 1)")


def warmup_cosine(step: int, total: int, warmup: float = 0.05) -> float:
    """LR factor: linear warm-up over the first 5 % of steps, then cosine decay to 0."""
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


class Classifier(Algorithm):
    """AdamW on cross-entropy with warm-up + cosine; keeps the best-on-val weights in runs/<name>/best."""

    REFUSES = {"ema_decay": "the classifier ships its best-on-val weights, not an average"}

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        self.method = from_dict(ClassifierMethod, dict(cfg.method))
        self.x_train, self.y_train = load_split(cfg.data, "train")
        self.x_val, self.y_val = load_split(cfg.data, "val")
        if self.y_train is None:
            raise ValueError("a classifier needs labels: set --data.attribute for faces (e.g. Smiling)")
        self.model = ctx.precision.place(build_model(cfg.architecture, cfg.model))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                     weight_decay=cfg.train.weight_decay)
        # the schedule is a function of the *current* config, so a resumed run may extend train.steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, partial(warmup_cosine, total=cfg.train.steps))
        self.best_dir = run_dir(cfg) / "best"
        self.best = -1.0

    def state_modules(self) -> dict[str, Any]:
        return {"model": self.model, "opt": self.opt, "sched": self.sched}

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        # the best weights live in this run's folder: a branch of another run (or a deleted best/) selects afresh
        self.best = extra.get("best_val", -1.0) if (self.best_dir / checkpoint.CONFIG_NAME).is_file() else -1.0
        self.model.train()

    def train_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train

    def update(self, step: int, batches) -> dict[str, torch.Tensor]:
        x, y = next(batches)
        x = to_model_range(x).to(self.ctx.device, memory_format=self.ctx.precision.fmt)
        y = y.to(self.ctx.device)
        with self.ctx.precision.autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.method.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    def evaluate(self, step: int) -> dict[str, float]:
        val_acc = accuracy(predict_logits(self.model, self.x_val, device=self.ctx.device).argmax(1), self.y_val)
        if val_acc > self.best:
            self.best = val_acc
            if self.ctx.main:
                checkpoint.save(self.model, self.best_dir, {"run": run_record(self.cfg), "step": step})
        return {"val_acc": round(val_acc, 5)}

    def extra_state(self) -> dict[str, Any]:
        return {"best_val": self.best}

    def shipped(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        return self.model, {}

    def export(self, out: Path, done: int) -> Path:
        """The best-on-val weights, with their val and test accuracy."""
        cfg, device = self.cfg, self.ctx.device
        if not (self.best_dir / checkpoint.CONFIG_NAME).is_file():
            raise RuntimeError(f"{cfg.name}: no evaluation ran, so there is no best model; use --train.steps >= 1")
        model, document = checkpoint.load(self.best_dir, device=device)
        result = {"val_accuracy": accuracy(predict_logits(model, self.x_val, device=device).argmax(1), self.y_val),
                  "best_step": document["step"]}
        try:
            x_test, y_test = load_split(cfg.data, "test")
            result["test_accuracy"] = accuracy(predict_logits(model, x_test, device=device).argmax(1), y_test)
        except ValueError as err:  # course hw2_data has no test split
            log.info("no test split measured: %s", err)
        checkpoint.save(model, out, {"run": run_record(cfg), "metrics": {k: round(v, 5) for k, v in result.items()}})
        log.info("%s: %s", cfg.name, result)
        return out
