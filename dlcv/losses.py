"""GAN losses written from their papers: non-saturating BCE, hinge, Wasserstein + gradient penalty, ACGAN's class
loss. Each adversarial loss is a GANLoss pair: D minimises d_loss(real_logits, fake_logits), G minimises
g_loss(fake_logits). Logits are D's raw outputs, (B,) float32."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class GANLoss(NamedTuple):
    """The two halves of an adversarial objective, used by the separate D and G steps of the loop."""

    d_loss: Callable[..., torch.Tensor]
    g_loss: Callable[[torch.Tensor], torch.Tensor]


def bce_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """-[log D(x) + log(1 - D(G(z)))], Goodfellow et al. 2014 eq. (1) as D's loss, D = sigmoid(logits).

    One-sided label smoothing (Salimans et al. 2016, sec. 3.4): the real target is 1 - label_smoothing, fake stays 0.
    """
    real_target = torch.full_like(real_logits, 1.0 - label_smoothing)
    return (F.binary_cross_entropy_with_logits(real_logits, real_target)
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def bce_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(G(z)): the non-saturating generator loss of Goodfellow et al. 2014 (sec. 3), used by DCGAN."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]: Lim & Ye 2017; Miyato et al. 2018 eq. (16)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: the hinge generator loss, Miyato et al. 2018 eq. (17)."""
    return -fake_logits.mean()


def wasserstein_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[D(G(z))] - E[D(x)]: the critic loss of Gulrajani et al. 2017 eq. (3) without its penalty term."""
    return fake_logits.mean() - real_logits.mean()


def wasserstein_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z))]: the WGAN generator loss (Arjovsky et al. 2017, Algorithm 1)."""
    return -fake_logits.mean()


bce_losses = GANLoss(bce_d_loss, bce_g_loss)
hinge_losses = GANLoss(hinge_d_loss, hinge_g_loss)
wasserstein_losses = GANLoss(wasserstein_d_loss, wasserstein_g_loss)


class LeCam(torch.nn.Module):
    """LeCam regularisation of D (Tseng et al. 2021, eq. (3)): R_LC = E_x[||D(x) - alpha_F||^2] + E_z[||D(G(z)) -
    alpha_R||^2], where alpha_R, alpha_F are exponential moving averages of D's mean output on real and fake images.
    It keeps D's outputs on the two sides near each other's running anchor, which the paper shows bounds the LeCam
    divergence and helps most on small training sets. As in the authors' code, only the side that moved past its
    anchor is penalised (relu). The anchors are buffers, so they are saved and resumed with D's state."""

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("anchor_real", torch.zeros(()))
        self.register_buffer("anchor_fake", torch.zeros(()))

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # alpha <- decay * alpha + (1 - decay) * E[D(.)]
            self.anchor_real.lerp_(real_logits.detach().float().mean(), 1.0 - self.decay)
            self.anchor_fake.lerp_(fake_logits.detach().float().mean(), 1.0 - self.decay)
        return (F.relu(real_logits.float() - self.anchor_fake).pow(2).mean()
                + F.relu(self.anchor_real - fake_logits.float()).pow(2).mean())


def gradient_penalty(discriminator: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] with x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample.

    Gulrajani et al. 2017 eq. (3), without lambda. `discriminator` maps (B, ...) images to (B,) scores.
    """
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)  # (B, 1, 1, 1)
    x_hat = (eps * real.detach().float() + (1 - eps) * fake.detach().float()).requires_grad_(True)
    scores = discriminator(x_hat).float()
    # create_graph: the penalty itself is differentiated w.r.t. D's weights
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    grad_norm = grad.flatten(1).norm(2, dim=1)  # (B, C, H, W) -> (B, C*H*W) -> (B,)
    return ((grad_norm - 1.0) ** 2).mean()


def auxiliary_class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-E[log P(C = c | X)], the negated L_C of Odena et al. 2017 eq. (3) (ACGAN).

    D maximises L_S + L_C, so it minimises this on real and fake images; G maximises L_C - L_S: this on fake ones.
    """
    return F.cross_entropy(class_logits.float(), labels)


def vae_loss(x_hat: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative ELBO per image, Kingma & Welling 2014 eq. (10), with a weight beta on the KL term (Higgins et al.
    2017): E_q[sum_i (x_i - x_hat_i)^2] + beta * KL(q(z|x) || N(0, I)).

    The squared error is a Gaussian log-likelihood with fixed variance (up to constants), so beta trades
    sharp reconstructions (small beta) against a latent that matches the prior (samples). Returns
    (loss, recon, kl), each averaged over the batch; KL = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    """
    recon = (x_hat.float() - x.float()).pow(2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    return recon + kl_weight * kl, recon, kl


# ---------------------------------------------------------------- domain adaptation (training/uda.py)


def domain_loss(domain_logits_src: torch.Tensor, domain_logits_tgt: torch.Tensor) -> torch.Tensor:
    """L_d of DANN (Ganin et al. 2016, eq. (9)): binary cross-entropy of the domain classifier, source = 0,
    target = 1. Trained through a gradient reversal layer, the features maximise it while the classifier minimises it.
    """
    src, tgt = domain_logits_src.float().flatten(), domain_logits_tgt.float().flatten()
    return 0.5 * (F.binary_cross_entropy_with_logits(src, torch.zeros_like(src))
                  + F.binary_cross_entropy_with_logits(tgt, torch.ones_like(tgt)))


def conditional_entropy(logits: torch.Tensor) -> torch.Tensor:
    """-E_x[sum_c p(c|x) log p(c|x)]: the target cluster assumption term L_c of VADA (Shu et al. 2018, eq. (4))."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def diversity_loss(logits: torch.Tensor) -> torch.Tensor:
    """log K - H(E_x[p(c|x)]): >= 0, zero when the batch's mean prediction is uniform over the K classes. The
    diversity half of information maximisation (SHOT, Liang et al. 2020, eq. (2)); it stops entropy minimisation
    from collapsing all target images into a few classes."""
    p_mean = F.softmax(logits.float(), dim=1).mean(dim=0)
    return math.log(logits.shape[1]) + (p_mean * torch.log(p_mean + 1e-8)).sum()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / (d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1))) + 1e-12)


def vat_loss(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, logits: torch.Tensor,
             eps: float = 2.0, xi: float = 1e-6) -> torch.Tensor:
    """Virtual adversarial training (Miyato et al. 2018, eq. (5) with one power iteration, eq. (12)):
    KL(p(.|x) || p(.|x + r_adv)) with r_adv the eps-ball direction that most changes the prediction."""
    p = F.softmax(logits.detach().float(), dim=1)
    d = (xi * _unit(torch.randn_like(x, dtype=torch.float32))).requires_grad_(True)
    kl = F.kl_div(F.log_softmax(model(x + d.to(x.dtype)).float(), dim=1), p, reduction="batchmean")
    (grad,) = torch.autograd.grad(kl, d)
    r_adv = (eps * _unit(grad)).to(x.dtype)
    return F.kl_div(F.log_softmax(model(x + r_adv).float(), dim=1), p, reduction="batchmean")


def association_losses(emb_src: torch.Tensor, emb_tgt: torch.Tensor, labels_src: torch.Tensor,
                       temperature: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_walker, L_visit) of associative domain adaptation (Haeusser et al. 2017, ICCV; the two losses of their
    "Learning by Association", CVPR 2017), whose A, B, P^{ab}, P^{aba} are written here with s = source, t = target.
    With similarities M = phi_s phi_t^T (N_s, N_t) of the embeddings, a step source -> target P^{st} = softmax over
    the rows of M, back P^{ts} = softmax over the rows of M^T, and the round trip P^{sts} = P^{st} P^{ts} (N_s, N_s):
      L_walker = H(T, P^{sts}), T_ij = 1 / #{k: y_k = y_i} where y_j = y_i, else 0: a walk should come back to the
        class it left, to any sample of it; minimum mean_i log #{k: y_k = y_i}, where P^{sts} = T.
      L_visit = H(V, P^{visit}), P^{visit}_j = mean_i P^{st}_ij, V_j = 1 / N_t: every target sample should be
        visited, not only the easy ones; minimum log N_t.
    H(q, p) = -sum_j q_j log p_j, averaged over the rows; log(p + 1e-8) as in the authors' code.
    temperature > 0: M = cos(phi_s, phi_t) / temperature instead of the dot product, for embeddings whose norms make
    the raw M so large that both softmaxes are one-hot (then L_walker sits near -log 1e-8 and passes no gradient)."""
    if emb_src.dim() != 2 or emb_tgt.dim() != 2 or emb_src.shape[1] != emb_tgt.shape[1]:
        raise ValueError(f"association_losses takes embeddings (N_s, D) and (N_t, D), got {tuple(emb_src.shape)} and "
                         f"{tuple(emb_tgt.shape)}")
    if labels_src.shape != (emb_src.shape[0],):
        raise ValueError(f"association_losses: labels_src must be ({emb_src.shape[0]},), got {tuple(labels_src.shape)}")
    emb_src, emb_tgt = emb_src.float(), emb_tgt.float()
    if temperature > 0:
        emb_src, emb_tgt = F.normalize(emb_src, dim=1) / temperature, F.normalize(emb_tgt, dim=1)
    m = emb_src @ emb_tgt.T  # (N_s, N_t)
    p_st, p_ts = F.softmax(m, dim=1), F.softmax(m.T, dim=1)
    p_sts = p_st @ p_ts  # (N_s, N_s)
    same = (labels_src[:, None] == labels_src[None, :]).float()
    t = same / same.sum(dim=1, keepdim=True)
    walker = -(t * torch.log(p_sts + 1e-8)).sum(dim=1).mean()
    visit = -torch.log(p_st.mean(dim=0) + 1e-8).mean()  # V uniform: H(V, p) = -(1/N_t) sum_j log p_j
    return walker, visit
