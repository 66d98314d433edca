"""Associative domain adaptation: the walker and visit losses at their hand-derived minima, above them otherwise,
gradients into both domains' embeddings, the weight schedule, and a 2-step run of the uda_assoc preset."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dlcv import catalog, checkpoint
from dlcv.config import apply_overrides
from dlcv.losses import association_losses
from dlcv.models.uda import UDANet, UDANetConfig
from dlcv.presets import get_preset
from dlcv.training import train
from dlcv.training.uda import UDA_METHODS


def clustered(labels: list[int], scale: float = 10.0) -> torch.Tensor:
    """Embeddings scale * onehot(label): same class similarity scale^2, other classes 0."""
    return scale * torch.eye(2)[torch.tensor(labels)]


@pytest.mark.parametrize("src, tgt", [([0, 0, 0, 1, 1, 1], [0, 0, 1, 1]),  # 3 + 3 source, 2 + 2 target
                                      ([0, 0, 1, 1, 1, 1], [0, 1, 1])])  # 2 + 4 source, 1 + 2 target
def test_perfect_association_reaches_the_minima(src, tgt):
    # same-class similarities e^100 times the others: a step source -> target spreads evenly over the target samples
    # of its class (1 / m_c each), the step back evenly over the n_c source samples of that class, so the round trip is
    # P^{sts}_ij = sum_k (1 / m_c)(1 / n_c) = 1 / n_c = T_ij, and L_walker = H(T) = mean_i log n_{class(i)}.
    # Target sample j of class c is visited with mean_i P^{st}_ij = (n_c / N_s)(1 / m_c), 1 / N_t when n_c / m_c is
    # the same for every class (3/2 in the first case, 2 in the second), so L_visit = H(V) = log N_t.
    walker, visit = association_losses(clustered(src), clustered(tgt), torch.tensor(src))
    counts = [src.count(c) for c in src]
    assert walker.item() == pytest.approx(sum(math.log(n) for n in counts) / len(src), abs=1e-5)
    assert visit.item() == pytest.approx(math.log(len(tgt)), abs=1e-5)


def test_losses_are_above_their_minima_otherwise():
    # H(T, P) >= H(T) (Gibbs' inequality), so any other embeddings cost more
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    walker, visit = association_losses(torch.randn(6, 5, generator=g), torch.randn(4, 5, generator=g), labels)
    assert walker.item() > math.log(3) and visit.item() > math.log(4)
    # every target sample looks like class 0: class-1 walks cannot come back to class 1
    walker_bad, _ = association_losses(clustered([0, 0, 0, 1, 1, 1]), clustered([0, 0, 0, 0]), labels)
    assert walker_bad.item() > math.log(3) + 0.5


def test_gradients_reach_both_embeddings():
    emb_src, emb_tgt = torch.randn(8, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    walker, visit = association_losses(emb_src, emb_tgt, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    (walker + 0.6 * visit).backward()
    for grad in (emb_src.grad, emb_tgt.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    emb_tgt.grad = None
    _, visit = association_losses(emb_src.detach(), emb_tgt, torch.zeros(8, dtype=torch.long))
    visit.backward()  # the visit term alone moves the target embeddings
    assert emb_tgt.grad.abs().sum() > 0


def test_cosine_similarities_ignore_the_embeddings_scale_and_stay_off_one_hot():
    g = torch.Generator().manual_seed(1)
    src, tgt, labels = torch.rand(8, 16, generator=g), torch.rand(6, 16, generator=g), torch.tensor([0, 1] * 4)
    raw = association_losses(src * 100, tgt * 100, labels)
    cos = association_losses(src * 100, tgt * 100, labels, temperature=0.1)
    unit = association_losses(src, tgt, labels, temperature=0.1)
    assert [v.item() for v in unit] == pytest.approx([v.item() for v in cos], rel=1e-5)
    assert raw[0].item() > 5.0 > cos[0].item()  # dot products of norm-40 vectors: saturated, -log 1e-8 territory
    manual = F.normalize(src, dim=1) @ F.normalize(tgt, dim=1).T / 0.1
    p_sts = F.softmax(manual, 1) @ F.softmax(manual.T, 1)
    same = (labels[:, None] == labels[None]).float()
    walker = -((same / same.sum(1, keepdim=True)) * torch.log(p_sts + 1e-8)).sum(1).mean()
    assert cos[0].item() == pytest.approx(walker.item(), rel=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N_s, D\) and \(N_t, D\)"):
        association_losses(torch.randn(4, 3), torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels_src must be \(4,\)"):
        association_losses(torch.randn(4, 3), torch.randn(2, 3), torch.zeros(3, dtype=torch.long))


def test_assoc_weight_schedule_and_loss():
    cfg = get_preset("uda_assoc")
    method = UDA_METHODS["assoc"](UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance")),
                                  cfg.method, cfg.train)
    assert (method.hp.assoc_weight, method.hp.visit_weight, method.hp.assoc_delay) == (1.0, 0.6, 500)
    ramp = []
    for step in (0, 500, 750, 1000, 4000):
        method.step = step
        ramp.append(method.assoc_ramp())
    assert ramp == [0.0, 0.0, 0.5, 1.0, 1.0]
    method = UDA_METHODS["assoc"](UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance")),
                                  {"assoc_delay": 0, "visit_weight": 0.5}, cfg.train)
    x = torch.rand(6, 3, 28, 28) * 2 - 1
    out = method.update(x, torch.tensor([0, 1, 2, 0, 1, 2]), x.flip(0))
    assert out["loss"].item() == pytest.approx(
        (out["cls_loss"] + out["walker_loss"] + 0.5 * out["visit_loss"]).item(), rel=1e-5)
    with pytest.raises(KeyError, match="unknown method option"):
        UDA_METHODS["assoc"](method.model, {"visit": 0.5}, cfg.train)


def test_assoc_augments_both_domains_unless_switched_off(monkeypatch):
    import dlcv.training.uda as uda

    seen = []
    monkeypatch.setattr(uda, "augment", lambda x, colour: seen.append((x.shape[0], colour)) or x.flip(0))
    cfg = get_preset("uda_assoc")
    net = UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance"))
    x = torch.rand(6, 3, 28, 28) * 2 - 1
    UDA_METHODS["assoc"](net, cfg.method, cfg.train).update(x[:4], torch.tensor([0, 1, 2, 0]), x[4:])
    assert seen == [(4, True), (2, True)]  # the preset: geometric + colour augmentation of both domains
    seen.clear()
    UDA_METHODS["assoc"](net, {"colour_augment": False}, cfg.train).update(x[:4], torch.tensor([0, 1, 2, 0]), x[4:])
    assert seen == [(4, False), (2, False)]
    seen.clear()
    UDA_METHODS["assoc"](net, {"augment": False}, cfg.train).update(x[:4], torch.tensor([0, 1, 2, 0]), x[4:])
    assert seen == []


def test_uda_assoc_preset_trains_two_steps_and_writes_a_loadable_checkpoint(tiny_digits, tmp_path):
    cfg = apply_overrides(get_preset("uda_assoc"), [
        f"--data.root={tiny_digits}", "--data.domain=mnistm", "--data.target_domain=usps",
        f"--train.out_dir={tmp_path / 'runs'}", "--train.steps=2", "--train.batch_size=4", "--model.width=4",
        "--train.eval_every=1", "--train.log_every=1", "--train.progress=false", "--train.device=cpu",
        "--train.amp=false", "--train.deterministic=true", "--method.assoc_delay=0"])
    out = train(cfg, out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    assert meta["run"]["method"]["name"] == "assoc" and meta["metrics"]["method"] == "assoc"
    assert meta["metrics"]["steps"] == 2 and 0.0 <= meta["metrics"]["target_test_acc"] <= 1.0
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10) and torch.isfinite(model(x)).all()
    lines = [json.loads(line) for line in (tmp_path / "runs" / "uda_assoc" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(math.isfinite(line["walker_loss"]) and math.isfinite(line["visit_loss"]) for line in lines)


def test_assoc_fills_the_improved_slot_but_is_never_shipped():
    assert catalog.METHOD_SLOT["assoc"] == "improved" and "assoc" in catalog.METHODS
    pair = catalog.uda_pairs(["uda_assoc_mnistm_to_usps", "uda_dann_mnistm_to_usps"])[("mnistm", "usps")]
    assert pair.slot("improved") == ["assoc"] and pair.shipped == "uda_dann_mnistm_to_usps"
