"""Every registered architecture builds, gives the right output shape and no NaN, and grey input works."""

import pytest
import torch

from dlcv.models import ARCHITECTURES, build_model
from dlcv.models.classifier import Classifier, ClassifierConfig
from dlcv.models.gan import Generator, GeneratorConfig
from dlcv.models.uda import UDANetConfig
from dlcv.models.unet import UNetConfig
from dlcv.models.vae import VAEConfig

TINY = {"classifier": ClassifierConfig(kind="convnet", width=4),
        "unet": UNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,)),
        "generator": GeneratorConfig(image_size=28, width=4, num_classes=10),
        "vae": VAEConfig(image_size=28, width=4, latent_dim=8),
        "uda_net": UDANetConfig(width=4)}


def run(model, x):
    """Each family's forward signature: classifiers take x, eps-networks (x_t, t, y), generators (z, y)."""
    if isinstance(model, Generator):
        return model(torch.randn(2, model.z_dim), torch.tensor([3, 7]))
    if model.__class__.__name__ == "UNet":
        return model(x, torch.tensor([0, 999]), torch.tensor([3, model.config.null_class]))
    if model.__class__.__name__ == "VAE":
        return model(x)[0]  # (x_hat, mu, logvar)
    return model(x)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_architecture_forward(architecture):
    assert architecture in TINY, f"add a tiny config for {architecture} to TINY"
    model = build_model(architecture, TINY[architecture]).eval()
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    out = run(model, x)
    assert out.shape[0] == 2
    assert torch.isfinite(out).all()


def test_course_lenet_shapes_and_grey_input():
    model = Classifier(ClassifierConfig(kind="lenet")).eval()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert model(x).shape == (2, 10)
    assert torch.equal(model(x), model(x.expand(-1, 3, -1, -1)))  # grey -> replicated RGB
    assert model.embed(x).shape == (2, 64)


def test_lenet_refuses_other_sizes():
    with pytest.raises(ValueError, match="image_size=28"):
        ClassifierConfig(kind="lenet", image_size=64)
