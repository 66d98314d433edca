"""train_classifier: a supervised classifier on one digits domain or one face attribute (e.g. the Smiling
classifier that checks the ACGAN). Model selection on val; test is measured once, at the end."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dlcv import checkpoint
from dlcv.config import RunConfig, to_dict
from dlcv.data.loaders import infinite, load_split, make_loader, to_model_range
from dlcv.metrics import accuracy, predict_logits
from dlcv.models import build_model
from dlcv.runtime import autocast, memory_format, pick_device, seed_everything, set_deterministic
from dlcv.training.common import MetricLog, every, load_state, run_dir, save_state

log = logging.getLogger(__name__)


def warmup_cosine(step: int, total: int, warmup: float = 0.05) -> float:
    """LR factor: linear warm-up over the first 5 % of steps, then cosine decay to 0."""
    w = max(1, int(total * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def train_classifier(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """Train, keep the best-on-val weights, write the checkpoint (default runs/<name>/checkpoint); return its path."""
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    fmt = memory_format(cfg.train.channels_last)
    x_train, y_train = load_split(cfg.data, "train")
    x_val, y_val = load_split(cfg.data, "val")
    if y_train is None:
        raise ValueError("a classifier needs labels: set --data.attribute for faces (e.g. Smiling)")
    model = build_model(cfg.architecture, cfg.model).to(device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                            weight_decay=cfg.train.weight_decay)
    # the schedule is a function of the *current* config, so a resumed run may extend train.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(warmup_cosine, total=cfg.train.steps))
    best_dir = run_dir(cfg) / "best"
    start, extra = load_state(cfg, {"model": model, "opt": opt, "sched": sched})
    # the best weights live in this run's folder: a branch of another run (or a deleted best/) selects afresh
    best = extra.get("best_val", -1.0) if (best_dir / checkpoint.CONFIG_NAME).is_file() else -1.0
    # a resumed run reshuffles from a new seed rather than replaying the first batches again
    batches = infinite(make_loader(x_train, y_train, batch_size=cfg.train.batch_size, seed=cfg.train.seed + start))
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=cfg.name,
               disable=not cfg.train.progress)
    metrics = MetricLog(run_dir(cfg) / "metrics.jsonl", bar, start)
    model.train()
    for step in bar:
        x, y = next(batches)
        x = to_model_range(x).to(device, memory_format=fmt)
        y = y.to(device)
        with autocast(device, cfg.train.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=float(cfg.method.get("label_smoothing", 0.0)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        metrics.add({"loss": loss, "acc": (logits.argmax(1) == y).float().mean()})
        last = step + 1 == cfg.train.steps
        extra_log = {}
        if every(step, cfg.train.eval_every) or last:
            val_acc = accuracy(predict_logits(model, x_val, device=device).argmax(1), y_val)
            extra_log["val_acc"] = round(val_acc, 5)
            if val_acc > best:
                best = val_acc
                checkpoint.save(model, best_dir, {"run": to_dict(cfg), "step": step + 1})
        if every(step, cfg.train.log_every) or last or extra_log:
            metrics.flush(step + 1, extra_log)
        if every(step, cfg.train.save_every) or last:
            save_state(cfg, step + 1, {"model": model, "opt": opt, "sched": sched}, {"best_val": best})
    if not (best_dir / checkpoint.CONFIG_NAME).is_file():
        raise RuntimeError(f"{cfg.name}: no evaluation ran, so there is no best model; use --train.steps >= 1")
    model, document = checkpoint.load(best_dir, device=device)
    result = {"val_accuracy": accuracy(predict_logits(model, x_val, device=device).argmax(1), y_val),
              "best_step": document["step"]}
    try:
        x_test, y_test = load_split(cfg.data, "test")
        result["test_accuracy"] = accuracy(predict_logits(model, x_test, device=device).argmax(1), y_test)
    except ValueError as err:  # course hw2_data has no test split
        log.info("no test split measured: %s", err)
    out = Path(out) if out else run_dir(cfg) / "checkpoint"
    checkpoint.save(model, out, {"run": to_dict(cfg), "metrics": {k: round(v, 5) for k, v in result.items()}})
    log.info("%s: %s -> %s", cfg.name, result, out)
    return out
