"""The training engine: the one loop every family runs (seed, device, precision, torch.distributed, sharded batches,
resume state, metrics.jsonl + TensorBoard, the log / eval / sample / snapshot / save ladder, the deadline, the final
export). A family is an `Algorithm`: its maths only, behind `update(step, batches) -> dict`.

Under `torchrun` every rank runs this loop on its own shard of each epoch. `train.batch_size` is the global batch:
each of N ranks takes batch_size / N images of it, so N ranks see the same images per step as one process. Gradients
are averaged across ranks before every optimizer step (what DistributedDataParallel does; see `Distributed`), float
buffers (batch-norm statistics, EMA copies, spectral-norm vectors) are copied from rank 0 after every step, and only
rank 0 writes files.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from tqdm import tqdm

from dlcv import checkpoint, precision
from dlcv.fileio import listing, pid_alive
from dlcv.config import RunConfig, TrainConfig, to_dict
from dlcv.data.loaders import to_image_range
from dlcv.precision import Choice
from dlcv.runtime import pick_device, seed_everything, set_deterministic
from dlcv.training.common import (EMA, METRICS_NAME, STATE_NAME, Deadline, MetricLog, every, load_state, run_dir,
                                  run_record, save_state, snapshot_dir)

log = logging.getLogger(__name__)

RANK_SEED_STRIDE = 1_000_003  # rank r draws its noise from seed + r * stride: ranks differ, rank 0 is the 1-process run
LOCK_NAME = "run.lock"


# ---------------------------------------------------------------- precision: the one place that decides it


@dataclass
class Precision:
    """Autocast and memory format of a run. Families call `place(module)`, `autocast()` and read `fmt`, nothing else.
    `options` are the combinations train.amp / train.channels_last leave open; `resolve_precision` pins them to
    one before a run is built."""

    device: torch.device
    choice: Choice
    options: tuple[Choice, ...] = ()

    @property
    def fmt(self) -> torch.memory_format:
        return self.choice.memory_format

    @property
    def amp(self) -> bool:
        return self.choice.bf16

    def place(self, module: nn.Module) -> nn.Module:
        """Move a network to the run's device and memory format."""
        return module.to(self.device, memory_format=self.fmt)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when the run's choice is bf16, else a no-op."""
        return self.choice.autocast(self.device)

    def use(self, choice: Choice, modules: dict[str, Any]) -> None:
        """Switch to `choice`, moving every network among `modules` to its memory format."""
        self.choice = choice
        for module in modules.values():
            if isinstance(module, nn.Module):
                module.to(memory_format=choice.memory_format)


def _choice_of(entry: Any) -> Choice | None:
    """A Choice from its to_dict() form (state.pt's record), None if absent or malformed."""
    if not isinstance(entry, dict) or entry.get("amp") not in ("bf16", "fp32") \
            or not isinstance(entry.get("channels_last"), bool):
        return None
    return Choice(entry["amp"] == "bf16", entry["channels_last"])


def choose_precision(train: TrainConfig, device: torch.device) -> Precision:
    """The run's precision options from train.amp / train.channels_last. A deterministic run resolves "auto" to fp32
    and the default layout: the same seed then gives the same weights whatever machine the probe ran on."""
    amp, layout = train.amp, train.channels_last
    if train.deterministic:
        amp, layout = ("fp32" if amp == "auto" else amp), ("false" if layout == "auto" else layout)
    options = tuple(precision.candidates(amp, layout, device))
    return Precision(device=device, choice=options[0], options=options)


def resolve_precision(cfg: RunConfig, family: type[Algorithm], dist_: Distributed) -> RunConfig:
    """`cfg` with train.amp and train.channels_last pinned to what this run uses, so config.json and state.pt record
    it. With options left open ("auto"), a resumed run keeps what it started with (the same numerics as an unbroken
    run); a fresh one times real updates of a throwaway copy of the family on rank 0, which every rank then uses. The
    copy is discarded and the run built afresh (and re-seeded), so the probe changes its speed, never its weights."""
    device = dist_.device(cfg.train)
    options = list(choose_precision(cfg.train, device).options)
    choice, line = options[0], ""
    if len(options) > 1:
        before = _choice_of(_saved_extra(cfg).get("precision"))
        if before in options:
            choice, line = before, f"{before.label} (as before the resume)"
        else:
            if dist_.main:
                choice, line = _probe(pinned(cfg, options[0]), family, dist_, options)
                gc.collect()  # the throwaway copy's data and networks
            choice = options[dist_.share_index(options.index(choice))]
        if dist_.main:
            log.info("%s trains in %s", cfg.name, line or choice.label)
    return pinned(cfg, choice)


def pinned(cfg: RunConfig, choice: Choice) -> RunConfig:
    """`cfg` with its precision fixed to `choice`."""
    train = replace(cfg.train, amp="bf16" if choice.bf16 else "fp32",
                    channels_last="true" if choice.channels_last else "false")
    return replace(cfg, train=train)


def _probe(cfg: RunConfig, family: type[Algorithm], dist_: Distributed, options: list[Choice]) -> tuple[Choice, str]:
    algo = start(cfg, family, dist_)
    modules = algo.state_modules()
    algo.begin(0, {})
    batches = algo.batches(0)

    def run(option: Choice) -> None:
        algo.ctx.precision.use(option, modules)
        algo.update(0, batches)

    key = f"{cfg.family} {cfg.architecture} " + json.dumps({"model": to_dict(cfg.model), "method": cfg.method},
                                                            sort_keys=True)
    amp = "auto" if len({o.bf16 for o in options}) > 1 else cfg.train.amp
    layout = "auto" if len({o.channels_last for o in options}) > 1 else cfg.train.channels_last
    return precision.choose_explained("train", key, algo.ctx.batch_size, run, algo.ctx.device, amp, layout)


def _saved_extra(cfg: RunConfig) -> dict[str, Any]:
    """The `extra` of the run's state.pt (what a resume would read), {} for a fresh or unreadable one."""
    path = run_dir(cfg) / STATE_NAME
    if not path.is_file():
        return {}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # load_state reports an unreadable state with its fix; here it only means "no record"
        return {}
    return state.get("extra", {}) if isinstance(state, dict) else {}


# ---------------------------------------------------------------- torch.distributed


class Distributed:
    """The process group under torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment); a 1-process stand-in
    otherwise, whose methods do nothing."""

    def __init__(self, train: TrainConfig) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.hooks: list[Any] = []
        if self.world > 1 and not dist.is_initialized():
            # one group for the life of the process (destroyed at exit): torchrun's store cannot host a second one
            device = pick_device(train.device)
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend, timeout=timedelta(minutes=train.dist_timeout_minutes))
            atexit.register(_destroy_group)

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes logs, samples, state and checkpoints."""
        return self.rank == 0

    def device(self, train: TrainConfig) -> torch.device:
        """train.device, with CUDA pinned to this rank's local GPU under torchrun."""
        device = pick_device(train.device)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        return device

    def agree(self, ok: bool) -> bool:
        """True when every rank says ok (a collective: every rank must call it at the same point)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([1 if ok else 0], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def share_index(self, index: int) -> int:
        """Rank 0's `index` on every rank (a collective: every rank must call it at the same point)."""
        if self.world == 1:
            return index
        value = torch.tensor([index], dtype=torch.int64)
        dist.broadcast(value, src=0)
        return int(value.item())

    def prepare(self, modules: dict[str, Any], train: TrainConfig, device: torch.device) -> None:
        """Make every rank start from rank 0's weights and average gradients before each optimizer step."""
        if self.world == 1:
            return
        nets = [m for m in modules.values() if isinstance(m, nn.Module)]
        if train.sync_batchnorm:
            for net in nets:
                if not isinstance(net, EMA):  # the EMA copy is never trained, so it needs no batch statistics
                    nn.SyncBatchNorm.convert_sync_batchnorm(net)
        for net in nets:
            self.broadcast(list(net.parameters()) + list(net.buffers()))
        for opt in modules.values():
            if isinstance(opt, torch.optim.Optimizer):
                self.hooks.append(opt.register_step_pre_hook(self._average_gradients))

    def _average_gradients(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # DistributedDataParallel's all-reduce, done at the optimizer rather than in backward hooks: a GAN runs D
        # several times per backward and the gradient penalty differentiates twice, which DDP's wrapper cannot follow
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        for same_dtype in _by_dtype(grads):
            flat = _flatten_dense_tensors(same_dtype)
            dist.all_reduce(flat)
            flat /= self.world
            for grad, value in zip(same_dtype, _unflatten_dense_tensors(flat, same_dtype)):
                grad.copy_(value)

    def sync_buffers(self, modules: dict[str, Any]) -> None:
        """Copy rank 0's float buffers (batch-norm statistics, EMA weights' buffers, spectral-norm u, v) to all."""
        if self.world == 1:
            return
        buffers = [b for m in modules.values() if isinstance(m, nn.Module) for b in m.buffers()]
        ema_params = [p for m in modules.values() if isinstance(m, EMA) for p in m.module.parameters()]
        self.broadcast([t for t in buffers + ema_params if t.is_floating_point()])

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        for same_dtype in _by_dtype([t.data for t in tensors]):
            flat = _flatten_dense_tensors(same_dtype)
            dist.broadcast(flat, src=0)
            for t, value in zip(same_dtype, _unflatten_dense_tensors(flat, same_dtype)):
                t.copy_(value)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each logged value (same keys on every rank)."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(flat)
        return {k: round(v / self.world, 6) for k, v in zip(keys, flat.tolist())}

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def same_start(self, step: int) -> None:
        """Refuse to go on when the ranks resume from different steps (each rank reads runs/<name>/state.pt)."""
        if self.world == 1:
            return
        first = torch.tensor([step])
        dist.broadcast(first, src=0)
        if not self.agree(int(first.item()) == step):
            raise RuntimeError(f"rank {self.rank} resumes from step {step} but rank 0 from step {int(first.item())}; "
                               f"every rank must read the same runs/<name>/state.pt (a shared --train.out_dir)")

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


# ---------------------------------------------------------------- what a family sees


@dataclass
class Context:
    """What the engine hands a family: the config, device, precision, this rank and the per-rank batch size."""

    cfg: RunConfig
    device: torch.device
    precision: Precision
    rank: int = 0
    world: int = 1
    train_seconds: float = 0.0  # training time so far, evaluation and saving excluded (kept by the engine)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def batch_size(self) -> int:
        """This rank's share of the global train.batch_size."""
        return self.cfg.train.batch_size // self.world

    def seed(self, offset: int = 0) -> int:
        """A seed for a family's own generator: train.seed + offset on rank 0 (the 1-process run), others apart."""
        return self.cfg.train.seed + offset + RANK_SEED_STRIDE * self.rank

    def ema(self, model: nn.Module) -> EMA | None:
        """The EMA of `model` at train.ema_decay (None when it is 0)."""
        return EMA(model, self.cfg.train.ema_decay) if self.cfg.train.ema_decay > 0 else None


class Algorithm:
    """A family's maths. The engine calls, in order: __init__(ctx) (build networks and optimizers), state_modules()
    (what state.pt holds), begin(start, extra) (after resume), then per step update(step, batches) and at the ladder's
    points evaluate(step), sample(), shipped(); at the end export(out, done) on rank 0.

    `batches` yields this rank's batches: by default shards of `train_tensors()` (see `epoch_batches`); a family with
    its own sampling overrides `batches(start)`. REFUSES names the train.* fields the family has no use for, with why;
    the engine refuses a run that sets one of them."""

    REFUSES: dict[str, str] = {}

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.cfg = ctx, ctx.cfg

    def state_modules(self) -> dict[str, Any]:
        raise NotImplementedError

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        """Called once after resume (start = the step training goes on from, extra = what extra_state() saved)."""

    def train_tensors(self) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def batches(self, start: int) -> Iterator:
        return epoch_batches(self.train_tensors(), self.cfg.train.batch_size, self.cfg.train.seed + start,
                             self.ctx.rank, self.ctx.world, self.cfg)

    def update(self, step: int, batches: Iterator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    evaluate = None  # (step) -> dict[str, float]: a family that measures something defines it (at train.eval_every)
    sample = None  # () -> (images in [-1, 1], images per row): a family that generates defines it (train.sample_every)

    @classmethod
    def makes_samples(cls, cfg: RunConfig) -> bool:
        """Whether a run of `cfg` has sample grids to write (train.sample_every is refused otherwise)."""
        return cls.sample is not None

    def extra_state(self) -> dict[str, Any]:
        """Plain values beside the state dicts in state.pt (e.g. the best score so far)."""
        return {}

    def shipped(self) -> tuple[nn.Module, dict[str, Any]]:
        """The network a checkpoint holds now, with the config.json entries it needs besides run (snapshots)."""
        raise NotImplementedError

    def export(self, out: Path, done: int) -> Path:
        """Write the final checkpoint after `done` steps (rank 0 only)."""
        module, meta = self.shipped()
        return checkpoint.save(module, out, {"run": run_record(self.cfg), "trained_steps": done, **meta})


def epoch_batches(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, rank: int, world: int,
                  cfg: RunConfig) -> Iterator[list[torch.Tensor]]:
    """Shuffled batches forever. Each epoch draws one permutation (the RNG calls of a shuffled DataLoader with
    drop_last, so 1-process batches are the DataLoader's); the global batch is split in `world` disjoint slices and
    this rank takes slice `rank`."""
    n = len(tensors[0])
    if batch_size > n:
        raise ValueError(f"train.batch_size={batch_size} is larger than the {n} training images of {describe(cfg)}; "
                         f"use --train.batch_size={n} or less")
    share = batch_size // world
    generator = torch.Generator().manual_seed(seed)
    while True:
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader iterator's base seed
        order = torch.randperm(n, generator=generator)
        torch.randperm(n, generator=generator)  # RandomSampler's remainder draw
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i + rank * share:i + (rank + 1) * share]
            yield [t[idx] for t in tensors]


def describe(cfg: RunConfig) -> str:
    """The training split a run reads, for messages: e.g. "digits/mnistm/train" or "face/train"."""
    if cfg.data.dataset == "digits":
        return f"digits/{cfg.data.domain}/train"
    return "face/train" + (f" (with {cfg.data.attribute} labels)" if cfg.data.attribute else "")


# ---------------------------------------------------------------- the run lock


class RunLock:
    """runs/<name>/run.lock holds the PID of the process training that run; a second one is refused while that
    process lives (a lock whose PID is gone is stale and taken over)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and pid_alive(holder):
                    raise RuntimeError(f"{self.path.parent} is being trained by process {holder}; wait for it, stop "
                                       f"it, or train under another --name") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise RuntimeError(f"could not take the lock {self.path}; delete it if no run is training there")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: object) -> None:
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- TensorBoard


class TensorBoard:
    """Event files beside metrics.jsonl (runs/<name>/tensorboard): scalars at log points, grids at sample points.
    Without the tensorboard package, a warning and nothing else."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed, so no event files are written (pip install tensorboard)")
            return
        self.writer = SummaryWriter(str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, step: int, grid: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image("samples", grid, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------- the loop


def start(cfg: RunConfig, family: type[Algorithm], dist_: Distributed | None = None) -> Algorithm:
    """Seed, choose device and precision, and build the family (also used to re-open a finished run)."""
    dist_ = dist_ or Distributed(cfg.train)
    seed_everything(cfg.train.seed + RANK_SEED_STRIDE * dist_.rank)
    set_deterministic(cfg.train.deterministic)
    device = dist_.device(cfg.train)
    ctx = Context(cfg=cfg, device=device, precision=choose_precision(cfg.train, device), rank=dist_.rank,
                  world=dist_.world)
    return family(ctx)


def check_train_fields(cfg: RunConfig, family: type[Algorithm], world: int) -> None:
    """Refuse train.* settings the family has no use for, and a global batch that does not split over the ranks."""
    for name, why in family.REFUSES.items():
        if getattr(cfg.train, name) != getattr(TrainConfig(), name):
            raise ValueError(f"train.{name}={getattr(cfg.train, name)} does not apply to the {cfg.family} family "
                             f"({why}); leave it at {getattr(TrainConfig(), name)}")
    if family.evaluate is None and cfg.train.eval_every:
        raise ValueError(f"train.eval_every={cfg.train.eval_every}: the {cfg.family} family has no evaluation during "
                         f"training; set --train.eval_every=0")
    if not family.makes_samples(cfg) and cfg.train.sample_every:
        raise ValueError(f"train.sample_every={cfg.train.sample_every}: the {cfg.family} family makes no sample "
                         f"grids for {cfg.name}; set --train.sample_every=0")
    if cfg.train.batch_size % world:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is the global batch and must split evenly over the "
                         f"{world} processes; use a multiple of {world}")
    if cfg.train.sync_batchnorm and world > 1 and pick_device(cfg.train.device).type != "cuda":
        raise ValueError("train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm); set it to false on the CPU")


def fit(cfg: RunConfig, family: type[Algorithm], out: str | Path | None = None, fresh: bool = False) -> Path:
    """Train `cfg` with `family` and write its checkpoint (default runs/<name>/checkpoint); return that folder."""
    dist_ = Distributed(cfg.train)
    try:
        check_train_fields(cfg, family, dist_.world)
        lock = RunLock(run_dir(cfg)) if dist_.main else contextlib.nullcontext()
        ok, failure, locked = True, None, False
        try:
            lock.__enter__()
            locked = True
            if fresh and dist_.main:
                _clear_run(run_dir(cfg))
        except RuntimeError as err:
            ok, failure = False, err
        if not dist_.agree(ok):
            if locked:  # a refused --fresh: the folder stays this process's no longer
                lock.__exit__(None, None, None)
            raise failure or RuntimeError("rank 0 could not start the run (see its message)")
        try:
            return _loop(cfg, family, out, dist_)
        finally:
            lock.__exit__(None, None, None)
    finally:
        dist_.close()


# what a run writes into runs/<name> from its first steps on (TensorBoard's event file comes first)
RUN_MARKS = (STATE_NAME, METRICS_NAME, "tensorboard", "samples", "snapshots")


def _clear_run(folder: Path) -> None:
    """--fresh: remove a run's state, logs and samples (not the lock this process holds). A folder that holds
    anything but none of what a run writes first is not a run's, so it is refused, never emptied."""
    import shutil

    held = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME)
    if held and not set(RUN_MARKS) & set(held):
        raise RuntimeError(f"--fresh: {folder} is not a run folder (it holds {listing(held)}, none of "
                           f"{', '.join(RUN_MARKS)}) and is left as it is; choose another --name or --train.out_dir")
    for path in folder.iterdir():
        if path.name == LOCK_NAME:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _loop(cfg: RunConfig, family: type[Algorithm], out: str | Path | None, dist_: Distributed) -> Path:
    cfg = resolve_precision(cfg, family, dist_)
    algo = start(cfg, family, dist_)
    ctx, train = algo.ctx, cfg.train
    cfg = ctx.cfg  # a family may resolve parts of its config (UDA's input_norm="auto")
    modules = algo.state_modules()
    begun, extra = load_state(cfg, modules)
    dist_.same_start(begun)
    if begun and dist_.world > 1:  # state.pt holds rank 0's RNG; each rank goes on with noise of its own
        torch.manual_seed(ctx.seed(begun))
    dist_.prepare(modules, train, ctx.device)
    algo.begin(begun, extra)
    ctx.train_seconds = float(extra.get("train_time", 0.0))
    batches = algo.batches(begun)
    folder = run_dir(cfg)
    # updated by hand, not iterated: iterating would leave the bar one short at the `break` of the last step
    bar = tqdm(initial=begun, total=train.steps, desc=cfg.name, disable=not (train.progress and ctx.main))
    metrics = MetricLog(folder / METRICS_NAME, bar, begun) if ctx.main else None
    board = TensorBoard(folder / "tensorboard", train.tensorboard and ctx.main)
    deadline = Deadline(train.max_minutes)
    sums: dict[str, torch.Tensor] = {}
    count, done = 0, begun
    clock = time.perf_counter()
    try:
        for step in range(begun, train.steps):
            for k, v in algo.update(step, batches).items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                sums[k] = sums.get(k, 0) + v
            count += 1
            dist_.sync_buffers(modules)
            last = step + 1 == train.steps or _agreed_deadline(deadline, dist_, train)
            # time spent on the ladder below is not training time
            if ctx.device.type == "cuda" and (last or every(step, train.eval_every) or every(step, train.save_every)):
                torch.cuda.synchronize(ctx.device)
            ctx.train_seconds += time.perf_counter() - clock
            logged = {}
            if algo.evaluate is not None and (every(step, train.eval_every) or last):
                logged = algo.evaluate(step + 1)
            if every(step, train.log_every) or last or logged:
                means = dist_.mean({k: round((v / max(count, 1)).item(), 6) for k, v in sums.items()})
                sums, count = {}, 0
                if ctx.main:
                    metrics.write(step + 1, {**means, **logged})
                    board.scalars(step + 1, {**means, **logged})
            if algo.sample is not None and train.sample_every > 0 and (every(step, train.sample_every) or last) \
                    and ctx.main:
                images, per_row = algo.sample()
                grid = _save_grid(images, per_row, folder / "samples" / f"step_{step + 1:06d}.png")
                board.image(step + 1, grid)
            if every(step, train.snapshot_every) and ctx.main:
                module, meta = algo.shipped()
                checkpoint.save(module, snapshot_dir(cfg, step + 1),
                                {"run": run_record(cfg), "trained_steps": step + 1, **meta})
            if (every(step, train.save_every) or last) and ctx.main:
                save_state(cfg, step + 1, modules, {**algo.extra_state(), "train_time": ctx.train_seconds,
                                                    "precision": ctx.precision.choice.to_dict()})
            done = step + 1
            bar.update(1)
            clock = time.perf_counter()
            if last:
                break
    except Exception as err:
        if dist_.world > 1:  # the other ranks stop at their next collective (torchrun ends them, or the timeout)
            log.error("rank %d of %d failed at step %d: %s", dist_.rank, dist_.world, done + 1, err)
        raise
    finally:
        bar.close()
        board.close()
    dist_.barrier()
    out = Path(out) if out else folder / "checkpoint"
    if ctx.main:
        out = algo.export(out, done)
        log.info("%s -> %s", cfg.name, out)
    dist_.barrier()
    return out


def _agreed_deadline(deadline: Deadline, dist_: Distributed, train: TrainConfig) -> bool:
    """train.max_minutes reached, on rank 0's clock, so every rank stops at the same step."""
    if train.max_minutes <= 0:
        return False
    passed = torch.tensor([1 if deadline.passed() else 0])
    if dist_.world > 1:
        dist.broadcast(passed, src=0)
    return bool(passed.item())


def _save_grid(images: torch.Tensor, per_row: int, path: Path) -> torch.Tensor:
    """Write images in [-1, 1] as one PNG grid; return the grid for TensorBoard."""
    from torchvision.utils import make_grid, save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = to_image_range(images.float().cpu())
    save_image(images, path, nrow=per_row)
    return make_grid(images, nrow=per_row)


__all__ = ["Algorithm", "Context", "Precision", "RunLock", "STATE_NAME", "epoch_batches", "fit", "start"]
