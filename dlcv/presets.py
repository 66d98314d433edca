"""Named RunConfigs. `python -m dlcv train NAME --train.lr=1e-4` edits a copy of one of these."""

from __future__ import annotations

from dataclasses import replace

from dlcv.config import DataConfig, RunConfig, TrainConfig, from_dict, to_dict
from dlcv.models.classifier import ClassifierConfig
from dlcv.models.gan import GeneratorConfig
from dlcv.models.uda import UDANetConfig
from dlcv.models.unet import UNetConfig
from dlcv.models.vae import VAEConfig

PRESETS: dict[str, RunConfig] = {
    # a digit classifier on one domain; --data.domain=usps etc. picks another (grey domains -> 3 channels)
    "classifier_digits": RunConfig(
        name="classifier_digits", family="classifier", architecture="classifier",
        model=ClassifierConfig(kind="convnet", in_channels=3, image_size=28, num_classes=10, width=32),
        data=DataConfig(dataset="digits", domain="mnistm", image_size=28, channels=3),
        train=TrainConfig(steps=3000, batch_size=128, lr=2e-3, betas=(0.9, 0.999), weight_decay=5e-4,
                          eval_every=500, save_every=500),
    ),
    # checks the Smiling ACGAN: does a generated face show the attribute that was asked for?
    "smiling_classifier": RunConfig(
        name="smiling_classifier", family="classifier", architecture="classifier",
        model=ClassifierConfig(kind="convnet", in_channels=3, image_size=64, num_classes=2, width=32),
        data=DataConfig(dataset="face", attribute="Smiling", image_size=64, channels=3),
        train=TrainConfig(steps=2000, batch_size=64, lr=2e-3, betas=(0.9, 0.999), weight_decay=5e-4,
                          eval_every=250, save_every=250),
    ),
    # class-conditional DDPM on MNIST-M with classifier-free guidance; sampled with DDIM
    "ddpm_digits": RunConfig(
        name="ddpm_digits", family="diffusion", architecture="unet",
        # width 16 keeps DDIM-50 with guidance near a minute for 1000 digits on 2 CPU cores (148 MFLOP/image)
        model=UNetConfig(in_channels=3, image_size=28, base_width=16, channel_mults=(1, 2, 4), blocks_per_level=1,
                         attention_levels=(2,), num_classes=10, dropout=0.1),
        data=DataConfig(dataset="digits", domain="mnistm", image_size=28, channels=3),
        train=TrainConfig(steps=8000, batch_size=128, lr=6e-4, betas=(0.9, 0.999), ema_decay=0.999,
                          log_every=100, sample_every=2000, save_every=500, channels_last=False),
        method={"p_uncond": 0.1, "guidance": 2.0, "warmup_steps": 200,
                "schedule": {"num_timesteps": 1000, "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02}},
    ),
    # ACGAN on MNIST-M: one generator for all ten digits. conditioning="multiply" (z * embed(y)): with "concat" the
    # learned embedding outgrew z (first-layer weights 12x larger) and G ignored z: one image per class. A spectral-
    # norm hinge D with TTUR and a G EMA lifted course-classifier accuracy from 0.41 (BCE, batch-norm D) to 0.92;
    # 15,000 steps take ~39 min on one CPU thread shared with other jobs
    "acgan_digits": RunConfig(
        name="acgan_digits", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=28, channels=3, width=32, num_classes=10, conditioning="multiply"),
        data=DataConfig(dataset="digits", domain="mnistm", image_size=28, channels=3),
        train=TrainConfig(steps=15000, batch_size=64, lr=1e-4, betas=(0.0, 0.9), ema_decay=0.999, log_every=100,
                          sample_every=1000, save_every=500, snapshot_every=3000),
        method={"loss": "hinge", "aux_weight": 1.0, "d_width": 64, "d_lr": 4e-4, "spectral_norm": True,
                "d_norm": "none"},
    ),
    # method A: the course's DCGAN (Radford et al. 2016): 64x64, z 100, BCE, Adam 2e-4 / beta1 0.5, N(0, 0.02) init
    "dcgan_faces": RunConfig(
        name="dcgan_faces", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=20000, batch_size=64, lr=2e-4, betas=(0.5, 0.999), log_every=100,
                          sample_every=1000, save_every=1000),
        method={"loss": "dcgan", "d_width": 64, "d_norm": "batch"},
    ),
    # method A as shipped: the same maths + one-sided label smoothing (Salimans et al. 2016) and an EMA of G for
    # sampling; FID 26.19 at step 37,500 against 34.34 for the best plain-DCGAN snapshot (RESULTS.md)
    "dcgan_faces_ema": RunConfig(
        name="dcgan_faces_ema", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=40000, batch_size=64, lr=2e-4, betas=(0.5, 0.999), ema_decay=0.999, log_every=100,
                          sample_every=1000, save_every=1000, snapshot_every=2500),
        method={"loss": "dcgan", "d_width": 64, "d_norm": "batch", "label_smoothing": 0.1},
    ),
    # method B: SNGAN-style D (spectral norm, hinge; Miyato et al. 2018) + DiffAugment + TTUR + EMA of G
    "sngan_faces": RunConfig(
        name="sngan_faces", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=20000, batch_size=64, lr=1e-4, betas=(0.0, 0.9), ema_decay=0.999, log_every=100,
                          sample_every=1000, save_every=1000),
        # d_width 128: a wider D had the better proxy FID (only G is saved, so D's width costs no checkpoint size)
        method={"loss": "hinge", "d_lr": 4e-4, "d_width": 128, "d_norm": "none", "spectral_norm": True,
                "diffaugment": "color,translation,cutout"},
    ),
    # method B candidate at method A's cost per step: D of A's width with spectral norm and hinge, DiffAugment and
    # LeCam regularisation (Tseng et al. 2021: both made for small training sets), TTUR and an EMA of G
    "lecam_faces": RunConfig(
        name="lecam_faces", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=60000, batch_size=64, lr=1e-4, betas=(0.0, 0.9), ema_decay=0.999, log_every=100,
                          sample_every=2500, save_every=500, snapshot_every=2500),
        method={"loss": "hinge", "d_lr": 4e-4, "d_width": 64, "d_norm": "none", "spectral_norm": True,
                "diffaugment": "color,translation", "lecam_weight": 0.3},
    ),
    # WGAN-GP (Gulrajani et al. 2017): layer-normed critic, 5 critic updates per G update, lambda 10
    "wgan_gp_faces": RunConfig(
        name="wgan_gp_faces", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=20000, batch_size=64, lr=1e-4, betas=(0.0, 0.9), log_every=100,
                          sample_every=1000, save_every=1000),
        method={"loss": "wgan_gp", "n_critic": 5, "gp_weight": 10.0, "d_width": 64, "d_norm": "layer"},
    ),
    # ACGAN on faces conditioned on Smiling (0/1); smiling_classifier checks that the attribute comes out. The
    # adversarial part is method B's (hinge, spectral norm, DiffAugment, TTUR, EMA): only 8,935 faces carry labels
    "acgan_faces": RunConfig(
        name="acgan_faces", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64, num_classes=2, conditioning="multiply"),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute="Smiling"),
        train=TrainConfig(steps=20000, batch_size=64, lr=1e-4, betas=(0.0, 0.9), ema_decay=0.999, log_every=100,
                          sample_every=1000, save_every=1000),
        method={"loss": "hinge", "d_lr": 4e-4, "d_width": 64, "d_norm": "none", "spectral_norm": True,
                "diffaugment": "color,translation,cutout", "aux_weight": 1.0},
    ),
    # the Smiling ACGAN as a fine-tune of method A (Wang et al. 2018, "Transferring GANs"): G starts from the shipped
    # dcgan_faces with class-conditional batch norm (every class's gain and shift = the DCGAN's, so G(z, y) = G_A(z)
    # at first); the DCGAN game (BCE, smoothing 0.1, batch-norm D + class head) goes on after 500 steps of D alone,
    # with G at a tenth of D's learning rate (higher G rates lost the DCGAN's FID in the first 1,000 steps: RESULTS.md)
    # and two frozen Smiling classifiers as teachers at weight 3 (the class loss alone left agreement at 0.75-0.84;
    # the shipped smiling_classifier, seed 0, stays the held-out judge)
    "acgan_faces_from_dcgan": RunConfig(
        name="acgan_faces_from_dcgan", family="gan", architecture="generator",
        model=GeneratorConfig(z_dim=100, image_size=64, channels=3, width=64, num_classes=2, conditioning="cbn"),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute="Smiling"),
        # 3,500 steps: the shipped acgan_faces is `python -m dlcv average` of the snapshots at 2,000-3,500 (FID rises
        # and agreement keeps rising after that: RESULTS.md)
        train=TrainConfig(steps=3500, batch_size=64, lr=2e-5, betas=(0.5, 0.999), ema_decay=0.999, log_every=100,
                          sample_every=1000, save_every=1000, snapshot_every=500),
        method={"loss": "dcgan", "d_lr": 2e-4, "d_width": 64, "d_norm": "batch", "label_smoothing": 0.1,
                "aux_weight": 1.0, "init_generator": "checkpoints/dcgan_faces", "d_warmup": 500,
                "teacher": "checkpoints/smiling_classifier_s1,checkpoints/smiling_classifier_s2",
                "teacher_weight": 3.0},
    ),
    # VAE on faces: a small beta keeps reconstructions sharp (target: val MSE <= 0.010 with pixels in [0, 1])
    "vae_faces": RunConfig(
        name="vae_faces", family="vae", architecture="vae",
        model=VAEConfig(image_size=64, channels=3, latent_dim=128, width=32),
        data=DataConfig(dataset="face", image_size=64, channels=3, attribute=""),
        train=TrainConfig(steps=20000, batch_size=64, lr=5e-4, betas=(0.9, 0.999), log_every=100, eval_every=1000,
                          sample_every=1000, save_every=1000),
        method={"kl_weight": 0.1, "kl_warmup_steps": 2000},
    ),
}


def _uda(method: str, domain_bn: bool, select: str = "labelled_val", sample_every: int = 0,
         **options: object) -> RunConfig:
    """A UDA run on digits: --data.domain (labelled source) -> --data.target_domain (unlabelled)."""
    return RunConfig(
        name=f"uda_{method}", family="uda", architecture="uda_net",
        model=UDANetConfig(in_channels=3, image_size=28, num_classes=10, width=64, domain_bn=domain_bn,
                           input_norm="auto"),
        data=DataConfig(dataset="digits", domain="mnistm", target_domain="usps", image_size=28, channels=3),
        # 5000 steps: about 4 min per run on a GPU running 8 runs at once (VADA ~22 steps/s, DANN ~64)
        train=TrainConfig(steps=5000, batch_size=64, lr=1e-3, betas=(0.9, 0.999), log_every=100,
                          eval_every=500, save_every=500, sample_every=sample_every),
        method={"name": method, "select": select, **options},
    )


# unsupervised domain adaptation on digits: lower bound, DANN, VADA + mean teacher, upper bound (training/uda.py).
# All use per-image input standardisation (DIRT-T), of the luminance alone when grey labels meet a colour domain
# (input_norm=auto). Per-domain BN helps VADA but broke DANN on grey -> MNIST-M (usps->mnistm 0.13, mnist->mnistm
# 0.12 target test at 4000 steps), so DANN keeps Ganin's one shared BN.
PRESETS.update({
    "uda_source_only": _uda("source_only", domain_bn=False),
    # Ganin's DANN: one BN over the mixed batch (DSBN hurt grey->colour); evaluated and shipped as the EMA of its
    # weights, which damps the adversarial game's late swings (3-seed target test on CPU, plain -> EMA: MNIST-M->USPS
    # 88.1 -> 90.3, MNIST->USPS 95.3 -> 96.4, USPS->MNIST 94.3 -> 97.0); --method.ema_decay=0 is the plain DANN
    "uda_dann": _uda("dann", domain_bn=False, ema_decay=0.999),
    "uda_vada": _uda("vada", domain_bn=True),
    # DIRT-T-style refinement of a trained run: --method.init=<its checkpoint> and the same --model.* options.
    # Its final weights are shipped: it starts where source val has saturated, so source val cannot rank its steps
    "uda_refine": _uda("refine", domain_bn=False, select="last"),
    # associative DA (Haeusser et al. 2017): a walk source -> target -> source through feature similarities must keep
    # its class; one shared BN, as uda_dann; both domains augmented (AssocOptions; --method.augment=false: plain)
    "uda_assoc": _uda("assoc", domain_bn=False),
    # Generate to Adapt (Sankaranarayanan et al. 2018): a generator of source-like images from both domains' features;
    # the grid of target digits beside their source-like images is written every 1,000 steps (runs/uda_gta/samples)
    "uda_gta": _uda("gta", domain_bn=False, sample_every=1000),
    "uda_target_only": _uda("target_only", domain_bn=False),
})


# a LeNet of the course grader's architecture trained by us on the MNIST-M training labels (not the course's weights):
# four seeds of it (1, 2, 6, 7) join classifier_digits_mnistm as acgan_digits_teacher's teachers
_classifier = PRESETS["classifier_digits"]
PRESETS["classifier_digits_lenet"] = replace(
    _classifier, name="classifier_digits_lenet", model=replace(_classifier.model, kind="lenet"),
    train=replace(_classifier.train, steps=2000))

# the same two architectures trained on `mnistm_synth` (MNIST digits on BSDS500 patches, as Ganin & Lempitsky made
# MNIST-M; `data prepare --synth-mnistm 50000`): other training digits, so other blind spots than the real-data teachers
_lenet = PRESETS["classifier_digits_lenet"]
PRESETS["classifier_digits_lenet_synth"] = replace(
    _lenet, name="classifier_digits_lenet_synth", data=replace(_lenet.data, domain="mnistm_synth"),
    train=replace(_lenet.train, steps=6000))
PRESETS["classifier_digits_synth"] = replace(
    _classifier, name="classifier_digits_synth", data=replace(_classifier.data, domain="mnistm_synth"))

# the shipped acgan_digits: the same ACGAN plus the mean cross-entropy of frozen MNIST-M classifiers on G(z, y) in G's
# loss (trained on the training labels only), because D's jointly trained class head (0.91 on real digits) capped
# class fidelity; teachers of two architectures and two training sets leave fewer digits that one network reads as y
# and another does not
_acgan = PRESETS["acgan_digits"]
TEACHERS = ("checkpoints/classifier_digits_mnistm", *(f"checkpoints/classifier_digits_lenet_s{s}" for s in (1, 2, 6, 7)),
            "checkpoints/classifier_digits_lenet_synth_s0", "checkpoints/classifier_digits_lenet_synth_s1",
            "checkpoints/classifier_digits_synth_s0")
PRESETS["acgan_digits_teacher"] = replace(
    _acgan, name="acgan_digits_teacher", train=replace(_acgan.train, steps=32000, snapshot_every=2000),
    method={**_acgan.method, "teacher": ",".join(TEACHERS)})


def get_preset(name: str) -> RunConfig:
    """A fresh copy of a preset (editing it never changes PRESETS)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return from_dict(RunConfig, to_dict(PRESETS[name]))
