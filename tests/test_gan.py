"""GAN family: shapes, loss properties (gradient penalty, signs, smoothing), DiffAugment, seeded sampling, and
2-step runs of the GAN presets that write loadable checkpoints and resume."""

import json
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import checkpoint
from dlcv.config import apply_overrides, from_dict, to_dict
from dlcv.losses import auxiliary_class_loss, bce_losses, gradient_penalty, hinge_losses, wasserstein_losses
from dlcv.models import build_model
from dlcv.models.gan import ConditionalBatchNorm2d, Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from dlcv.presets import get_preset
from dlcv.sampling import sample_gan
from dlcv.training import method_config, train
from dlcv.training.common import run_dir
from dlcv.training.gan import AUGMENTS, GAN_LOSSES, GANMethod, diff_augment, load_generator_init

# ---------------------------------------------------------------- models


@pytest.mark.parametrize("image_size", [28, 64])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_generator_and_discriminator_shapes(image_size, num_classes):
    generator = Generator(GeneratorConfig(image_size=image_size, width=4, num_classes=num_classes)).eval()
    y = torch.tensor([0, 2]) if num_classes else None
    x = generator(torch.randn(2, generator.z_dim), y)
    assert x.shape == (2, 3, image_size, image_size)
    assert torch.isfinite(x).all() and x.abs().max() <= 1
    for norm in ("batch", "layer", "none"):
        config = DiscriminatorConfig(image_size=image_size, width=4, num_classes=num_classes, norm=norm,
                                     spectral_norm=norm == "none")
        logits, class_logits = Discriminator(config)(x)
        assert logits.shape == (2,) and torch.isfinite(logits).all()
        assert (class_logits is None) if num_classes == 0 else class_logits.shape == (2, num_classes)


def test_class_head_can_stay_out_of_spectral_norm():
    from torch.nn.utils.parametrize import is_parametrized

    config = DiscriminatorConfig(image_size=28, width=4, num_classes=10, norm="none", spectral_norm=True)
    d = Discriminator(config)
    assert is_parametrized(d.head, "weight") and is_parametrized(d.class_head, "weight")
    free = Discriminator(DiscriminatorConfig(**{**config.__dict__, "class_head_spectral_norm": False}))
    assert is_parametrized(free.head, "weight") and not is_parametrized(free.class_head, "weight")


def test_conditional_generator_uses_the_label_and_needs_one():
    for conditioning in ("concat", "multiply", "cbn"):
        generator = Generator(GeneratorConfig(image_size=28, width=4, num_classes=10, conditioning=conditioning)).eval()
        z = torch.randn(1, 100).expand(2, -1)
        x = generator(z, torch.tensor([1, 7]))
        assert not torch.allclose(x[0], x[1])  # same z, other digit -> another image
        with pytest.raises(ValueError, match="pass y"):
            generator(z)


def test_cbn_conditioning_starts_with_classes_alike_and_keeps_z_unmixed():
    """cbn: the class restyles batch-norm channels (gain ~ N(1, 0.02), shift 0 at init) and never enters as input, so
    one z with either label starts as almost the same image, unlike z * e_y; both train and reload like the others."""
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    gaps = {}
    for conditioning in ("multiply", "cbn"):
        torch.manual_seed(0)
        generator = Generator(GeneratorConfig(image_size=28, width=8, num_classes=2, conditioning=conditioning))
        off, on = generator(z, torch.zeros(4, dtype=torch.long)), generator(z, torch.ones(4, dtype=torch.long))
        gaps[conditioning] = (off - on).abs().mean().item() / (off - off.roll(1, 0)).abs().mean().item()
    assert gaps["cbn"] < 0.2 < gaps["multiply"]
    cbn = [m for m in generator.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(cbn) == 2 and generator.embed is None and generator.net[0].in_channels == 100
    assert sum(p.numel() for m in cbn for p in m.parameters()) == 2 * 2 * (16 + 8)  # gain and shift per class


def test_dcgan_init_and_unknown_size():
    generator = Generator(GeneratorConfig(image_size=64, width=16))
    assert abs(generator.net[0].weight.std().item() - 0.02) < 0.002  # Radford et al.: N(0, 0.02)
    with pytest.raises(ValueError, match="image_size"):
        GeneratorConfig(image_size=32)


# ---------------------------------------------------------------- losses


def _linear_critic(u: torch.Tensor):
    return lambda x: (x * u).flatten(1).sum(1)  # D(x) = <x, u>: its gradient is u everywhere


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 64)])
def test_gradient_penalty_is_zero_for_unit_norm_gradient(channels, size):
    u = torch.randn(1, channels, size, size)
    u = u / u.norm()
    real, fake = torch.randn(4, channels, size, size), torch.randn(4, channels, size, size)
    assert gradient_penalty(_linear_critic(u), real, fake).item() < 1e-8
    assert gradient_penalty(_linear_critic(2 * u), real, fake).item() == pytest.approx(1.0, rel=1e-4)  # (2-1)^2


def test_gradient_penalty_trains_the_critic():
    u = torch.randn(1, 3, 8, 8, requires_grad=True)
    gp = gradient_penalty(lambda x: (x * u).flatten(1).sum(1), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8))
    gp.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0  # create_graph: the penalty reaches D's weights


@pytest.mark.parametrize("losses", [bce_losses, hinge_losses, wasserstein_losses])
def test_a_good_discriminator_has_lower_loss_and_the_generator_pays(losses):
    confident_real, confident_fake = torch.full((8,), 3.0), torch.full((8,), -3.0)
    confused = torch.zeros(8)
    assert losses.d_loss(confident_real, confident_fake) < losses.d_loss(confused, confused)
    assert losses.g_loss(confident_fake) > losses.g_loss(confused)  # G loses when D spots its images


def test_hinge_ignores_confident_margins():
    assert hinge_losses.d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0


def test_label_smoothing_moves_the_real_target():
    real, fake = torch.full((4,), 10.0), torch.full((4,), -10.0)
    plain = bce_losses.d_loss(real, fake)
    smoothed = bce_losses.d_loss(real, fake, label_smoothing=0.1)
    assert plain.item() < 1e-3 and smoothed.item() > 0.5  # a target of 0.9 punishes an over-confident D
    # the minimiser of the real term is now logit(0.9), not +infinity
    at_target = bce_losses.d_loss(torch.full((4,), float(np.log(9.0))), fake, label_smoothing=0.1)
    assert at_target < smoothed


def test_auxiliary_class_loss_is_cross_entropy():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert auxiliary_class_loss(logits, torch.tensor([0, 1])) < auxiliary_class_loss(logits, torch.tensor([1, 0]))


# ---------------------------------------------------------------- DiffAugment and method checks


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diffaugment_keeps_shape_and_passes_gradients(policy):
    x = (torch.rand(3, 3, 28, 28) * 2 - 1).requires_grad_(True)
    y = diff_augment(x, policy)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diffaugment_translation_moves_pixels_and_cutout_zeroes_a_square():
    x = torch.ones(16, 1, 8, 8)
    shifted = diff_augment(x, "translation")
    assert (shifted == 0).any() and set(shifted.unique().tolist()) <= {0.0, 1.0}  # zero-filled borders
    cut = diff_augment(x, "cutout")
    zeros = (cut == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 16).all()  # at most a 4x4 square per 8x8 image
    assert diff_augment(x, "") is x and set(AUGMENTS) == {"color", "translation", "cutout"}


def test_method_rejects_typos_and_bad_combinations():
    with pytest.raises(KeyError, match="n_critc"):
        from_dict(GANMethod, {"n_critc": 5})
    with pytest.raises(ValueError, match="loss"):
        GANMethod(loss="lsgan")
    with pytest.raises(ValueError, match="diffaugment"):
        GANMethod(diffaugment="color,flip")
    with pytest.raises(ValueError, match="label_smoothing"):
        GANMethod(loss="hinge", label_smoothing=0.1)


# ---------------------------------------------------------------- sampling


FIXED = {"amp": "fp32", "channels_last": False}


def test_sample_gan_is_seeded_per_image():
    # precision and layout pinned: "auto" times the choices per batch size, so batches of 1 and 3 could differ
    generator = Generator(GeneratorConfig(image_size=28, width=4, num_classes=10))
    labels = torch.tensor([3, 1, 4])
    a = sample_gan(generator, 3, seed=5, labels=labels, batch_size=3, **FIXED)
    assert a.shape == (3, 3, 28, 28) and a.device.type == "cpu" and a.abs().max() <= 1
    assert torch.equal(a, sample_gan(generator, 3, seed=5, labels=labels, batch_size=3, **FIXED))
    assert torch.allclose(a, sample_gan(generator, 3, seed=5, labels=labels, batch_size=1, **FIXED), atol=1e-6)
    assert not torch.allclose(a, sample_gan(generator, 3, seed=6, labels=labels, **FIXED))
    with pytest.raises(ValueError, match="labels"):
        sample_gan(generator, 3)


def test_sample_gan_truncation_keeps_image_i_fixed():
    generator = Generator(GeneratorConfig(image_size=28, width=4))
    a = sample_gan(generator, 4, seed=0, truncation=0.5, batch_size=4, amp="fp32", channels_last=False)
    b = sample_gan(generator, 4, seed=0, truncation=0.5, batch_size=2, amp="fp32", channels_last=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, sample_gan(generator, 4, seed=0))


# ---------------------------------------------------------------- training


def tiny_gan(preset: str, root: Path, tmp_path: Path, *extra: str):
    return apply_overrides(get_preset(preset), [
        f"--data.root={root}", f"--train.out_dir={tmp_path / 'runs'}", "--model.width=4", "--method.d_width=4",
        "--train.batch_size=4", "--train.steps=2", "--train.sample_every=2", "--train.progress=false",
        "--train.deterministic=true", *extra])


@pytest.mark.parametrize("preset", ["acgan_digits", "dcgan_faces", "sngan_faces", "wgan_gp_faces", "acgan_faces"])
def test_two_steps_write_a_loadable_generator(preset, request, tmp_path):
    root = request.getfixturevalue("tiny_digits" if preset.endswith("digits") else "tiny_faces")
    cfg = tiny_gan(preset, root, tmp_path)
    generator, meta = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    assert isinstance(generator, Generator)
    assert meta["run"]["method"] == to_dict(method_config(cfg))  # every option, the preset's among them
    assert cfg.method.items() <= meta["run"]["method"].items()
    k = generator.config.num_classes
    images = sample_gan(generator, 2, labels=torch.tensor([0, 1]) if k else None)
    size = cfg.model.image_size
    assert images.shape == (2, 3, size, size) and torch.isfinite(images).all()
    lines = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["d_loss"]) and np.isfinite(line["g_loss"]) for line in lines)
    assert ("gp" in lines[-1]) == (preset == "wgan_gp_faces")
    assert ("real_class_acc" in lines[-1]) == (k > 0)
    grid = Image.open(run_dir(cfg) / "samples" / "step_000002.png")
    assert grid.height == (k if k else 8) * (size + 2) + 2  # rows = classes (save_image pads by 2)


def test_ema_generator_is_shipped(tiny_faces, tmp_path):
    cfg = tiny_gan("sngan_faces", tiny_faces, tmp_path, "--train.ema_decay=0.5")
    generator, _ = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    state = torch.load(run_dir(cfg) / "state.pt", weights_only=True)["modules"]
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    shipped = generator.state_dict()
    assert all(torch.equal(shipped[k], ema[k]) for k in shipped)
    assert not all(torch.equal(shipped[k], state["generator"][k]) for k in shipped if shipped[k].is_floating_point())


def test_update_counts_and_ttur(tiny_faces, tmp_path):
    cfg = tiny_gan("dcgan_faces", tiny_faces, tmp_path, "--method.n_critic=3", "--method.g_steps=2",
                   "--method.d_lr=4e-4", "--train.lr=1e-4", "--train.weight_decay=0.01",
                   "--method.diffaugment=translation")
    train(cfg, out=tmp_path / "ckpt")
    state = torch.load(run_dir(cfg) / "state.pt", weights_only=True)["modules"]
    d_group, g_group = state["d_opt"]["param_groups"][0], state["g_opt"]["param_groups"][0]
    assert (d_group["lr"], d_group["weight_decay"]) == (4e-4, 0.01)  # TTUR
    assert (g_group["lr"], g_group["weight_decay"]) == (1e-4, 0.01)  # train.weight_decay: every optimized network
    assert state["d_opt"]["state"][0]["step"].item() == 2 * 3  # steps x n_critic D updates
    assert state["g_opt"]["state"][0]["step"].item() == 2 * 2  # steps x g_steps G updates


def test_resume_continues_at_step_three(tiny_digits, tmp_path):
    cfg = tiny_gan("acgan_digits", tiny_digits, tmp_path, "--train.log_every=1")
    train(cfg, out=tmp_path / "a")
    train(apply_overrides(cfg, ["--train.steps=4"]), out=tmp_path / "b")
    steps = [json.loads(line)["step"] for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_same_seed_same_generator(tiny_digits, tmp_path):
    a = train(tiny_gan("acgan_digits", tiny_digits, tmp_path, "--name=a"), out=tmp_path / "a")
    b = train(tiny_gan("acgan_digits", tiny_digits, tmp_path, "--name=b"), out=tmp_path / "b")
    assert checkpoint.weights_sha256(a) == checkpoint.weights_sha256(b)


def test_acgan_faces_needs_the_attribute(tiny_faces, tmp_path):
    cfg = tiny_gan("acgan_faces", tiny_faces, tmp_path, "--data.attribute=")
    with pytest.raises(ValueError, match="needs labels"):
        train(cfg)


def test_acgan_with_frozen_teacher_classifiers(tiny_digits, tmp_path):
    from dlcv.models.classifier import ClassifierConfig

    before = {}
    for name, kind in (("teacher", "convnet"), ("lenet", "lenet")):  # two teachers: their mean cross-entropy
        teacher = build_model("classifier", ClassifierConfig(kind=kind, in_channels=3, image_size=28,
                                                             num_classes=10, width=4))
        checkpoint.save(teacher, tmp_path / name, {})
        before[name] = {k: v.clone() for k, v in teacher.state_dict().items()}
    cfg = tiny_gan("acgan_digits", tiny_digits, tmp_path,
                   f"--method.teacher={tmp_path / 'teacher'},{tmp_path / 'lenet'}",
                   "--method.teacher_weight=0.5", "--train.log_every=1")
    train(cfg, out=tmp_path / "ckpt")
    lines = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= line["teacher_acc"] <= 1 for line in lines)
    for name, state in before.items():
        reloaded, _ = checkpoint.load(tmp_path / name)
        assert all(torch.equal(state[k], v) for k, v in reloaded.state_dict().items())  # frozen: file untouched
    wrong = build_model("classifier", ClassifierConfig(in_channels=3, image_size=28, num_classes=3, width=4))
    checkpoint.save(wrong, tmp_path / "wrong", {})
    with pytest.raises(ValueError, match="predicts 3 classes but the generator has 10"):
        train(tiny_gan("acgan_digits", tiny_digits, tmp_path, f"--method.teacher={tmp_path / 'wrong'}",
                       "--name=wrong"), out=tmp_path / "w")


def test_cbn_acgan_starts_from_an_unconditional_generator(tmp_path):
    source = Generator(GeneratorConfig(image_size=28, width=4))
    with torch.no_grad():  # batch-norm gains, shifts and statistics that differ from the init, so the copy shows
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-1, 1), module.running_var.uniform_(0.5, 2)
    checkpoint.save(source, tmp_path / "source", {})
    target = Generator(GeneratorConfig(image_size=28, width=4, num_classes=3, conditioning="cbn"))
    load_generator_init(target, str(tmp_path / "source"))
    source.eval(), target.eval()
    z = torch.randn(5, 100)
    for y in range(3):  # G(z, y) = G_init(z) for every class at the start
        torch.testing.assert_close(target(z, torch.full((5,), y)), source(z))
    for bad, match in ((GeneratorConfig(image_size=28, width=8, num_classes=3, conditioning="cbn"), "width"),
                       (GeneratorConfig(image_size=28, width=4, num_classes=3, conditioning="multiply"),
                        "conditioning=cbn")):
        with pytest.raises(ValueError, match=match):
            load_generator_init(Generator(bad), str(tmp_path / "source"))


def test_gan_init_generator_and_d_warmup(tiny_faces, tmp_path):
    source = train(tiny_gan("dcgan_faces", tiny_faces, tmp_path, "--name=source"), out=tmp_path / "source")
    cfg = tiny_gan("acgan_faces_from_dcgan", tiny_faces, tmp_path, f"--method.init_generator={source}",
                   "--method.d_warmup=2", "--train.steps=3", "--train.log_every=1")
    generator = build_model(cfg.architecture, cfg.model)
    load_generator_init(generator, str(source))
    train(apply_overrides(cfg, ["--train.steps=2"]), out=tmp_path / "warm")
    warm, _ = checkpoint.load(tmp_path / "warm")  # two D-only steps: G's EMA (shipped) is still the copy of the source
    assert all(torch.equal(v, warm.state_dict()[k]) for k, v in generator.state_dict().items()
               if k.endswith("weight"))
    shutil.rmtree(source)  # a resumed run does not read init_generator again
    train(cfg, out=tmp_path / "ckpt")  # resumed for a third step, which updates G
    lines = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert ["g_loss" in line for line in lines] == [False, False, True]
    trained, _ = checkpoint.load(tmp_path / "ckpt")
    assert not torch.equal(trained.net[0].weight, generator.net[0].weight)
    with pytest.raises(ValueError, match="d_warmup"):
        GANMethod(d_warmup=-1)


def test_a_gan_branch_may_change_the_losses_not_the_networks(tiny_faces, tmp_path):
    cfg = tiny_gan("acgan_faces_from_dcgan", tiny_faces, tmp_path, "--method.init_generator=", "--method.d_warmup=0")
    train(cfg, out=tmp_path / "source")
    branch = apply_overrides(cfg, ["--name=branch", f"--train.branch_from={run_dir(cfg)}", "--train.steps=3",
                                   "--method.aux_weight=3.0"])
    generator, meta = checkpoint.load(train(branch, out=tmp_path / "branch"))
    assert meta["run"]["method"]["aux_weight"] == 3.0
    assert torch.isfinite(sample_gan(generator, 2, labels=torch.tensor([0, 1]))).all()
    other_d = apply_overrides(branch, ["--name=other", "--method.d_norm=none"])  # D without its batch norms
    with pytest.raises(RuntimeError, match="'discriminator' does not fit .*not the networks"):
        train(other_d, out=tmp_path / "other")


def test_within_class_spread_sees_near_copies():
    from dlcv.metrics import within_class_spread

    g = torch.Generator().manual_seed(0)
    varied = torch.randint(0, 256, (6, 3, 4, 4), generator=g, dtype=torch.uint8)
    copies = varied[:1].repeat(6, 1, 1, 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert within_class_spread(copies, labels) == {0: 0.0, 1: 0.0}
    assert all(d > 0.5 for d in within_class_spread(varied, labels).values())
    assert within_class_spread(varied[:4], torch.tensor([0, 0, 0, 1])).keys() == {0}  # a lone image has no neighbour


def test_train_speed_counts_the_reference_step_arithmetic_by_hand():
    """benchmarks/train_speed.py's GFLOP per reference step, against the DCGAN layers' multiply-adds by hand."""
    from conftest import load_script

    speed = load_script("benchmarks/train_speed.py")
    # multiply-adds per image of one forward pass: G's transposed convs 100->512 (1->4), 512->256, 256->128,
    # 128->64, 64->3 (4x4 kernels; input pixels x Cin x Cout x 16); D mirrors them, ending in a 4x4 conv to 1
    g_macs = 100 * 512 * 16 + 16 * 512 * 256 * 16 + 64 * 256 * 128 * 16 + 256 * 128 * 64 * 16 + 1024 * 64 * 3 * 16
    d_macs = 1024 * 3 * 64 * 16 + 256 * 64 * 128 * 16 + 64 * 128 * 256 * 16 + 16 * 256 * 512 * 16 + 512 * 16
    # G: forward + backward (input and weight gradients) = 3 passes; D: 3 forwards (real, fake, fake for G), each
    # with a backward of 2 passes = 9 passes
    per_image = 2 * (3 * g_macs + 9 * d_macs) / 1e9
    assert speed.reference_gflop(batch_size=2) == pytest.approx(2 * per_image, rel=0.01)


def test_every_method_loss_choice_has_its_losses():
    # method.loss's choices are its Literal type (config.check_literals); GAN_LOSSES must implement each of them
    choices = typing.get_args(typing.get_type_hints(GANMethod)["loss"])
    assert set(choices) == set(GAN_LOSSES)
    with pytest.raises(ValueError, match=r"^method\.loss='lsgan' is not allowed; choose from \['dcgan'"):
        GANMethod(loss="lsgan")
