"""VAE family (model, loss, 2-step run, save -> load, seeded sampling), the figures command, the EMA helper and the
training budget options (max_minutes, snapshot_every)."""

import json

import pytest
import torch
from PIL import Image

from dlcv import checkpoint
from dlcv.cli import main
from dlcv.config import apply_overrides
from dlcv.losses import vae_loss
from dlcv.metrics import reconstruction_mse
from dlcv.models.gan import Generator, GeneratorConfig
from dlcv.models.vae import VAE, VAEConfig
from dlcv.presets import get_preset
from dlcv.sampling import sample_vae
from dlcv.training import train
from dlcv.training.common import ema_copy, run_dir


def tiny_vae_cfg(root, tmp_path, *extra):
    return apply_overrides(get_preset("vae_faces"), [
        f"--data.root={root}", f"--train.out_dir={tmp_path / 'runs'}", "--model.width=4", "--model.latent_dim=8",
        "--train.batch_size=4", "--train.steps=2", "--train.eval_every=2", "--train.sample_every=2",
        "--train.progress=false", "--train.deterministic=true", *extra])


def test_vae_shapes_and_range():
    vae = VAE(VAEConfig(width=4, latent_dim=8)).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    x_hat, mu, logvar = vae(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (3, 8)
    assert torch.isfinite(x_hat).all() and x_hat.abs().max() <= 1
    assert vae.decode(torch.zeros(2, 8)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="image_size"):
        VAEConfig(image_size=32)


def test_vae_loss_terms():
    x = torch.zeros(2, 3, 4, 4)
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    loss, recon, kl = vae_loss(x, x, mu, logvar, kl_weight=1.0)
    assert loss.item() == recon.item() == kl.item() == 0  # perfect reconstruction, posterior = prior
    loss, recon, kl = vae_loss(x + 0.5, x, mu + 1, logvar, kl_weight=0.1)
    assert recon.item() == pytest.approx(48 * 0.25)  # per-image sum of squared errors
    assert kl.item() == pytest.approx(2.5)  # 1/2 sum mu^2
    assert loss.item() == pytest.approx(12 + 0.25)


def test_two_vae_steps_ship_a_loadable_model_with_val_mse(tiny_faces, tmp_path):
    cfg = tiny_vae_cfg(tiny_faces, tmp_path)
    vae, meta = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    assert isinstance(vae, VAE) and meta["trained_steps"] == 2
    assert 0 < meta["metrics"]["val_mse"] < 1
    lines = [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines) and "val_mse" in lines[-1]
    # save -> load gives identical outputs; the same seed gives the same images
    again, _ = checkpoint.load(tmp_path / "ckpt")
    a, b = sample_vae(vae, 3, seed=5), sample_vae(again, 3, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, sample_vae(vae, 3, seed=6))
    # image i comes from seed + i (other batch sizes may pick other conv kernels: equal up to float rounding)
    assert torch.allclose(sample_vae(vae, 3, seed=5)[1], sample_vae(vae, 2, seed=6)[0], atol=1e-5)


def test_reconstruction_mse_is_in_unit_pixels():
    class Identity(torch.nn.Module):  # a perfect autoencoder, then one that is off by a known amount
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def encode(self, x):
            return x, x

        def decode(self, z):
            return z + self.shift

    images = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    assert reconstruction_mse(Identity(0.0), images) == pytest.approx(0.0)
    assert reconstruction_mse(Identity(0.2), images) == pytest.approx(0.01, rel=1e-4)  # 0.1 in [0, 1] units, squared


def test_sample_cli_writes_vae_faces(tiny_faces, tmp_path):
    ckpt = train(tiny_vae_cfg(tiny_faces, tmp_path), out=tmp_path / "ckpt")
    assert main(["sample", str(ckpt), "--n", "5", "--out", str(tmp_path / "s")]) == 0
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == [f"{i:04d}.png" for i in range(5)]
    assert Image.open(tmp_path / "s" / "0000.png").size == (64, 64)


def test_figures_for_vae_and_smiling_acgan(tiny_faces, tmp_path):
    cfg = tiny_vae_cfg(tiny_faces, tmp_path)
    vae = train(cfg, out=tmp_path / "vae")
    acgan = checkpoint.save(Generator(GeneratorConfig(width=4, num_classes=2)), tmp_path / "acgan")
    out = tmp_path / "figs"
    assert main(["figures", str(vae), "--out", str(out), "--data", str(tiny_faces),
                 "--metrics", str(run_dir(cfg) / "metrics.jsonl")]) == 0
    assert main(["figures", str(acgan), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["acgan_grid.png", "acgan_pairs.png", "vae_curves.png", "vae_reconstruction.png",
                     "vae_samples.png", "vae_tsne_Male.png"]
    assert Image.open(out / "acgan_grid.png").size == (8 * 66 + 2, 4 * 66 + 2)  # 32 faces, 8 a row


def test_max_minutes_stops_early_and_still_ships(tiny_faces, tmp_path):
    cfg = tiny_vae_cfg(tiny_faces, tmp_path, "--train.steps=1000", "--train.max_minutes=0.0001",
                       "--train.snapshot_every=1")
    _, meta = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    assert meta["trained_steps"] < 1000
    snapshots = sorted(p.name for p in (run_dir(cfg) / "snapshots").iterdir())
    assert snapshots[0] == "step_000001"
    checkpoint.load(run_dir(cfg) / "snapshots" / snapshots[0])


def test_ema_warm_up_state_dict_and_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ema_copy(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model.train()
    model(torch.randn(4, 2))  # moves BN statistics and its integer batch counter
    for _ in range(3):
        ema.update_parameters(model)
    assert ema.updates == 3 and int(ema.n_averaged) == 3
    assert torch.equal(ema.module[1].num_batches_tracked, model[1].num_batches_tracked)  # copied, not averaged
    assert torch.allclose(ema.module[0].weight, torch.ones(2, 2))  # the first update copies
    # AveragedModel's keys: a state written by the old EMA resumes, and the count comes back
    again = ema_copy(model, decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 3
    saved = torch.optim.swa_utils.AveragedModel(model, use_buffers=True).state_dict()
    assert set(saved) == set(ema.state_dict())


def test_fitted_latent_prior_matches_the_latents_and_samples_from_them(tmp_path):
    """Ghosh et al. 2020's ex-post density: the fitted Gaussian has the latents' mean and covariance, and
    sample_vae draws z from it (same seed, same images; a stored prior is what service.sample_to_folder uses)."""
    from safetensors.torch import save_file

    from dlcv import checkpoint, service
    from dlcv.models import build_model
    from dlcv.models.vae import VAEConfig
    from dlcv.sampling import LATENT_PRIOR_NAME, fit_latent_prior, sample_vae

    torch.manual_seed(0)
    vae = build_model("vae", VAEConfig(latent_dim=8, width=4)).eval()
    images = torch.rand(64, 3, 64, 64) * 2 - 1
    prior = fit_latent_prior(vae, images)
    mu = vae.encode(images)[0].flatten(1)
    assert torch.allclose(prior["mean"], mu.mean(0), atol=1e-5)
    cov = prior["scale_tril"] @ prior["scale_tril"].T
    assert torch.allclose(cov, torch.cov(mu.T), atol=1e-4)
    a, b = sample_vae(vae, 3, seed=1, prior=prior), sample_vae(vae, 3, seed=1)
    assert torch.equal(a, sample_vae(vae, 3, seed=1, prior=prior)) and not torch.equal(a, b)
    checkpoint.save(vae, tmp_path / "vae")
    save_file(prior, tmp_path / "vae" / LATENT_PRIOR_NAME)
    assert torch.equal(service.latent_prior(tmp_path / "vae")["mean"], prior["mean"])
    assert service.latent_prior(tmp_path) is None
