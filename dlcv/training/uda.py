"""Unsupervised domain adaptation on digits: UDA_METHODS (source-only, DANN, VADA + mean teacher, a DIRT-T-style
refinement of a trained run, associative DA, Generate to Adapt, target-only), each a small class with DomainBed's
`update(x_src, y_src, x_tgt) -> dict` / `predict(x)` and a typed options dataclass, and `UDA`, the family the engine
runs.

Model selection never reads target labels: it uses the labelled domain's val accuracy (or a label-free criterion);
the target-val-selected ("oracle") figure is recorded separately and labelled as such."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dlcv import checkpoint
from dlcv.config import RunConfig, TrainConfig, check_literals, from_dict, to_dict
from dlcv.data.digits import read_digits
from dlcv.data.loaders import to_model_range
from dlcv.losses import association_losses, conditional_entropy, diversity_loss, domain_loss, vat_loss
from dlcv.metadata import SelectionRule
from dlcv.models import build_model
from dlcv.models.blocks import grad_reverse
from dlcv.models.uda import SOURCE, TARGET, GTADiscriminator, GTAGenerator, UDANet
from dlcv.training.common import ema_copy, load_state, run_dir, run_record
from dlcv.training.engine import Algorithm, Context, Precision, choose_precision, start
from dlcv.validators import bnm_score, dev_score, entropy_score, im_score, model_outputs, snd_score

log = logging.getLogger(__name__)

VALIDATOR_IMAGES = 2000  # source train, source val and target val images each that DEV's domain classifier reads


def dann_lambda(p: float) -> float:
    """lambda_p = 2 / (1 + exp(-10 p)) - 1: the GRL weight ramp of Ganin et al. 2016 (sec. 5.2.2), p in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def annealed_lr(p: float) -> float:
    """mu_p / mu_0 = 1 / (1 + 10 p)^0.75: the learning-rate annealing of Ganin et al. 2016 (sec. 5.2.2)."""
    return (1.0 + 10.0 * p) ** -0.75


def augment(x: torch.Tensor, shift: float = 0.15, scale: float = 0.1, rotate: float = 0.2, noise: float = 0.05,
            colour: bool = True) -> torch.Tensor:
    """Random affine (shift ~2 px, +-10 % scale, +-11 degrees), Gaussian noise and, with `colour`, an intensity flip
    (p = 0.5) and a per-channel gain and offset (French et al. 2018's digit augmentation), on the batch's device."""
    b = x.shape[0]
    u = torch.rand(b, 4, device=x.device) * 2 - 1  # (B, 4) in [-1, 1]
    s, a = 1 + scale * u[:, 0], rotate * u[:, 1]
    theta = torch.stack([torch.stack([s * a.cos(), -s * a.sin(), shift * u[:, 2]], 1),
                         torch.stack([s * a.sin(), s * a.cos(), shift * u[:, 3]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x.float(), grid, padding_mode="border", align_corners=False)
    if colour:
        flip = torch.where(torch.rand(b, 1, 1, 1, device=x.device) < 0.5, -1.0, 1.0)
        gain = 1 + 0.4 * (torch.rand(b, x.shape[1], 1, 1, device=x.device) * 2 - 1)
        offset = 0.3 * (torch.rand(b, x.shape[1], 1, 1, device=x.device) * 2 - 1)
        x = (flip * x * gain + offset).clamp(-1, 1)
    return x + noise * torch.randn_like(x)


def domain_classifier(dim: int, hidden: int = 256) -> nn.Module:
    """D(f): features (B, dim) -> domain logit (B, 1); trained, not shipped."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, 1))


@dataclass
class UDAOptions:
    """cfg.method of every UDA run: which method, and how weights are selected without target labels."""

    name: str = "dann"  # a key of UDA_METHODS
    select: SelectionRule = "labelled_val"  # never target labels; the oracle is recorded apart

    def __post_init__(self) -> None:
        check_literals(self, "method")


@dataclass
class DANNOptions(UDAOptions):
    domain_weight: float = 1.0
    ema_decay: float = 0.0  # > 0: a weight average (Polyak) is evaluated and shipped; 0: the plain DANN


@dataclass
class VADAOptions(UDAOptions):
    """Each part of VADA + mean teacher is a weight or flag, so an ablation is a list of overrides."""

    domain_weight: float = 0.1
    ent_weight: float = 1.0
    div_weight: float = 1.0
    vat_src_weight: float = 1.0
    vat_tgt_weight: float = 1.0
    vat_eps: float = 2.0
    augment: bool = True
    colour_augment: bool = True
    teacher: bool = True
    teacher_decay: float = 0.99
    teacher_weight: float = 1.0
    teacher_threshold: float = 0.9
    source_weight: float = 1.0


@dataclass
class RefineOptions(VADAOptions):
    init: str = ""  # the trained checkpoint to refine
    domain_weight: float = 0.0
    vat_src_weight: float = 0.0
    vat_tgt_weight: float = 0.0
    peer: str = ""  # a checkpoint of the same pair whose labels veto the teacher's (co-training)


@dataclass
class AssocOptions(UDAOptions):
    """The authors' MNIST -> MNIST-M settings (Haeusser et al. 2017, their code's README): walker weight 1, visit
    weight 0.6, the association off for the first 500 steps, augmented training images."""

    assoc_weight: float = 1.0  # on L_walker + visit_weight * L_visit
    visit_weight: float = 0.6
    # steps with the association off (the embeddings first learn some source classes), then a linear ramp to
    # assoc_weight over as many steps again: the authors' linear envelope (delay 500, 1 step) is 0 up to step 500 and
    # full from step 1001, since their code adds the delay to the ramp's length
    assoc_delay: int = 500
    # the authors train MNIST -> MNIST-M on randomly warped images: here `augment` (affine + noise) on both domains,
    # on by default since it lifts every pair (MNIST-M -> USPS 84.7 -> 96.6 % target test, USPS -> MNIST-M 35.6 -> 62.3)
    augment: bool = True
    colour_augment: bool = True  # with augment: also the intensity flip and per-channel gain/offset
    # > 0: similarities are cosines / temperature (losses.association_losses); 0: the paper's dot products, which
    # Ganin's network's 768 flattened features make one-hot (M's rows spread over ~500)
    temperature: float = 0.0


@dataclass
class GTAOptions(UDAOptions):
    """The authors' digit settings (Sankaranarayanan et al. 2018, their code): G and D trained by Adam at 5e-4, beta1
    0.8; F's two terms from D at adv_weight 0.1 and adv_weight * alpha = 0.03 (alpha 0.3); noise of 512 dimensions.
    Setting cls_weight or adv_weight to 0 is the ablation of that term."""

    cls_weight: float = 0.1  # L_F,cls: D's class head must read G(F(x_s)) as y_s (the paper's adv_weight)
    adv_weight: float = 0.03  # L_F,adv: D's data head must read G(F(x_t)) as a real source image (adv_weight * alpha)
    gan_lr: float = 5e-4
    gan_beta1: float = 0.8
    z_dim: int = 512
    gan_width: int = 64
    # `augment` (affine + noise) of both domains' images before F and D, as associative DA's preset does
    augment: bool = False
    colour_augment: bool = True  # with augment: also the intensity flip and per-channel gain/offset
    # > 0: F and the classifier ship as a weight average (Polyak), as DANN's ema_decay: target accuracy swings from one
    # evaluation to the next while source val stays flat, so source val cannot pick the good steps
    ema_decay: float = 0.0


def parse_options(cls: type, hparams: dict[str, Any] | UDAOptions, method: str) -> Any:
    """hparams (cfg.method, or a part of it) -> the method's options; an unknown key raises naming the valid ones."""
    if isinstance(hparams, cls):
        return hparams
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise KeyError(f"unknown method option(s) {unknown} for {method}; valid: {sorted(valid)}")
    return from_dict(cls, dict(hparams))


class SourceOnly:
    """Lower bound: cross-entropy on labelled source batches; the target batch is ignored."""

    labelled_domain = SOURCE
    Options: type = UDAOptions

    def __init__(self, model: UDANet, hparams: dict[str, Any] | UDAOptions, train: TrainConfig,
                 precision: Precision | None = None) -> None:
        self.hp = parse_options(self.Options, hparams, type(self).__name__)
        self.precision = precision or choose_precision(train, model.input_mean.device)
        self.model, self.total_steps, self.step = model, max(1, train.steps), 0
        self.extra = self.build_extra(model)  # e.g. the domain classifier
        decay = self.average_decay()
        # the EMA of the weights, kept in eval mode (its BN uses running statistics), is what is evaluated and shipped
        self.average = ema_copy(model, decay) if decay > 0 else None
        if self.average is not None:
            self.average.module.eval()
        self.opt = torch.optim.Adam(self.main_parameters(), lr=train.lr, betas=tuple(train.betas),
                                    weight_decay=train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: annealed_lr(s / self.total_steps))
        if model.config.domain_bn and type(self) in (SourceOnly, TargetOnly):
            raise ValueError(f"{type(self).__name__} sees one domain only, so it cannot fit per-domain batch norm; "
                             f"set --model.domain_bn=false")

    def build_extra(self, model: UDANet) -> dict[str, nn.Module]:
        return {}

    def average_decay(self) -> float:
        """> 0: a weight average (Polyak) at this decay is evaluated and shipped; 0: the trained weights."""
        return 0.0

    def main_parameters(self) -> list[nn.Parameter]:
        """What the main optimizer (train.lr, Ganin's annealing) trains: the network and the extra modules."""
        return list(self.model.parameters()) + [p for m in self.extra.values() for p in m.parameters()]

    def state_modules(self) -> dict[str, Any]:
        """Everything with a state dict that a resumed run needs back (training/common.save_state)."""
        average = {"average": self.average} if self.average is not None else {}
        return {"model": self.model, "opt": self.opt, "sched": self.sched, **average,
                **{f"extra.{name}": module for name, module in self.extra.items()}}

    @property
    def progress(self) -> float:
        """p in [0, 1]: the share of training done."""
        return min(1.0, self.step / self.total_steps)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the evaluated weights (best-so-far bookkeeping)."""
        return {k: v.detach().clone() for k, v in self.eval_model.state_dict().items()}

    @property
    def eval_model(self) -> UDANet:
        """The network that is evaluated and shipped: the weight average where there is one."""
        return self.average.module if self.average is not None else self.model

    def loss(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        with self.precision.autocast():
            logits = self.model(x_src, domain=self.labelled_domain)
        loss = F.cross_entropy(logits.float(), y_src)
        return {"loss": loss, "cls_loss": loss.detach(), "acc": (logits.argmax(1) == y_src).float().mean()}

    def update(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer step; returns detached scalar tensors (no .item(), so no CPU-GPU sync)."""
        out = self.loss(x_src, y_src, x_tgt)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.after_step()
        return {k: v.detach() for k, v in out.items()}

    def after_step(self) -> None:
        if self.average is not None:
            self.average.update_parameters(self.model)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, domain: int = TARGET) -> torch.Tensor:
        """Logits (B, K) of the evaluated network in eval mode."""
        model = self.eval_model
        was = model.training
        model.eval()
        with self.precision.autocast():
            logits = model(x, domain=domain).float()
        model.train(was)
        return logits


class TargetOnly(SourceOnly):
    """Upper bound: the same network trained on the *labelled target* train split (the loop passes target batches)."""

    labelled_domain = TARGET


class DANN(SourceOnly):
    """Ganin et al. 2016: L_y(source) + domain_weight * L_d(source, target), the features trained through a gradient
    reversal layer whose weight follows lambda_p; source and target go through the network as one batch."""

    Options = DANNOptions

    def build_extra(self, model: UDANet) -> dict[str, nn.Module]:
        return {"domain_classifier": domain_classifier(model.feature_dim).to(model.input_mean.device)}

    def average_decay(self) -> float:
        """ema_decay > 0: a weight average (Polyak), which damps the adversarial game's late swings; 0: none."""
        return self.hp.ema_decay

    def forward_pair(self, x_src: torch.Tensor, x_tgt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(source logits, target logits, domain loss) from one pass over cat(x_src, x_tgt)."""
        n = x_src.shape[0]
        with self.precision.autocast():
            z = self.model.trunk(torch.cat([x_src, x_tgt]), ((SOURCE, n), (TARGET, x_tgt.shape[0])))  # (2B, D)
            logits = self.model.head(z)
            d_logits = self.extra["domain_classifier"](grad_reverse(z, dann_lambda(self.progress)))
        return logits[:n], logits[n:], domain_loss(d_logits[:n], d_logits[n:])

    def loss(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        logits_src, _, d_loss = self.forward_pair(x_src, x_tgt)
        cls_loss = F.cross_entropy(logits_src.float(), y_src)
        return {"loss": cls_loss + self.hp.domain_weight * d_loss, "cls_loss": cls_loss.detach(),
                "d_loss": d_loss.detach(), "acc": (logits_src.argmax(1) == y_src).float().mean()}


class VADA(DANN):
    """DANN + target conditional entropy + VAT on source and target (VADA, Shu et al. 2018, eq. (6)), + a batch
    diversity term (information maximisation, SHOT), + a mean teacher (Tarvainen & Valpola 2017; French et al. 2018)
    whose confident target predictions supervise the student on augmented images. Each part is a weight or flag, so
    an ablation is a list of overrides; target-side weights ramp up with lambda_p. The teacher is what is shipped."""

    Options = VADAOptions

    def average_decay(self) -> float:
        """The mean teacher is DANN's weight average, at teacher_decay."""
        return self.hp.teacher_decay if self.hp.teacher else 0.0

    def target_ramp(self) -> float:
        """The weight on target-side terms: lambda_p, so they wait until the features have some source structure."""
        return dann_lambda(self.progress)

    def loss(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        hp, ramp = self.hp, self.target_ramp()
        clean_tgt = x_tgt
        if hp.augment:
            x_src, x_tgt = (augment(x, colour=hp.colour_augment) for x in (x_src, x_tgt))
        logits_src, logits_tgt, d_loss = self.forward_pair(x_src, x_tgt)
        cls_loss = F.cross_entropy(logits_src.float(), y_src)
        out = {"cls_loss": cls_loss.detach(), "d_loss": d_loss.detach(),
               "acc": (logits_src.argmax(1) == y_src).float().mean()}
        loss = hp.source_weight * cls_loss + hp.domain_weight * d_loss
        terms = {"ent_loss": (hp.ent_weight * ramp, lambda: conditional_entropy(logits_tgt)),
                 "div_loss": (hp.div_weight * ramp, lambda: diversity_loss(logits_tgt)),
                 "vat_src": (hp.vat_src_weight, lambda: self.vat(x_src, logits_src, SOURCE)),
                 "vat_tgt": (hp.vat_tgt_weight * ramp, lambda: self.vat(x_tgt, logits_tgt, TARGET)),
                 "teacher_loss": (hp.teacher_weight * ramp if self.average is not None else 0.0,
                                  lambda: self.consistency(clean_tgt, logits_tgt))}
        for name, (weight, term) in terms.items():
            if weight > 0:
                value = term()
                loss = loss + weight * value
                out[name] = value.detach()
        out["loss"] = loss
        return out

    def vat(self, x: torch.Tensor, logits: torch.Tensor, domain: int) -> torch.Tensor:
        with self.precision.autocast():
            return vat_loss(lambda v: self.model(v, domain=domain), x, logits, eps=self.hp.vat_eps)

    def consistency(self, clean_tgt: torch.Tensor, logits_tgt: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the student (augmented target) to the teacher's confident labels (clean target)."""
        with torch.no_grad(), self.precision.autocast():
            probs = F.softmax(self.average.module(clean_tgt, domain=TARGET).float(), dim=1)
        confidence, pseudo = probs.max(dim=1)
        mask = (confidence >= self.hp.teacher_threshold).float() * self.pseudo_label_mask(clean_tgt, pseudo)
        return (F.cross_entropy(logits_tgt.float(), pseudo, reduction="none") * mask).mean()

    def pseudo_label_mask(self, clean_tgt: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """(B,) 1 where the teacher's label may be trusted beyond its confidence; all ones here."""
        return torch.ones_like(pseudo, dtype=torch.float32)


class Refine(VADA):
    """DIRT-T's refinement step (Shu et al. 2018, sec. 4) applied to a trained checkpoint (`init`, e.g. a DANN
    run's final weights): the student and its mean teacher start from those weights and are trained on target batches
    with the teacher's confident labels on augmented images and the cluster terms, at full weight from step 0 (the
    decision boundary is moved away from dense target regions, not learnt anew). Source cross-entropy stays on as an
    anchor where DIRT-T uses a KL to the previous model (seed 0, MNIST -> MNIST-M, 10,000 steps: 0.950 target test
    with it, 0.947 with source_weight=0); no domain loss, and no target VAT (0.906 target val at step 1,000 with it,
    0.939 without). With `peer` (a checkpoint of the same pair that sees the images differently, e.g. VADA on grey
    input refining a DANN on colour input) a pseudo-label counts only where the peer agrees: co-training (Blum &
    Mitchell 1998; asymmetric tri-training, Saito et al. 2017), because two views err on different images."""

    Options = RefineOptions

    def __init__(self, model: UDANet, hparams: dict[str, Any] | RefineOptions, train: TrainConfig,
                 precision: Precision | None = None) -> None:
        hp = parse_options(RefineOptions, hparams, type(self).__name__)
        load_init(model, hp.init)  # before the teacher is copied from the model
        super().__init__(model, hp, train, precision)
        # a frozen second view of the same pair (another network or input): its labels veto the teacher's (co-training)
        self.peer = load_peer(hp.peer, model) if hp.peer else None

    def pseudo_label_mask(self, clean_tgt: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        if self.peer is None:
            return super().pseudo_label_mask(clean_tgt, pseudo)
        with torch.no_grad(), self.precision.autocast():
            return (self.peer(clean_tgt, domain=TARGET).argmax(1) == pseudo).float()

    def target_ramp(self) -> float:
        return 1.0


class Assoc(SourceOnly):
    """Associative domain adaptation (Haeusser et al. 2017): L = L_cls(source) + assoc_weight * (L_walker +
    visit_weight * L_visit) on the features phi that the head reads (losses.association_losses). A walk source ->
    target -> source through embedding similarities must come back to the class it left, so each target image has to
    sit near source images of one class; the visit term makes every target image take part. Source and target go
    through the network as one batch, like DANN. The preset keeps the other UDA presets' training settings (batch 64,
    Adam 1e-3 with Ganin's annealing), not the authors' batches of 1000 at lr 1e-4."""

    Options = AssocOptions

    def assoc_ramp(self) -> float:
        """0 for assoc_delay steps, then linear to 1 over assoc_delay more (1 from step 0 when assoc_delay = 0)."""
        delay = self.hp.assoc_delay
        return 1.0 if delay <= 0 else min(1.0, max(0.0, (self.step - delay) / delay))

    def loss(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x_src.shape[0]
        if self.hp.augment:
            x_src, x_tgt = (augment(x, colour=self.hp.colour_augment) for x in (x_src, x_tgt))
        with self.precision.autocast():
            phi = self.model.trunk(torch.cat([x_src, x_tgt]), ((SOURCE, n), (TARGET, x_tgt.shape[0])))  # (2B, D)
            logits_src = self.model.head(phi[:n])
        cls_loss = F.cross_entropy(logits_src.float(), y_src)
        walker, visit = association_losses(phi[:n], phi[n:], y_src, self.hp.temperature)  # in float32
        weight = self.hp.assoc_weight * self.assoc_ramp()
        return {"loss": cls_loss + weight * (walker + self.hp.visit_weight * visit), "cls_loss": cls_loss.detach(),
                "walker_loss": walker.detach(), "visit_loss": visit.detach(),
                "acc": (logits_src.argmax(1) == y_src).float().mean()}


class GTA(SourceOnly):
    """Generate to Adapt (Sankaranarayanan et al. 2018). The network's features phi = F(x) and a code c (the source
    label, or "target") drive a generator G(phi, z, c) whose images a two-headed discriminator D judges: its data head
    tells real source images from generated ones, its class head is trained on real source labels. Per step, in the
    authors' order: D learns real source -> (real, y_s), G(F(x_s)) and G(F(x_t)) -> fake; G learns to make G(F(x_s))
    pass as real and of class y_s; F and the classifier learn the source cross-entropy + cls_weight * L_F,cls (D's
    class head on G(F(x_s)) must read y_s) + adv_weight * L_F,adv (G(F(x_t)) must pass as a real source image), so
    target features are pulled to where they generate source-like digits. G and D are trained, not shipped."""

    Options = GTAOptions

    def __init__(self, model: UDANet, hparams: dict[str, Any] | GTAOptions, train: TrainConfig,
                 precision: Precision | None = None) -> None:
        super().__init__(model, hparams, train, precision)
        gan = {"lr": self.hp.gan_lr, "betas": (self.hp.gan_beta1, 0.999)}  # constant rates, as the authors'
        self.opt_g = torch.optim.Adam(self.extra["generator"].parameters(), **gan)
        self.opt_d = torch.optim.Adam(self.extra["discriminator"].parameters(), **gan)

    def build_extra(self, model: UDANet) -> dict[str, nn.Module]:
        device, k = model.input_mean.device, model.config.num_classes
        return {"generator": GTAGenerator(model.feature_dim, k, self.hp.z_dim, self.hp.gan_width,
                                          model.config.image_size).to(device),
                "discriminator": GTADiscriminator(k, self.hp.gan_width).to(device)}

    def main_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())  # G and D have optimizers of their own

    def average_decay(self) -> float:
        """ema_decay > 0: F and the classifier are evaluated and shipped as their weight average; 0: as trained."""
        return self.hp.ema_decay

    def state_modules(self) -> dict[str, Any]:
        return {**super().state_modules(), "opt_g": self.opt_g, "opt_d": self.opt_d}

    def update(self, x_src: torch.Tensor, y_src: torch.Tensor, x_tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        gen, disc, n, hp = self.extra["generator"], self.extra["discriminator"], x_src.shape[0], self.hp
        if hp.augment:
            x_src, x_tgt = (augment(x, colour=hp.colour_augment) for x in (x_src, x_tgt))
        code = torch.cat([y_src, torch.full((x_tgt.shape[0],), gen.num_classes, device=y_src.device)])
        with self.precision.autocast():
            phi = self.model.trunk(torch.cat([x_src, x_tgt]), ((SOURCE, n), (TARGET, x_tgt.shape[0])))  # (2B, D)
            logits_src = self.model.head(phi[:n])
            fake = gen(phi, torch.randn(phi.shape[0], hp.z_dim, device=phi.device), code)  # G(F(x_s)), G(F(x_t))
        # D: real source -> (real, y_s); both generations -> fake
        with self.precision.autocast():
            real_data, real_class = disc(x_src)
            fake_data, _ = disc(fake.detach())
        d_loss = (real_logit_loss(real_data, True) + F.cross_entropy(real_class.float(), y_src)
                  + real_logit_loss(fake_data[:n], False) + real_logit_loss(fake_data[n:], False))
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # G and F against the updated D; each takes the gradient of its own loss only
        with self.precision.autocast():
            fake_data, fake_class = disc(fake)
        class_of_src = F.cross_entropy(fake_class[:n].float(), y_src)
        g_loss = real_logit_loss(fake_data[:n], True) + class_of_src
        cls_loss = F.cross_entropy(logits_src.float(), y_src)
        f_adv = real_logit_loss(fake_data[n:], True)
        f_loss = cls_loss + hp.cls_weight * class_of_src + hp.adv_weight * f_adv
        g_params = list(gen.parameters())
        g_grads = torch.autograd.grad(g_loss, g_params, retain_graph=True)
        self.opt.zero_grad(set_to_none=True)
        f_loss.backward()  # also leaves gradients on G and D: G's are replaced below, D's cleared at its next step
        for p, grad in zip(g_params, g_grads):
            p.grad = grad
        self.opt_g.step()
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.after_step()
        out = {"loss": f_loss, "cls_loss": cls_loss, "d_loss": d_loss, "g_loss": g_loss, "f_cls_loss": class_of_src,
               "f_adv_loss": f_adv, "acc": (logits_src.argmax(1) == y_src).float().mean()}
        return {k: v.detach() for k, v in out.items()}

    @torch.no_grad()
    def source_like(self, x: torch.Tensor, domain: int = TARGET) -> torch.Tensor:
        """G's source-like images (B, 3, H, W) in [-1, 1] of a one-domain batch, coded "target" as in training."""
        gen, model = self.extra["generator"], self.eval_model
        was = (gen.training, model.training)
        gen.eval(), model.eval()
        with self.precision.autocast():
            phi = model.features(x, domain)
            code = torch.full((x.shape[0],), gen.num_classes, device=x.device)
            z = torch.randn(x.shape[0], self.hp.z_dim, device=x.device,
                            generator=torch.Generator(device=x.device).manual_seed(0))
            images = gen(phi, z, code).float()
        gen.train(was[0]), model.train(was[1])
        return images


def real_logit_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of D's data-head logits against "real" (1) or "generated" (0), in float32."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if real else 0.0))


def load_peer(path: str, model: UDANet) -> UDANet:
    """A trained checkpoint of the same pair (any network config), frozen in eval mode, for Refine's `peer`."""
    peer, meta = checkpoint.load(path, device=model.input_mean.device)
    check_same_pair(peer, meta, model, f"--method.peer={path}", "use a checkpoint of the same pair")
    return peer.eval().requires_grad_(False)


def check_same_pair(trained: UDANet, meta: dict[str, Any], model: UDANet, option: str, fix: str) -> None:
    """Refuse a checkpoint from another pair: the domains' input statistics, stored in the model, differ."""
    if not torch.allclose(trained.input_mean, model.input_mean, atol=1e-4):
        data = meta.get("run", {}).get("data", {})
        raise ValueError(f"{option} was trained on {data.get('domain')} -> {data.get('target_domain')}, whose input "
                         f"statistics differ from this run's domains; {fix}")


def load_init(model: UDANet, path: str) -> None:
    """Copy a trained checkpoint's weights into `model`, which must have the same network config and the same
    domains' input statistics (so a refinement cannot silently start from another pair's model)."""
    if not path:
        raise ValueError("method 'refine' starts from a trained checkpoint: set --method.init=<checkpoint folder>, "
                         "e.g. the DANN run's checkpoint for the same pair")
    trained, meta = checkpoint.load(path, device=model.input_mean.device)
    theirs, ours = to_dict(trained.config), to_dict(model.config)
    if theirs != ours:
        diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
        raise ValueError(f"--method.init={path} has a different network (field: (checkpoint, this run) {diff}); "
                         f"set the same --model.* options as the run that wrote it")
    check_same_pair(trained, meta, model, f"--method.init={path}", "start from a checkpoint of the same pair")
    model.load_state_dict(trained.state_dict())


UDA_METHODS: dict[str, type[SourceOnly]] = {
    "source_only": SourceOnly,
    "dann": DANN,
    "vada": VADA,
    "refine": Refine,
    "assoc": Assoc,
    "gta": GTA,
    "target_only": TargetOnly,
}


# ---------------------------------------------------------------- data on the training device


class DomainData:
    """One domain's splits as uint8 tensors on the device (grey kept 1-channel, replicated per batch)."""

    def __init__(self, root: str, domain: str, image_size: int, device: torch.device,
                 splits: tuple[str, ...] = ("train", "val", "test"), rank: int = 0, world: int = 1) -> None:
        self.name, self.splits, self.rank, self.world = domain, {}, rank, world
        for split in splits:
            try:
                data = read_digits(root, domain, split, channels=None, image_size=image_size)
            except ValueError as err:  # e.g. the course's hw2_data has no test split
                if split == "train":
                    raise
                log.info("%s: no %s split (%s)", domain, split, err)
                continue
            self.splits[split] = (data.images.to(device), data.labels.to(device))

    @property
    def channels(self) -> int:
        """1 for a grey domain (MNIST, USPS), 3 for a colour one."""
        return self.splits["train"][0].shape[1]

    def batch(self, n: int, generator: torch.Generator, fmt: torch.memory_format,
              split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch (with replacement) indexed on the device: images (n, 3, H, W) in [-1, 1], labels (n,).
        Under torchrun each rank draws train batches from its own disjoint 1/world of the split."""
        images, labels = self.splits[split]
        if split == "train" and self.world > 1:
            images, labels = images[self.rank::self.world], labels[self.rank::self.world]
        idx = torch.randint(len(images), (n,), device=images.device, generator=generator)
        return to_rgb(to_model_range(images[idx])).contiguous(memory_format=fmt), labels[idx]

    def input_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (3,) of the train images in model range, for domain input normalisation."""
        x = to_rgb(to_model_range(self.splits["train"][0][:20000]))
        return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey -> (B, 3, H, W) by replication; RGB passes through."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def evaluate(method: SourceOnly, data: DomainData, split: str, domain: int, fmt: torch.memory_format,
             batch_size: int = 1000, scores: bool = False) -> dict[str, float] | None:
    """Accuracy, mean prediction entropy and the information maximisation score (label-free: dlcv.validators);
    with `scores`, also SND and BNM of the predictions."""
    if split not in data.splits:
        return None
    images, labels = data.splits[split]
    logits = torch.cat([method.predict(to_rgb(to_model_range(images[i:i + batch_size])).contiguous(memory_format=fmt),
                                       domain=domain) for i in range(0, len(images), batch_size)])
    out = {"acc": (logits.argmax(1) == labels).float().mean().item(), "entropy": -entropy_score(logits),
           "im": im_score(logits)}
    if scores:
        out.update(snd=snd_score(logits), bnm=bnm_score(logits))
    return out


def label_free_scores(method: SourceOnly, src: DomainData, tgt: DomainData, tgt_val: dict[str, float],
                      n: int = VALIDATOR_IMAGES) -> dict[str, float]:
    """Every label-free validator of the evaluated network (higher = better; keys as SelectionRule's): entropy, IM, SND
    and BNM of its predictions on all target val images (tgt_val, from evaluate(..., scores=True)), and DEV from the
    first n source train, source val and target val images."""
    model = method.eval_model
    src_train, src_val, tgt_x = (model_outputs(model, images[:n], domain) for images, domain in (
        (src.splits["train"][0], SOURCE), (src.splits["val"][0], SOURCE), (tgt.splits["val"][0], TARGET)))
    dev = dev_score(src_train.features, src_val.features, src_val.logits, src.splits["val"][1][:n], tgt_x.features)
    return {"target_im": tgt_val["im"], "target_entropy": -tgt_val["entropy"], "target_snd": tgt_val["snd"],
            "target_bnm": tgt_val["bnm"], "dev": dev}


def method_options(cfg: RunConfig) -> tuple[str, str, dict[str, Any]]:
    """(method name, selection rule, the method's own hyper-parameters) from cfg.method."""
    hp = dict(cfg.method)
    return hp.pop("name", "dann"), hp.pop("select", "labelled_val"), hp


def resolve_input_norm(cfg: RunConfig, source_channels: int, target_channels: int) -> RunConfig:
    """cfg with model.input_norm="auto" replaced by what the domains' stored channel counts call for."""
    if cfg.model.input_norm != "auto":
        return cfg
    # labels from a grey domain cannot teach colour, so a colour other domain is seen by its luminance only
    labelled, other = (source_channels, target_channels)
    if UDA_METHODS[method_options(cfg)[0]].labelled_domain == TARGET:
        labelled, other = other, labelled
    norm = "grey" if (labelled, other) == (1, 3) else "instance"
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, input_norm=norm))


class UDA(Algorithm):
    """The family: cfg.method.name's method from data.domain (labelled) to data.target_domain (unlabelled), weights
    selected without target labels (method.select); the checkpoint records target test accuracy and the oracle."""

    REFUSES = {"ema_decay": "a UDA method's weight average is method.ema_decay (dann) or method.teacher_decay (vada)"}

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg = self.cfg
        from dlcv.training import parse_method  # lazy: the package imports this module

        options = parse_method(cfg.family, cfg.method)
        name = options.name
        self.select = options.select
        if not cfg.data.target_domain or cfg.data.target_domain == cfg.data.domain:
            raise ValueError("UDA needs --data.target_domain set to a domain other than --data.domain, "
                             "e.g. --data.domain=mnistm --data.target_domain=usps")
        device, fmt = ctx.device, ctx.precision.fmt
        self.src = DomainData(cfg.data.root, cfg.data.domain, cfg.data.image_size, device, rank=ctx.rank,
                              world=ctx.world)
        self.tgt = DomainData(cfg.data.root, cfg.data.target_domain, cfg.data.image_size, device, rank=ctx.rank,
                              world=ctx.world)
        self.cfg = ctx.cfg = cfg = resolve_input_norm(cfg, self.src.channels, self.tgt.channels)
        model = build_model(cfg.architecture, cfg.model).to(device)
        for domain, data in ((SOURCE, self.src), (TARGET, self.tgt)):
            model.set_input_stats(domain, *data.input_stats())
        model = model.to(memory_format=fmt)
        self.method = UDA_METHODS[name](model, options, cfg.train, ctx.precision)
        self.labelled = self.tgt if self.method.labelled_domain == TARGET else self.src
        if self.method.labelled_domain == TARGET and self.select not in ("labelled_val", "last"):
            raise ValueError(f"method.select={self.select!r} scores a model adapted from a labelled source; "
                             f"{name} trains on target labels: use --method.select=labelled_val")
        self.generator = torch.Generator(device=device).manual_seed(ctx.seed())
        self.best = {"selected": (-math.inf, 0, None), "oracle": (-math.inf, 0, None)}  # (score, step, state)

    def state_modules(self) -> dict[str, Any]:
        return self.method.state_modules()

    def begin(self, start: int, extra: dict[str, Any]) -> None:
        if start:  # resumed: the step count drives lambda_p, and the batches and best weights go on where they were
            self.method.step = start
            self.generator.set_state(extra["batch_rng"])
            self.best = {key: tuple(value) for key, value in extra["best"].items()}
        self.method.model.train()

    def batches(self, start: int) -> Iterator[tuple[torch.Tensor, ...]]:
        fmt = self.ctx.precision.fmt
        while True:
            x_lab, y_lab = self.labelled.batch(self.ctx.batch_size, self.generator, fmt)
            x_tgt, _ = self.tgt.batch(self.ctx.batch_size, self.generator, fmt)  # target labels are never read here
            yield x_lab, y_lab, x_tgt

    def update(self, step: int, batches) -> dict[str, torch.Tensor]:
        return self.method.update(*next(batches))

    def evaluate(self, step: int) -> dict[str, float]:
        method, fmt = self.method, self.ctx.precision.fmt
        lab_val = evaluate(method, self.labelled, "val", method.labelled_domain, fmt)
        tgt_val = evaluate(method, self.tgt, "val", TARGET, fmt, scores=True)
        scores = {"labelled_val": lab_val["acc"], "last": step - 1}
        if method.labelled_domain == SOURCE:  # target-only reads target labels: nothing label-free to select by
            scores.update(label_free_scores(method, self.src, self.tgt, tgt_val))
        if scores[self.select] >= self.best["selected"][0]:  # ties go to the later step
            self.best["selected"] = (scores[self.select], step, method.snapshot())
        if tgt_val["acc"] >= self.best["oracle"][0]:  # oracle: reads target val labels; reported apart, never shipped
            self.best["oracle"] = (tgt_val["acc"], step, method.snapshot())
        # every validator's score is logged (validator/<rule>), with target test accuracy beside it (oracle/), so
        # `dlcv.uda_table --validators` can say what each rule would have picked; neither is read to select here
        tgt_test = evaluate(method, self.tgt, "test", TARGET, fmt)
        logged = {"labelled_val_acc": round(lab_val["acc"], 5), "target_val_acc": round(tgt_val["acc"], 5),
                  "target_val_im": round(tgt_val["im"], 5),
                  # unrounded, so a pick from the log is the pick this run would make
                  **{f"validator/{k}": v for k, v in scores.items() if k not in ("labelled_val", "last")},
                  "steps_per_s": round(step / max(self.ctx.train_seconds, 1e-9), 2)}
        if tgt_test is not None:
            logged["oracle/target_test_acc"] = round(tgt_test["acc"], 5)
        return logged

    def extra_state(self) -> dict[str, Any]:
        return {"best": self.best, "batch_rng": self.generator.get_state()}

    @classmethod
    def makes_samples(cls, cfg: RunConfig) -> bool:
        return UDA_METHODS.get(method_options(cfg)[0]) is GTA

    @torch.no_grad()
    def sample(self, per_class: int = 4) -> tuple[torch.Tensor, int]:
        """GTA's figure: a row per class (the class the model predicts, so no target label is read), each target val
        image followed by G's source-like image of it; rows are left blank where fewer images carry that class."""
        split = "val" if "val" in self.tgt.splits else "train"
        fmt = self.ctx.precision.fmt
        images = to_rgb(to_model_range(self.tgt.splits[split][0][:2000])).contiguous(memory_format=fmt)
        predicted = self.method.predict(images).argmax(1)
        k = self.method.model.config.num_classes
        rows = torch.full((k, 2 * per_class, *images.shape[1:]), -1.0, device=images.device)
        for c in range(k):
            x = images[predicted == c][:per_class]
            if len(x):
                rows[c, 0:2 * len(x):2] = x.float()
                rows[c, 1:2 * len(x):2] = self.method.source_like(x)
        return rows.flatten(0, 1), 2 * per_class

    def shipped(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        return self.method.eval_model, {}

    def export(self, out: Path, done: int) -> Path:
        if done == 0:
            raise RuntimeError(f"{self.cfg.name}: train.steps=0 trains nothing; use --train.steps >= 1")
        return _finish(self.cfg, self.method, self.src, self.tgt, self.best, self.ctx.train_seconds, out, done)


def export_final(cfg: RunConfig, out: str | Path) -> Path:
    """Write the checkpoint of a finished run's *final* weights (its state.pt at train.steps), every figure measured
    afresh on them, with method.select='last' in its config: the label-free 'final weights' rule for a run trained
    under another selection rule. Selection never changes training, so this is the run that select=last would give."""
    uda = start(cfg, UDA)
    cfg, method = uda.cfg, uda.method
    begun, extra = load_state(cfg, method.state_modules())
    if begun != cfg.train.steps:
        raise RuntimeError(f"{run_dir(cfg)}: the run stopped at step {begun} of {cfg.train.steps}; finish it first "
                           f"(rerun the same command: it resumes) and then export its final weights")
    best = {key: tuple(value) for key, value in extra["best"].items()}
    best["selected"] = (math.inf, begun, method.snapshot())
    cfg = dataclasses.replace(cfg, method={**cfg.method, "select": "last"})
    return _finish(cfg, method, uda.src, uda.tgt, best, extra["train_time"], out, begun)


def _finish(cfg: RunConfig, method: SourceOnly, src: DomainData, tgt: DomainData, best: dict[str, tuple],
            train_time: float, out: str | Path, steps: int) -> Path:
    """Measure the selected and the oracle weights on target test, then save the selected ones with the figures."""
    (name, select, _), fmt = method_options(cfg), method.precision.fmt
    labelled = tgt if method.labelled_domain == TARGET else src
    final = method.eval_model
    result: dict[str, Any] = {"method": name, "source": src.name, "target": tgt.name, "steps": steps,
                              "steps_per_s": round(steps / max(train_time, 1e-9), 3),
                              "train_seconds": round(train_time, 1), "last_step_target_test_acc": None}
    last_test = evaluate(method, tgt, "test", TARGET, fmt)
    result["last_step_target_test_acc"] = last_test["acc"] if last_test else None
    for key, prefix in (("oracle", "oracle_"), ("selected", "")):  # selected last, so `final` keeps its weights
        _, best_step, state = best[key]
        final.load_state_dict(state)
        test = evaluate(method, tgt, "test", TARGET, fmt)
        result[f"{prefix}target_val_acc"] = evaluate(method, tgt, "val", TARGET, fmt)["acc"]
        result[f"{prefix}target_test_acc"] = test["acc"] if test else None
        result[f"{key}_step"] = best_step
    result["selected_by"] = select
    if select != "last":  # the rule's own score of these weights, so seeds can be ranked by it (uda_table --ship)
        result["selected_score"] = best["selected"][0]
    result["labelled_val_acc"] = evaluate(method, labelled, "val", method.labelled_domain, fmt)["acc"]
    result = {k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}
    checkpoint.save(final.to(memory_format=torch.contiguous_format), out, {"run": run_record(cfg), "metrics": result})
    log.info("%s: %s -> %s", cfg.name, result, out)
    return Path(out)


def _setup(cfg: RunConfig) -> tuple[RunConfig, DomainData, DomainData, SourceOnly]:
    """(resolved config, source, target, method) as a run of `cfg` starts them (seeded, on its device)."""
    uda = start(cfg, UDA)
    return uda.cfg, uda.src, uda.tgt, uda.method
