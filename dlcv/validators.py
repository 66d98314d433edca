"""Label-free validators: scores of a UDA model that read no target label (higher = better), each a function of
tensors (logits, features, labels) so it can be checked by hand, and `validate`, which runs a UDANet over images.

Each score is computed in float64 on the CPU and returned as a float. p = softmax(logits) is the (N, K) matrix of
predicted class probabilities on N target images, H(q) = -sum_k q_k log q_k an entropy."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dlcv.data.loaders import to_model_range
from dlcv.models.uda import SOURCE, TARGET, UDANet


def _check_logits(name: str, logits: torch.Tensor, min_samples: int = 1) -> torch.Tensor:
    """logits (N, K) -> float64 on the CPU, or a one-line ValueError saying what is wrong."""
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (N, K), got shape {tuple(logits.shape)}")
    n, k = logits.shape
    if k < 2:
        raise ValueError(f"{name}: logits have {k} class; a score of predictions needs K >= 2 classes")
    if n < min_samples:
        what = "compares target samples with each other" if min_samples > 1 else "scores target samples"
        raise ValueError(f"{name} {what}: it needs at least {min_samples}, got {n}")
    return logits.detach().to("cpu", torch.float64)


def _probs(name: str, logits: torch.Tensor, min_samples: int = 1) -> torch.Tensor:
    """p = softmax(logits) (N, K) in float64."""
    return F.softmax(_check_logits(name, logits, min_samples), dim=1)


def entropy_score(logits_tgt: torch.Tensor) -> float:
    """-E_x[H(p(.|x))]: the negative mean prediction entropy (the entropy of Grandvalet & Bengio 2004, used to select
    UDA models by Morerio et al. 2018). 0 for one-hot predictions, -log K for uniform ones."""
    p = _probs("entropy", logits_tgt)
    return -torch.special.entr(p).sum(1).mean().item()


def im_score(logits_tgt: torch.Tensor) -> float:
    """H(E_x[p(.|x)]) - E_x[H(p(.|x))]: information maximisation, the mutual information between an image and its
    predicted class (Shi & Sha 2012; the L_ent + L_div of SHOT, Liang et al. 2020, eq. (2), negated). log K for
    confident predictions spread evenly over the K classes, 0 for uniform or for all-one-class ones."""
    p = _probs("im", logits_tgt, min_samples=2)
    return (torch.special.entr(p.mean(0)).sum() - torch.special.entr(p).sum(1).mean()).item()


def snd_score(logits_tgt: torch.Tensor, tau: float = 0.05, chunk: int = 1024) -> float:
    """Soft neighbourhood density (Saito et al. 2021, "Tune it the right way"): with f_i = p_i / ||p_i||_2,
    M_ij = f_i . f_j, P_ij = exp(M_ij / tau) / sum_{j' != i} exp(M_ij' / tau) over j != i (the diagonal is removed),
    SND = (1/N) sum_i H(P_i). High when each prediction has many close neighbours (dense clusters). Rows are done
    `chunk` at a time, so N x N never has to fit at once. The authors' code masks M_ii with -1 instead of removing it,
    which changes P by less than exp(-1/tau) = 2e-9 at tau = 0.05."""
    f = F.normalize(_probs("snd", logits_tgt, min_samples=2), dim=1)  # (N, K), unit rows
    n, total = f.shape[0], 0.0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        sims = f[rows] @ f.T / tau  # (rows, N)
        sims[torch.arange(len(rows)), rows] = -torch.inf  # no walk from a sample to itself
        total += torch.special.entr(F.softmax(sims, dim=1)).sum().item()
    return total / n


def bnm_score(logits_tgt: torch.Tensor) -> float:
    """||p||_* / N: the batch nuclear norm (sum of singular values) of the (N, K) prediction matrix, BNM's objective
    (Cui et al. 2020, which minimises L_bnm = -||A||_* / B). Large when predictions are both confident
    (discriminability) and spread over classes (diversity): 1 for N = K one-hot predictions of distinct classes."""
    p = _probs("bnm", logits_tgt, min_samples=2)
    return (torch.linalg.svdvals(p).sum() / p.shape[0]).item()


def source_accuracy(logits_src_val: torch.Tensor, labels_src_val: torch.Tensor) -> float:
    """Accuracy on labelled source val: the usual baseline, blind to the shift (it reads source labels only)."""
    logits = _check_logits("source accuracy", logits_src_val)
    _check_labels("source accuracy", logits, labels_src_val)
    return (logits.argmax(1) == labels_src_val.cpu()).double().mean().item()


def _check_labels(name: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"{name}: labels must be ({logits.shape[0]},) to match the logits, got {tuple(labels.shape)}")


# ---------------------------------------------------------------- DEV: importance-weighted source validation


def dev_weights(feat_src_train: torch.Tensor, feat_src_val: torch.Tensor, feat_tgt: torch.Tensor,
                C: float = 1.0) -> torch.Tensor:
    """w(x) = (N_s / N_t) d(x) / (1 - d(x)) for each source val sample (N_v,): the density ratio p_t(x) / p_s(x)
    estimated by a domain classifier d(x) = P(target | features), here a logistic regression (inverse L2 strength C)
    on standardised source-train vs target features (You et al. 2019, whose code fits an MLP). The prior
    ratio N_s / N_t makes E_source[w] = 1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name, feat in (("source-train", feat_src_train), ("source-val", feat_src_val), ("target", feat_tgt)):
        if feat.dim() != 2 or feat.shape[0] < 1:
            raise ValueError(f"dev: {name} features must be (N, D) with N >= 1, got shape {tuple(feat.shape)}")
    if not feat_src_train.shape[1] == feat_src_val.shape[1] == feat_tgt.shape[1]:
        raise ValueError(f"dev: source-train, source-val and target features must have one width D, got "
                         f"{feat_src_train.shape[1]}, {feat_src_val.shape[1]}, {feat_tgt.shape[1]}")
    x = torch.cat([feat_src_train, feat_tgt]).detach().to("cpu", torch.float64).numpy()
    domain = [0] * len(feat_src_train) + [1] * len(feat_tgt)  # source 0, target 1, as in losses.domain_loss
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(x, domain)
    log_odds = classifier.decision_function(feat_src_val.detach().to("cpu", torch.float64).numpy())  # log d/(1-d)
    return torch.from_numpy(log_odds).exp() * (len(feat_src_train) / len(feat_tgt))


def dev_risk(weights: torch.Tensor, losses: torch.Tensor) -> float:
    """R_DEV = mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w) (You et al. 2019, Algorithm 1): the
    importance-weighted source val loss with w as a control variate (E[w] = 1, so eta (mean(w) - 1) removes the part
    of mean(w l) that comes from the weights' own sampling error; eta is the variance-minimising coefficient). Exact
    for a constant loss whatever the weights; with (numerically) constant weights there is nothing to correct."""
    w, loss = (t.detach().to("cpu", torch.float64).flatten() for t in (weights, losses))
    if w.shape != loss.shape or len(w) < 2:
        raise ValueError(f"dev: weights and losses must be two (N,) tensors with N >= 2, got {tuple(weights.shape)} "
                         f"and {tuple(losses.shape)}")
    weighted = w * loss
    var_w = w.var()  # unbiased, as np.var(ddof=1) in the authors' code
    eta = 0.0
    if var_w > 1e-12 * w.mean() ** 2:
        cov = ((weighted - weighted.mean()) * (w - w.mean())).sum() / (len(w) - 1)
        eta = -cov / var_w
    return (weighted.mean() + eta * w.mean() - eta).item()


def dev_score(feat_src_train: torch.Tensor, feat_src_val: torch.Tensor, logits_src_val: torch.Tensor,
              labels_src_val: torch.Tensor, feat_tgt: torch.Tensor, C: float = 1.0) -> float:
    """Deep embedded validation (You et al. 2019): -R_DEV of the per-sample cross-entropy on labelled source val,
    weighted towards the target by dev_weights (negated, so higher is better like every other score)."""
    logits = _check_logits("dev", logits_src_val, min_samples=2)
    _check_labels("dev", logits, labels_src_val)
    losses = F.cross_entropy(logits, labels_src_val.cpu(), reduction="none")  # (N_v,)
    return -dev_risk(dev_weights(feat_src_train, feat_src_val, feat_tgt, C), losses)


# ---------------------------------------------------------------- from a model and images


class Outputs(NamedTuple):
    logits: torch.Tensor  # (N, K) float32 on the CPU
    features: torch.Tensor  # (N, D): model.features, what the head reads


@torch.no_grad()
def model_outputs(model: UDANet, images: torch.Tensor, domain: int = TARGET, batch_size: int = 500) -> Outputs:
    """Logits and features of `images` ((N, C, H, W) in [-1, 1], or uint8 as the digit readers store them; grey is
    replicated by the model) through `domain`'s input statistics and batch norm, in eval mode, batch_size at a time."""
    was, device = model.training, model.input_mean.device
    model.eval()
    logits, features = [], []
    try:
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device)
            x = to_model_range(x) if x.dtype == torch.uint8 else x.float()
            z = model.features(x, domain)  # (B, D)
            features.append(z.float().cpu())
            logits.append(model.head(z).float().cpu())
    finally:
        model.train(was)
    return Outputs(torch.cat(logits), torch.cat(features))


def validate(model: UDANet, x_src_train: torch.Tensor, x_src_val: torch.Tensor, y_src_val: torch.Tensor,
             x_tgt: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Every score of one model (higher = better): source val accuracy, and from unlabelled target images entropy,
    IM, SND, BNM, and DEV (which also needs source train images for its domain classifier)."""
    src_train = model_outputs(model, x_src_train, SOURCE, batch_size)
    src_val = model_outputs(model, x_src_val, SOURCE, batch_size)
    tgt = model_outputs(model, x_tgt, TARGET, batch_size)
    return {"source_val_acc": source_accuracy(src_val.logits, y_src_val),
            "entropy": entropy_score(tgt.logits), "im": im_score(tgt.logits), "snd": snd_score(tgt.logits),
            "bnm": bnm_score(tgt.logits),
            "dev": dev_score(src_train.features, src_val.features, src_val.logits, y_src_val, tgt.features)}


# ---------------------------------------------------------------- what each rule picks in a run's log

# selection rule -> the metrics.jsonl key a UDA run logs it under at each evaluation (dlcv.training.uda.UDA.evaluate)
RULES = {"source val": "labelled_val_acc", "entropy": "validator/target_entropy", "IM": "validator/target_im",
         "SND": "validator/target_snd", "BNM": "validator/target_bnm", "DEV": "validator/dev"}
TEST_KEY = "oracle/target_test_acc"  # logged beside the scores for this comparison; never read to select


def picks(rows: list[dict]) -> dict[str, tuple[int, float]]:
    """rule -> (step, target test accuracy) of the evaluation each rule picks (highest score, ties to the later
    step) among a run's metrics.jsonl rows, plus 'last' (the final evaluation) and 'oracle' (the best target test
    accuracy: what no label-free rule can beat). A step logged twice (a resumed run) counts once, its last record."""
    by_step = {row["step"]: row for row in rows if TEST_KEY in row}
    if not by_step:
        raise ValueError(f"no evaluation in the log carries {TEST_KEY!r}; train the run with this version of dlcv")
    evals = [by_step[s] for s in sorted(by_step)]
    out = {}
    for rule, key in RULES.items():
        scored = [row for row in evals if key in row]
        if scored:
            best = max(scored, key=lambda row: (row[key], row["step"]))
            out[rule] = (best["step"], best[TEST_KEY])
    out["last"] = (evals[-1]["step"], evals[-1][TEST_KEY])
    best = max(evals, key=lambda row: (row[TEST_KEY], row["step"]))
    out["oracle"] = (best["step"], best[TEST_KEY])
    return out
