"""The GAN family: DCGAN, SNGAN, WGAN-GP and ACGAN as one algorithm. The variant is a loss from GAN_LOSSES,
discriminator flags and training tricks, all read from cfg.method (see GANMethod); DiffAugment (Zhao et al. 2020)
lives here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dlcv import checkpoint
from dlcv.config import RunConfig, check_choice, check_literals, from_dict, to_dict
from dlcv.data.loaders import load_split, to_model_range
from dlcv.losses import LeCam, auxiliary_class_loss, bce_losses, gradient_penalty, hinge_losses, wasserstein_losses
from dlcv.models import build_model
from dlcv.models.gan import ConditionalBatchNorm2d, Discriminator, DiscriminatorConfig
from dlcv.sampling import sample_gan
from dlcv.training.engine import Algorithm, Context

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
    gp_weight: float = 10.0  # lambda of the gradient penalty (loss="wgan_gp")
    diffaugment: str = ""  # e.g. "color,translation,cutout"
    aux_weight: float = 1.0  # weight of ACGAN's class loss on real and fake images (model.num_classes > 0)
    # frozen classifier checkpoints, comma-separated (e.g. checkpoints/classifier_digits_mnistm, trained on the same
    # training labels): G also minimises their mean cross-entropy on G(z, y), so class fidelity does not hang on D's
    # jointly trained head alone; several teachers of different architectures leave G fewer one-model blind spots
    teacher: str = ""
    teacher_weight: float = 1.0
    # a trained generator checkpoint to start G (and its EMA) from, e.g. method A's checkpoints/dcgan_faces for a
    # cbn ACGAN: each class's batch-norm gain and shift start as its single ones (Wang et al. 2018, "Transferring
    # GANs"); read on a fresh start only (a resumed or branched run has its own weights)
    init_generator: str = ""
    # steps at the start that update D alone: a fresh D against a trained G would otherwise hand G noise for
    # gradients and undo what it learned
    d_warmup: int = 0
    lecam_weight: float = 0.0  # > 0: LeCam regularisation of D at this weight (Tseng et al. 2021 use 0.1-0.5)
    lecam_decay: float = 0.99  # of LeCam's anchors, the moving averages of D's outputs

    def __post_init__(self) -> None:
        check_literals(self, "method")
        for policy in filter(None, self.diffaugment.split(",")):
            check_choice("method.diffaugment entry", policy, tuple(AUGMENTS))
        if self.label_smoothing and self.loss != "dcgan":
            raise ValueError("method.label_smoothing applies to method.loss='dcgan' only; set it to 0")
        if self.d_warmup < 0:
            raise ValueError(f"method.d_warmup={self.d_warmup} must be >= 0 (0: off)")
        if self.lecam_weight < 0 or not 0.0 <= self.lecam_decay < 1.0:
            raise ValueError(f"method.lecam_weight must be >= 0 and method.lecam_decay in [0, 1), got "
                             f"{self.lecam_weight}, {self.lecam_decay}")
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


# ---------------------------------------------------------------- the algorithm


def discriminator_config(cfg: RunConfig, method: GANMethod) -> DiscriminatorConfig:
    """D mirrors G's image shape and classes; its width and regularisation come from cfg.method."""
    return DiscriminatorConfig(image_size=cfg.model.image_size, channels=cfg.model.channels,
                               width=method.d_width or cfg.model.width, num_classes=cfg.model.num_classes,
                               norm=method.d_norm, spectral_norm=method.spectral_norm)


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


class GAN(Algorithm):
    """Train G against D; G (its EMA when train.ema_decay > 0) ships. One step is method.n_critic D updates, then
    method.g_steps G updates."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg, device = self.cfg, ctx.device
        self.method = method = from_dict(GANMethod, dict(cfg.method))
        self.losses = GAN_LOSSES[method.loss]
        self.num_classes = cfg.model.num_classes
        self.x_train, self.y_train = load_split(cfg.data, "train")
        if self.num_classes > 0 and self.y_train is None:
            raise ValueError("an ACGAN (model.num_classes > 0) needs labels: use digits, or --data.attribute for faces")
        if self.y_train is None:  # unconditional: placeholder labels keep the batches (x, y) pairs
            self.y_train = torch.zeros(len(self.x_train), dtype=torch.long)
        self.generator = ctx.precision.place(build_model(cfg.architecture, cfg.model))
        self.discriminator = ctx.precision.place(Discriminator(discriminator_config(cfg, method)))
        betas = tuple(cfg.train.betas)
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.train.lr, betas=betas,
                                      weight_decay=cfg.train.weight_decay)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=method.d_lr or cfg.train.lr, betas=betas,
                                      weight_decay=cfg.train.weight_decay)
        # buffers (batch-norm running statistics) are averaged too, so they match the averaged weights
        self.ema = ctx.ema(self.generator)
        self.lecam = LeCam(method.lecam_decay).to(device) if method.lecam_weight > 0 else None
        self.teachers = [load_teacher(path, self.num_classes, device)
                         for path in filter(None, method.teacher.split(","))]
        self.d_kwargs = {"label_smoothing": method.label_smoothing} if method.label_smoothing else {}
        # with one D and one G update per step, the G step reuses the D step's G(z) (pytorch/examples' DCGAN does
        # the same): one generator forward per step instead of two
        self.reuse = method.n_critic == 1 and method.g_steps == 1

    def state_modules(self) -> dict[str, Any]:
        extra = {"ema": self.ema} if self.ema is not None else {}
        if self.lecam is not None:
            extra["lecam"] = self.lecam
        return {"generator": self.generator, "discriminator": self.discriminator, "g_opt": self.g_opt,
                "d_opt": self.d_opt, **extra}

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        if start == 0 and self.method.init_generator:  # a resumed or branched run goes on from its own weights
            load_generator_init(self.generator, self.method.init_generator)
            if self.ema is not None:
                self.ema.module.load_state_dict(self.generator.state_dict())
        self.generator.train()
        self.discriminator.train()

    def train_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.x_train, self.y_train

    def noise(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, I) and, for an ACGAN, uniform labels."""
        z = torch.randn(b, self.generator.z_dim, device=self.ctx.device)
        if self.num_classes == 0:
            return z, None
        return z, torch.randint(0, self.num_classes, (b,), device=self.ctx.device)

    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """D on what it is shown (after DiffAugment); float32 outputs for the losses."""
        x = diff_augment(x, self.method.diffaugment)
        with self.ctx.precision.autocast():
            logits, class_logits = self.discriminator(x.contiguous(memory_format=self.ctx.precision.fmt))
        return logits.float(), class_logits.float() if class_logits is not None else None

    def update(self, step: int, batches) -> dict[str, torch.Tensor]:
        method, losses, device, fmt = self.method, self.losses, self.ctx.device, self.ctx.precision.fmt
        generator, discriminator = self.generator, self.discriminator
        train_g = step >= method.d_warmup  # no G update (and no graph through G for one) during D's warm-up
        for _ in range(method.n_critic):  # (1) update D: tell real from G(z)
            x, y = next(batches)
            real, y = to_model_range(x).to(device, memory_format=fmt), y.to(device)
            z, y_fake = self.noise(real.shape[0])
            with torch.set_grad_enabled(self.reuse and train_g), self.ctx.precision.autocast():
                fake_for_g = generator(z, y_fake).float()
            fake = fake_for_g.detach()
            real_logits, real_class = self.discriminate(real)
            fake_logits, fake_class = self.discriminate(fake)
            d_loss = losses.d_loss(real_logits, fake_logits, **self.d_kwargs)
            metrics = {"real_score": real_logits.mean(), "fake_score": fake_logits.mean()}
            if method.loss == "wgan_gp":
                gp = gradient_penalty(lambda x_hat: self.discriminate(x_hat)[0], real, fake)
                d_loss = d_loss + method.gp_weight * gp
                metrics["gp"] = gp
            if self.lecam is not None:
                lecam = self.lecam(real_logits, fake_logits)
                d_loss = d_loss + method.lecam_weight * lecam
                metrics["lecam"] = lecam
            if self.num_classes > 0:  # ACGAN: D also classifies real and fake images (Odena et al. 2017)
                d_loss = d_loss + method.aux_weight * auxiliary_class_loss(torch.cat([real_class, fake_class]),
                                                                           torch.cat([y, y_fake]))
                metrics["real_class_acc"] = (real_class.argmax(1) == y).float().mean()
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
        metrics["d_loss"] = d_loss
        discriminator.requires_grad_(False)  # the G step needs gradients through D, not for D's weights
        for _ in range(method.g_steps if train_g else 0):  # (2) update G: make D call G(z) real
            if self.reuse:
                fake = fake_for_g
            else:
                z, y_fake = self.noise(self.ctx.batch_size)
                with self.ctx.precision.autocast():
                    fake = generator(z, y_fake).float()
            fake_logits, fake_class = self.discriminate(fake)
            g_loss = losses.g_loss(fake_logits)
            if self.num_classes > 0:
                g_loss = g_loss + method.aux_weight * auxiliary_class_loss(fake_class, y_fake)
            if self.teachers:
                with self.ctx.precision.autocast():
                    teacher_logits = [teacher(fake).float() for teacher in self.teachers]
                teacher_loss = sum(auxiliary_class_loss(logits, y_fake) for logits in teacher_logits) / len(self.teachers)
                g_loss = g_loss + method.teacher_weight * teacher_loss
                # the share of G(z, y) that every teacher reads as y
                metrics["teacher_acc"] = torch.stack([logits.argmax(1) == y_fake
                                                      for logits in teacher_logits]).all(0).float().mean()
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()
            if self.ema is not None:
                self.ema.update_parameters(generator)
            metrics["g_loss"] = g_loss
        discriminator.requires_grad_(True)
        return {"d_loss": metrics.pop("d_loss"), **({"g_loss": metrics.pop("g_loss")} if train_g else {}), **metrics}

    def sample(self, per_row: int = 8) -> tuple[torch.Tensor, int]:
        """A grid from a fixed seed, so grids of successive steps compare; one row per class when conditional."""
        generator = self.shipped()[0]
        was = generator.training
        labels = torch.arange(self.num_classes).repeat_interleave(per_row) if self.num_classes > 0 else None
        images = sample_gan(generator, len(labels) if labels is not None else per_row * per_row, seed=0,
                            labels=labels, device=self.ctx.device)
        generator.train(was)
        return images, per_row

    def shipped(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        return (self.ema.module if self.ema is not None else self.generator), {}
