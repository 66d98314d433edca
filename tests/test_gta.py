"""Generate to Adapt: shapes of G and D, which network each loss trains (D only its own loss, G only its own, F the
classifier's loss plus the two terms from D), the ablation switches, and a 2-step run of the uda_gta preset that
writes the source-like grid, resumes and ships a loadable classifier."""

import json
import math

import pytest
import torch

from dlcv import catalog, checkpoint
from dlcv.config import apply_overrides
from dlcv.models.uda import GTADiscriminator, GTAGenerator, UDANet, UDANetConfig
from dlcv.presets import get_preset
from dlcv.training import train
from dlcv.training.uda import UDA_METHODS


def gta(**options):
    cfg = get_preset("uda_gta")
    torch.manual_seed(0)
    model = UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance"))
    return UDA_METHODS["gta"](model, {**cfg.method, "gan_width": 4, "z_dim": 8, **options}, cfg.train)


def batch(n=6):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2 * n, 3, 28, 28, generator=g) * 2 - 1
    return x[:n], torch.arange(n) % 10, x[n:]


def test_generator_and_discriminator_shapes():
    gen, disc = GTAGenerator(feature_dim=16, num_classes=10, z_dim=8, width=4), GTADiscriminator(10, width=4)
    code = torch.tensor([0, 3, 10])  # two source classes and the "target" code K
    images = gen(torch.randn(3, 16), torch.randn(3, 8), code)
    assert images.shape == (3, 3, 28, 28) and images.abs().max() <= 1
    data, classes = disc(images)
    assert data.shape == (3,) and classes.shape == (3, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        GTAGenerator(16, 10, image_size=30)


def changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_each_network_is_trained_by_its_own_loss():
    method = gta()
    gen = method.extra["generator"]
    assert {id(p) for group in method.opt.param_groups for p in group["params"]} == \
        {id(p) for p in method.model.parameters()}  # F and C only: G and D have optimizers of their own
    # G's step must follow L_G alone: the same step with F's terms switched off gives G the same new weights
    torch.manual_seed(5)
    out = method.update(*batch())
    for key in ("loss", "cls_loss", "d_loss", "g_loss", "f_cls_loss", "f_adv_loss"):
        assert math.isfinite(out[key].item())
    assert out["loss"].item() == pytest.approx(
        (out["cls_loss"] + 0.1 * out["f_cls_loss"] + 0.03 * out["f_adv_loss"]).item(), rel=1e-5)
    g_after = [p.detach().clone() for p in gen.parameters()]
    plain = gta(cls_weight=0.0, adv_weight=0.0)
    torch.manual_seed(5)
    plain.update(*batch())
    for a, b in zip(g_after, plain.extra["generator"].parameters()):
        torch.testing.assert_close(a, b)
    # ... while F does get gradient through G and D: its weights differ from the run without F's terms
    assert any(not torch.allclose(a, b) for a, b in zip(method.model.parameters(), plain.model.parameters()))


def test_every_network_moves_and_unknown_options_are_refused():
    method = gta()
    nets = {"F": method.model, "G": method.extra["generator"], "D": method.extra["discriminator"]}
    before = {k: [p.detach().clone() for p in net.parameters()] for k, net in nets.items()}
    method.update(*batch())
    assert all(changed(before[k], net) for k, net in nets.items())
    with pytest.raises(KeyError, match="unknown method option"):
        gta(alpha=0.3)


def test_source_like_images_are_deterministic_and_leave_train_mode_alone():
    method = gta()
    x = batch()[2]
    a, b = method.source_like(x), method.source_like(x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert method.extra["generator"].training and method.model.training


def test_uda_gta_preset_trains_resumes_and_writes_the_source_like_grid(tiny_digits, tmp_path):
    overrides = [
        f"--data.root={tiny_digits}", "--data.domain=mnistm", "--data.target_domain=usps",
        f"--train.out_dir={tmp_path / 'runs'}", "--train.batch_size=4", "--model.width=4",
        "--train.eval_every=1", "--train.log_every=1", "--train.save_every=1", "--train.sample_every=2",
        "--train.progress=false", "--train.device=cpu", "--train.amp=false", "--train.deterministic=true",
        "--method.gan_width=4", "--method.z_dim=8"]
    train(apply_overrides(get_preset("uda_gta"), [*overrides, "--train.steps=1"]), out=tmp_path / "first")
    out = train(apply_overrides(get_preset("uda_gta"), [*overrides, "--train.steps=2"]), out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    assert meta["run"]["method"]["name"] == "gta" and meta["metrics"]["steps"] == 2
    assert model(torch.rand(3, 3, 28, 28) * 2 - 1).shape == (3, 10)  # the shipped network is the classifier alone
    run = tmp_path / "runs" / "uda_gta"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all(math.isfinite(line["g_loss"]) for line in lines)
    assert (run / "samples" / "step_000002.png").is_file()


def test_gta_fills_the_improved_slot_but_is_never_shipped():
    assert catalog.METHOD_SLOT["gta"] == "improved"
    pair = catalog.uda_pairs(["uda_gta_mnistm_to_usps", "uda_dann_mnistm_to_usps"])[("mnistm", "usps")]
    assert pair.slot("improved") == ["gta"] and pair.shipped == "uda_dann_mnistm_to_usps"


def test_gta_augments_both_domains_only_when_asked(monkeypatch):
    from dlcv.training import uda

    seen = []
    monkeypatch.setattr(uda, "augment", lambda x, colour: seen.append((x.shape[0], colour)) or x.flip(0))
    gta().update(*batch())
    assert seen == []  # the preset trains on the images as they are
    gta(augment=True).update(*batch())
    assert seen == [(6, True), (6, True)]  # source and target, geometric + colour
    seen.clear()
    gta(augment=True, colour_augment=False).update(*batch())
    assert seen == [(6, False), (6, False)]


def test_gta_ema_ships_the_weight_average_and_resumes_it():
    """--method.ema_decay > 0: F and the classifier are evaluated (and shipped) as their weight average, which the
    resume state carries; 0 (the preset) keeps the trained weights."""
    plain = gta()
    assert plain.eval_model is plain.model and plain.average is None
    method = gta(ema_decay=0.5)
    for _ in range(2):  # the first update copies the network, later ones average
        method.update(*batch())
    assert method.eval_model is method.average.module and not method.eval_model.training
    trained, average = method.model.state_dict(), method.eval_model.state_dict()
    assert not torch.equal(trained["head.weight"], average["head.weight"])
    assert "average" in method.state_modules() and method.average.updates == 2
