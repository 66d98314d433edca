"""dlcv.validators: each label-free score on hand-computed cases, DEV's control variate and its indistinguishable-domain
limit, one-line errors for inputs a score cannot read, and the scores of a UDANet from images."""

import math

import pytest
import torch
import torch.nn.functional as F

from dlcv import validators as v
from dlcv.data.loaders import to_model_range
from dlcv.models.uda import SOURCE, UDANet, UDANetConfig


def logits_of(probs) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (log 0 = -inf is a valid logit)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def binary_entropy(d: float) -> float:
    """H(softmax([d, 0])), by hand."""
    q = 1 / (1 + math.exp(-d))
    return -q * math.log(q) - (1 - q) * math.log(1 - q)


DIVERSE = torch.eye(4).log()  # confident, one class each
COLLAPSED = torch.zeros(4, 4).index_fill_(1, torch.tensor([1, 2, 3]), -math.inf)  # confident, all class 0
UNIFORM = torch.zeros(4, 4)


def test_confident_diverse_predictions_score_best():
    assert v.entropy_score(DIVERSE) == v.entropy_score(COLLAPSED) == 0.0
    assert v.entropy_score(UNIFORM) == pytest.approx(-math.log(4))
    # IM also needs the classes used evenly: log K, against 0 for collapsed or uniform predictions
    assert v.im_score(DIVERSE) == pytest.approx(math.log(4))
    assert v.im_score(COLLAPSED) == pytest.approx(0.0) and v.im_score(UNIFORM) == pytest.approx(0.0)
    # BNM: ||I||_* / 4 = 1; rank one: ||p||_F / N = sqrt(N) / N and sqrt(N / K) / N
    assert v.bnm_score(DIVERSE) == pytest.approx(1.0)
    assert v.bnm_score(COLLAPSED) == pytest.approx(0.5) and v.bnm_score(UNIFORM) == pytest.approx(0.25)


def test_entropy_im_and_bnm_on_a_two_sample_hand_case():
    logits = logits_of([[0.5, 0.5], [1.0, 0.0]])
    assert v.entropy_score(logits) == pytest.approx(-math.log(2) / 2)
    mean_entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # of the mean prediction (0.75, 0.25)
    assert v.im_score(logits) == pytest.approx(mean_entropy - math.log(2) / 2)
    # a 2x2 matrix's nuclear norm is sqrt(||A||_F^2 + 2 |det A|) = sqrt(1.5 + 2 * 0.5)
    assert v.bnm_score(logits) == pytest.approx(math.sqrt(2.5) / 2)


def test_snd_on_a_three_sample_hand_case():
    # unit predictions (1, 0), (0.6, 0.8), (0, 1): cosines 0.6 (1-2), 0 (1-3), 0.8 (2-3); over tau = 0.05 each row
    # keeps its two neighbours, whose softmax differs by 12 (row 1: 12 vs 0), 4 (row 2: 12 vs 16), 16 (row 3: 0 vs 16)
    logits = logits_of([[1.0, 0.0], [3 / 7, 4 / 7], [0.0, 1.0]])
    expected = (binary_entropy(12) + binary_entropy(4) + binary_entropy(16)) / 3
    assert v.snd_score(logits) == pytest.approx(expected, rel=1e-9)
    assert v.snd_score(logits, chunk=1) == pytest.approx(expected, rel=1e-9)  # row chunks change nothing
    assert v.snd_score(logits, tau=1e6) == pytest.approx(math.log(2))  # a huge temperature: uniform over neighbours
    assert v.snd_score(logits_of([[0.9, 0.1], [0.2, 0.8]])) == 0.0  # one neighbour each: nothing to spread over


def test_source_accuracy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    assert v.source_accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_dev_risk_control_variate_by_hand():
    # w = (1, 2, 3), l = (2, 1, 1): w l = (2, 2, 3), mean 7/3; Cov(w l, w) = 1/2, Var(w) = 1, eta = -1/2, mean(w) = 2
    assert v.dev_risk(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 1.0, 1.0])) == pytest.approx(7 / 3 - 1 / 2)
    weights = torch.rand(50, generator=torch.Generator().manual_seed(1)) * 3
    assert v.dev_risk(weights, torch.full((50,), 0.7)) == pytest.approx(0.7)  # exact for a constant loss
    losses = torch.rand(50)
    assert v.dev_risk(torch.full((50,), 2.0), losses) == pytest.approx(2 * losses.double().mean().item())


def test_dev_is_the_plain_source_risk_when_the_domains_cannot_be_told_apart():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(40, 6, generator=g)
    feat_val, logits = torch.randn(15, 6, generator=g), torch.randn(15, 4, generator=g)
    labels = torch.randint(4, (15,), generator=g)
    # the same features as source train and as target: the best domain classifier says 1/2 everywhere, so w = 1
    weights = v.dev_weights(feat, feat_val, feat)
    assert weights.shape == (15,) and torch.allclose(weights, torch.ones(15, dtype=torch.float64), atol=1e-6)
    plain = F.cross_entropy(logits.double(), labels).item()
    assert v.dev_score(feat, feat_val, logits, labels, feat) == pytest.approx(-plain, rel=1e-6)


def test_dev_weights_favour_target_like_source_samples():
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(100, 2, generator=g), torch.randn(50, 2, generator=g) + torch.tensor([3.0, 0.0])
    weights = v.dev_weights(src, torch.tensor([[-1.0, 0.0], [1.5, 0.0], [3.0, 0.0]]), tgt)
    assert weights[0] < 0.1 < weights[1] < weights[2]  # p_t / p_s grows towards the target


@pytest.mark.parametrize("score", [v.entropy_score, v.im_score, v.snd_score, v.bnm_score])
def test_a_single_class_or_a_bad_shape_is_a_one_line_error(score):
    for bad, match in ((torch.zeros(5, 1), "K >= 2 classes"), (torch.zeros(5), r"must be \(N, K\)")):
        with pytest.raises(ValueError, match=match) as err:
            score(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("score", [v.im_score, v.snd_score, v.bnm_score])
def test_scores_that_compare_samples_need_two(score):
    with pytest.raises(ValueError, match="needs at least 2, got 1") as err:
        score(torch.zeros(1, 3))
    assert "\n" not in str(err.value)
    assert v.entropy_score(torch.zeros(1, 3)) == pytest.approx(-math.log(3))  # one sample has an entropy


def test_dev_and_accuracy_refuse_mismatched_inputs():
    feat = torch.randn(10, 4)
    with pytest.raises(ValueError, match="labels must be \\(3,\\)"):
        v.source_accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="N >= 2"):
        v.dev_risk(torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="one width D"):
        v.dev_weights(feat, torch.randn(3, 5), feat)
    with pytest.raises(ValueError, match="needs at least 2, got 1"):
        v.dev_score(feat, feat[:1], torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), feat)


def test_model_outputs_and_validate_on_a_tiny_udanet():
    model = UDANet(UDANetConfig(width=4, input_norm="instance"))
    model.train()
    images = torch.randint(0, 256, (7, 3, 28, 28), dtype=torch.uint8)
    out = v.model_outputs(model, images, SOURCE, batch_size=3)
    assert out.logits.shape == (7, 10) and out.features.shape == (7, model.feature_dim)
    assert model.training  # restored
    model.eval()
    x = to_model_range(images)
    assert torch.allclose(out.logits, model(x, domain=SOURCE), atol=1e-5)  # batches and uint8 change nothing
    assert torch.allclose(v.model_outputs(model, x, SOURCE).features, out.features, atol=1e-5)
    grey = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)  # a grey target is replicated by the model
    scores = v.validate(model, images, images[:4], torch.tensor([0, 1, 2, 3]), grey, batch_size=4)
    assert set(scores) == {"source_val_acc", "entropy", "im", "snd", "bnm", "dev"}
    assert all(math.isfinite(value) for value in scores.values())


def test_picks_each_rules_best_step_ties_to_the_later_and_the_oracle():
    rows = [{"step": 10, "labelled_val_acc": 0.9, "validator/target_snd": 1.0, "oracle/target_test_acc": 0.5},
            {"step": 15, "loss": 0.3},  # a log point without an evaluation
            {"step": 20, "labelled_val_acc": 0.8, "validator/target_snd": 2.0, "oracle/target_test_acc": 0.7},
            {"step": 30, "labelled_val_acc": 0.9, "validator/target_snd": 0.5, "oracle/target_test_acc": 0.6}]
    chosen = v.picks(rows)
    assert chosen["source val"] == (30, 0.6)  # a tie goes to the later evaluation
    assert chosen["SND"] == (20, 0.7) and chosen["last"] == (30, 0.6) and chosen["oracle"] == (20, 0.7)
    assert "DEV" not in chosen  # not logged: no pick
    with pytest.raises(ValueError, match="oracle/target_test_acc"):
        v.picks([{"step": 1, "loss": 0.1}])
