"""train_gan: DCGAN, SNGAN, WGAN-GP and ACGAN as one loop. The variant is a loss from GAN_LOSSES, discriminator
flags and training tricks, all read from cfg.method (see GANMethod); DiffAugment (Zhao et al. 2020) lives here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm

from dlcv import checkpoint
from dlcv.config import RunConfig, check_choice, from_dict, to_dict
from dlcv.data.loaders import infinite, load_split, make_loader, to_image_range, to_model_range
from dlcv.losses import (auxiliary_class_loss, bce_losses, gradient_penalty, hinge_losses, mode_seeking_loss,
                         wasserstein_losses)
from dlcv.models import build_model
from dlcv.models.gan import ConditionalBatchNorm2d, Discriminator, DiscriminatorConfig
from dlcv.runtime import autocast, memory_format, pick_device, seed_everything, set_deterministic
from dlcv.sampling import sample_gan
from dlcv.training.common import Deadline, MetricLog, ema_copy, every, load_state, run_dir, save_state, snapshot_dir

log = logging.getLogger(__name__)

GAN_LOSSES = {"dcgan": bce_losses, "hinge": hinge_losses, "wgan_gp": wasserstein_losses}


@dataclass
class GANMethod:
    """cfg.method of a GAN run. A key that is not a field raises, so a typo in --method.* cannot go unnoticed."""

    loss: Literal["dcgan", "hinge", "wgan_gp"] = "dcgan"
    n_critic: int = 1  # D updates per step
    g_steps: int = 1  # G updates per step
    d_lr: float = 0.0  # 0: same as train.lr; another value gives TTUR (Heusel et al. 2017)
    d_width: int = 0  # 0: same as model.width
    d_norm: Literal["batch", "layer", "none"] = "batch"
    spectral_norm: bool = False
    label_smoothing: float = 0.0  # one-sided: the real target is 1 - label_smoothing (loss="dcgan" only)
    instance_noise: float = 0.0  # std of Gaussian noise on D's inputs, annealed linearly to 0 (Sonderby et al. 2017)
    gp_weight: float = 10.0  # lambda of the gradient penalty (loss="wgan_gp")
    diffaugment: str = ""  # e.g. "color,translation,cutout"
    aux_weight: float = 1.0  # weight of ACGAN's class loss (model.num_classes > 0)
    aux_fake: bool = True  # D's class loss on fakes too (Odena et al. 2017); False: real only, so D's classifier
    # does not learn G's mistakes as the truth
    class_head_sn: bool = True  # spectral norm on D's class head too (when spectral_norm)
    # frozen classifier checkpoints, comma-separated (e.g. checkpoints/classifier_digits_mnistm, trained on the same
    # training labels): G also minimises their mean cross-entropy on G(z, y), so class fidelity does not hang on D's
    # jointly trained head alone; several teachers of different architectures leave G fewer one-model blind spots
    teacher: str = ""
    teacher_weight: float = 1.0
    # a DiffAugment policy on G(z, y) before the teachers (e.g. "color,translation"): the class must survive small
    # shifts and colour changes, a margin in input space that other classifiers may share (on acgan_digits it cost
    # diversity and gained nothing: RESULTS.md)
    teacher_augment: str = ""
    # both learning rates decay linearly to 0 from this fraction of train.steps on (Miyato et al. 2018's SNGAN
    # schedule), meant to let late training settle instead of drifting between modes (on acgan_digits it did not:
    # RESULTS.md); 1.0: constant learning rates
    lr_decay_from: float = 1.0
    # weight of the mode-seeking term (Mao et al. 2019): G(z1, y) and G(z2, y) must differ in proportion to z1 - z2,
    # against the within-class collapse that teachers invite (on acgan_digits it doubled the within-class spread but
    # cost class fidelity and digit-FID: RESULTS.md)
    mode_seeking: float = 0.0
    # a trained generator checkpoint to start G (and its EMA) from, e.g. method A's checkpoints/dcgan_faces for a
    # cbn ACGAN: each class's batch-norm gain and shift start as its single ones (Wang et al. 2018, "Transferring
    # GANs"); read on a fresh start only (a resumed or branched run has its own weights)
    init_generator: str = ""
    # steps at the start that update D alone: a fresh D against a trained G would otherwise hand G noise for
    # gradients and undo what it learned
    d_warmup: int = 0

    def __post_init__(self) -> None:
        check_choice("method.loss", self.loss, tuple(GAN_LOSSES))
        for name, policies in (("diffaugment", self.diffaugment), ("teacher_augment", self.teacher_augment)):
            for policy in filter(None, policies.split(",")):
                check_choice(f"method.{name} entry", policy, tuple(AUGMENTS))
        if self.label_smoothing and self.loss != "dcgan":
            raise ValueError("method.label_smoothing applies to method.loss='dcgan' only; set it to 0")
        if self.mode_seeking < 0:
            raise ValueError(f"method.mode_seeking={self.mode_seeking} must be >= 0 (0: off)")
        if not 0.0 <= self.lr_decay_from <= 1.0:
            raise ValueError(f"method.lr_decay_from={self.lr_decay_from} must be in [0, 1] (1: no decay)")
        if self.d_warmup < 0:
            raise ValueError(f"method.d_warmup={self.d_warmup} must be >= 0 (0: off)")
        if self.n_critic < 1 or self.g_steps < 1:
            raise ValueError(f"method.n_critic and method.g_steps must be >= 1, got {self.n_critic}, {self.g_steps}")


# ---------------------------------------------------------------- DiffAugment (Zhao et al. 2020)
# The same random, differentiable transforms go on real and fake images before D, in the D and the G steps,
# so D cannot memorise a small training set and G still gets gradients through them. Images are in [-1, 1].


def rand_brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device) - 0.5)


def rand_saturation(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device) * 2) + mean


def rand_contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device) + 0.5) + mean


def rand_translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio * size pixels, filling with zeros (gather indexing, so it is differentiable)."""
    b, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-shift_w, shift_w + 1, (b, 1, 1), device=x.device)
    grid_b, grid_y, grid_x = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                            torch.arange(w, device=x.device), indexing="ij")
    # index 0 and h+1 of the padded image are zeros, so clamping there fills the uncovered border with zeros
    grid_y = (grid_y + dy + 1).clamp(0, h + 1)
    grid_x = (grid_x + dx + 1).clamp(0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])
    return x_pad.permute(0, 2, 3, 1)[grid_b, grid_y, grid_x].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def rand_cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of side ratio * size per image (DeVries & Taylor 2017)."""
    b, _, h, w = x.shape
    cut_h, cut_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - cut_h % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cut_w % 2), (b, 1, 1), device=x.device)
    grid_b, grid_y, grid_x = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(cut_h, device=x.device),
                                            torch.arange(cut_w, device=x.device), indexing="ij")
    grid_y = (grid_y + cy - cut_h // 2).clamp(0, h - 1)
    grid_x = (grid_x + cx - cut_w // 2).clamp(0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[grid_b, grid_y, grid_x] = 0
    return x * mask.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)


AUGMENTS = {"color": (rand_brightness, rand_saturation, rand_contrast), "translation": (rand_translation,),
            "cutout": (rand_cutout,)}


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Apply the comma-separated DiffAugment policy, e.g. "color,translation,cutout"; "" returns x unchanged."""
    for name in filter(None, policy.split(",")):
        for augment in AUGMENTS[name]:
            x = augment(x)
    return x


# ---------------------------------------------------------------- the loop


def discriminator_config(cfg: RunConfig, method: GANMethod) -> DiscriminatorConfig:
    """D mirrors G's image shape and classes; its width and regularisation come from cfg.method."""
    return DiscriminatorConfig(image_size=cfg.model.image_size, channels=cfg.model.channels,
                               width=method.d_width or cfg.model.width, num_classes=cfg.model.num_classes,
                               norm=method.d_norm, spectral_norm=method.spectral_norm,
                               class_head_spectral_norm=method.class_head_sn)


def lr_factor(step: int, total: int, decay_from: float) -> float:
    """1 until decay_from * total steps, then linear to 0 at `total`; a function of the step, so resuming needs no
    scheduler state."""
    start = decay_from * total
    return 1.0 if step < start or total <= start else max(0.0, (total - step) / (total - start))


def shipped_folder(path: str) -> Path:
    """A checkpoint folder named in cfg.method: as given, or "checkpoints/x" (or "x") from outside the checkout."""
    from dlcv.service import checkpoints_root

    folder = Path(path.strip())
    return folder if folder.is_absolute() or folder.is_dir() else checkpoints_root() / folder.name


def load_teacher(path: str, num_classes: int, device: torch.device) -> torch.nn.Module:
    """One frozen classifier of method.teacher, checked to predict the generator's classes."""
    if num_classes <= 0:
        raise ValueError("method.teacher needs a class-conditional GAN (model.num_classes > 0)")
    teacher, _ = checkpoint.load(shipped_folder(path))
    if getattr(teacher.config, "num_classes", None) != num_classes:
        raise ValueError(f"method.teacher entry {path} predicts {getattr(teacher.config, 'num_classes', '?')} "
                         f"classes but the generator has {num_classes}; use a classifier of the same classes")
    return teacher.to(device).eval().requires_grad_(False)  # never trained here


def load_generator_init(generator: torch.nn.Module, path: str) -> None:
    """Copy a trained generator into `generator`: one of the same config, or an unconditional one into a cbn ACGAN
    (its batch norm's gain and shift become every class's, so G(z, y) = G_init(z) for every y at the start)."""
    trained, _ = checkpoint.load(shipped_folder(path))
    theirs, ours = to_dict(trained.config), to_dict(generator.config)
    option = f"--method.init_generator={path}"
    if theirs == ours:
        generator.load_state_dict(trained.state_dict())
        return
    shape = ("z_dim", "image_size", "channels", "width")
    diff = {k: (theirs.get(k), ours.get(k)) for k in shape if theirs.get(k) != ours.get(k)}
    if diff:
        raise ValueError(f"{option} has another network shape (field: (checkpoint, this run) {diff}); set the same "
                         f"--model.* options as the run that wrote it")
    if theirs["num_classes"] != 0 or ours["conditioning"] != "cbn":
        raise ValueError(f"{option}: a generator can start only from one of the same config, or a class-conditional "
                         f"one from an unconditional one with --model.conditioning=cbn (z then enters alone, as in "
                         f"the unconditional one); this run has num_classes={ours['num_classes']}, conditioning="
                         f"{ours['conditioning']!r} and the checkpoint num_classes={theirs['num_classes']}")
    state = {}
    for name, value in trained.state_dict().items():
        owner, leaf = name.rsplit(".", 1)
        module = generator.get_submodule(owner)
        if not isinstance(module, ConditionalBatchNorm2d):
            state[name] = value
        elif leaf in ("weight", "bias"):  # the one gain / shift becomes every class's row
            table = "gain" if leaf == "weight" else "shift"
            state[f"{owner}.{table}.weight"] = value.expand(module.gain.num_embeddings, -1).clone()
        else:  # running_mean, running_var, num_batches_tracked
            state[f"{owner}.norm.{leaf}"] = value
    generator.load_state_dict(state)


def train_gan(cfg: RunConfig, out: str | Path | None = None) -> Path:
    """Train G against D; ship G (its EMA when train.ema_decay > 0) to `out` or runs/<name>/checkpoint; return it.

    One step is method.n_critic D updates, then method.g_steps G updates.
    """
    seed_everything(cfg.train.seed)
    set_deterministic(cfg.train.deterministic)
    device = pick_device(cfg.train.device)
    fmt = memory_format(cfg.train.channels_last)
    method = from_dict(GANMethod, dict(cfg.method))
    losses = GAN_LOSSES[method.loss]
    num_classes = cfg.model.num_classes
    x_train, y_train = load_split(cfg.data, "train")
    if num_classes > 0 and y_train is None:
        raise ValueError("an ACGAN (model.num_classes > 0) needs labels: use digits, or --data.attribute for faces")
    if y_train is None:  # unconditional: placeholder labels keep the batches (x, y) pairs
        y_train = torch.zeros(len(x_train), dtype=torch.long)
    generator = build_model(cfg.architecture, cfg.model).to(device, memory_format=fmt)
    discriminator = Discriminator(discriminator_config(cfg, method)).to(device, memory_format=fmt)
    betas = tuple(cfg.train.betas)
    g_opt = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr, betas=betas)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=method.d_lr or cfg.train.lr, betas=betas,
                             weight_decay=cfg.train.weight_decay)
    modules = {"generator": generator, "discriminator": discriminator, "g_opt": g_opt, "d_opt": d_opt}
    ema = None
    if cfg.train.ema_decay > 0:
        # buffers (batch-norm running statistics) are averaged too, so they match the averaged weights
        ema = ema_copy(generator, cfg.train.ema_decay)
        modules["ema"] = ema
    teachers = [load_teacher(path, num_classes, device) for path in filter(None, method.teacher.split(","))]
    start, _ = load_state(cfg, modules)
    if start == 0 and method.init_generator:  # a resumed or branched run goes on from its own trained weights
        load_generator_init(generator, method.init_generator)
        if ema is not None:
            ema.module.load_state_dict(generator.state_dict())
    batches = infinite(make_loader(x_train, y_train, batch_size=cfg.train.batch_size, seed=cfg.train.seed + start))
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps, desc=cfg.name,
               disable=not cfg.train.progress)
    metrics = MetricLog(run_dir(cfg) / "metrics.jsonl", bar, start)
    samples_dir = run_dir(cfg) / "samples"

    def noise(b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(b, generator.z_dim, device=device)
        if num_classes == 0:
            return z, None
        y = torch.randint(0, num_classes, (b,), device=device)
        if method.mode_seeking > 0:  # the mode-seeking pairs (i, i + b//2) share a class
            y[b // 2:2 * (b // 2)] = y[:b // 2]
        return z, y

    def discriminate(x: torch.Tensor, noise_std: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D on what it is shown: DiffAugment, then instance noise; float32 outputs for the losses."""
        x = diff_augment(x, method.diffaugment)
        if noise_std > 0:
            x = x + noise_std * torch.randn_like(x)
        with autocast(device, cfg.train.amp):
            logits, class_logits = discriminator(x.contiguous(memory_format=fmt))
        return logits.float(), class_logits.float() if class_logits is not None else None

    d_kwargs = {"label_smoothing": method.label_smoothing} if method.label_smoothing else {}
    deadline = Deadline(cfg.train.max_minutes)
    shipped = ema.module if ema is not None else generator
    done = start
    # with one D and one G update per step, the G step reuses the D step's G(z) (pytorch/examples' DCGAN does the
    # same): one generator forward per step instead of two
    reuse = method.n_critic == 1 and method.g_steps == 1
    generator.train()
    discriminator.train()
    base_lrs = [(g_opt, cfg.train.lr), (d_opt, method.d_lr or cfg.train.lr)]  # from the config: a resumed
    # optimizer's param_groups hold the decayed rate it was saved with
    for step in bar:
        if method.lr_decay_from < 1.0:
            for opt, lr in base_lrs:
                opt.param_groups[0]["lr"] = lr * lr_factor(step, cfg.train.steps, method.lr_decay_from)
        noise_std = method.instance_noise * max(0.0, 1.0 - step / max(1, cfg.train.steps))
        train_g = step >= method.d_warmup  # no G update (and no graph through G for one) during D's warm-up
        for _ in range(method.n_critic):  # (1) update D: tell real from G(z)
            x, y = next(batches)
            real, y = to_model_range(x).to(device, memory_format=fmt), y.to(device)
            z, y_fake = noise(real.shape[0])
            with torch.set_grad_enabled(reuse and train_g), autocast(device, cfg.train.amp):
                fake_for_g = generator(z, y_fake).float()
            fake = fake_for_g.detach()
            real_logits, real_class = discriminate(real, noise_std)
            fake_logits, fake_class = discriminate(fake, noise_std)
            d_loss = losses.d_loss(real_logits, fake_logits, **d_kwargs)
            step_metrics = {"real_score": real_logits.mean(), "fake_score": fake_logits.mean()}
            if method.loss == "wgan_gp":
                gp = gradient_penalty(lambda x_hat: discriminate(x_hat, noise_std)[0], real, fake)
                d_loss = d_loss + method.gp_weight * gp
                step_metrics["gp"] = gp
            if num_classes > 0:  # ACGAN: D also classifies real and fake images
                if method.aux_fake:
                    d_loss = d_loss + method.aux_weight * auxiliary_class_loss(torch.cat([real_class, fake_class]),
                                                                               torch.cat([y, y_fake]))
                else:
                    d_loss = d_loss + method.aux_weight * auxiliary_class_loss(real_class, y)
                step_metrics["real_class_acc"] = (real_class.argmax(1) == y).float().mean()
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
        for _ in range(method.g_steps if train_g else 0):  # (2) update G: make D call G(z) real
            if reuse:
                fake = fake_for_g
            else:
                z, y_fake = noise(cfg.train.batch_size)
                with autocast(device, cfg.train.amp):
                    fake = generator(z, y_fake).float()
            fake_logits, fake_class = discriminate(fake, noise_std)
            g_loss = losses.g_loss(fake_logits)
            if num_classes > 0:
                g_loss = g_loss + method.aux_weight * auxiliary_class_loss(fake_class, y_fake)
            if teachers:
                with autocast(device, cfg.train.amp):
                    shown = diff_augment(fake, method.teacher_augment)
                    teacher_logits = [teacher(shown).float() for teacher in teachers]
                teacher_loss = sum(auxiliary_class_loss(logits, y_fake) for logits in teacher_logits) / len(teachers)
                g_loss = g_loss + method.teacher_weight * teacher_loss
                # the share of G(z, y) that every teacher reads as y
                step_metrics["teacher_acc"] = torch.stack([logits.argmax(1) == y_fake
                                                           for logits in teacher_logits]).all(0).float().mean()
            if method.mode_seeking > 0:
                ms_loss = mode_seeking_loss(fake, z)
                g_loss = g_loss + method.mode_seeking * ms_loss
                step_metrics["mode_seeking"] = ms_loss
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
            if ema is not None:
                ema.update_parameters(generator)
        discriminator.requires_grad_(True)
        metrics.add({"d_loss": d_loss, **({"g_loss": g_loss} if train_g else {}), **step_metrics})
        last = step + 1 == cfg.train.steps or deadline.passed()
        if every(step, cfg.train.log_every) or last:
            metrics.flush(step + 1)
        if every(step, cfg.train.sample_every) or last:
            save_samples(shipped, samples_dir / f"step_{step + 1:06d}.png", device)
            generator.train()  # sampling put it in eval mode
        if every(step, cfg.train.snapshot_every):
            checkpoint.save(shipped, snapshot_dir(cfg, step + 1), {"run": to_dict(cfg), "trained_steps": step + 1})
        if every(step, cfg.train.save_every) or last:
            save_state(cfg, step + 1, modules)
        done = step + 1
        if last:
            break
    out = Path(out) if out else run_dir(cfg) / "checkpoint"
    checkpoint.save(shipped, out, {"run": to_dict(cfg), "trained_steps": done})
    log.info("%s -> %s", cfg.name, out)
    return out


def save_samples(generator: torch.nn.Module, path: Path, device: torch.device, per_row: int = 8) -> None:
    """A grid from a fixed seed, so grids of successive steps are comparable; one row per class when conditional."""
    num_classes = generator.config.num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_row) if num_classes > 0 else None
    images = sample_gan(generator, len(labels) if labels is not None else per_row * per_row, seed=0, labels=labels,
                        device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(to_image_range(images), path, nrow=per_row)
