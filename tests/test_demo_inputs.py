"""Inputs a demo user can give that the apps must answer with a one-line note naming the problem and the fix: uploads
of unusual pixel formats, seeds out of range, a model without latents picked for interpolation, and a role's
checkpoint folder holding another kind of model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import checkpoint, service
from dlcv.models import build_model
from dlcv.models.classifier import ClassifierConfig
from dlcv.models.gan import GeneratorConfig

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def grey_digit() -> np.ndarray:
    return np.asarray(service.example_digit(7, domain="mnist").convert("L"))  # white on pure black


def test_16_bit_grey_upload_is_scaled_not_clipped():
    grey = grey_digit()
    image = service.open_upload(encoded(Image.fromarray(grey.astype(np.uint16) * 257)))  # a 16-bit grey PNG
    assert image.mode == "L"  # Pillow's own convert would clip every value over 255 to white
    assert np.array_equal(np.asarray(image), grey)


def test_16_bit_grey_upload_shows_on_the_overview_page(tmp_ckpt, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DLCV_CHECKPOINTS", str(tmp_ckpt.parent))
    app = AppTest.from_file(APP, default_timeout=60).run()
    png = encoded(Image.fromarray(grey_digit().astype(np.uint16) * 257))
    app.file_uploader(key="overview_upload").set_value(("digit.png", png, "image/png"))
    app.run()
    assert not app.exception  # st.image could not encode mode I;16
    assert any("prediction" in m.value for m in app.markdown)


def transparent_uploads() -> dict[str, bytes]:
    grey = grey_digit()
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[grey > 128] = (0, 0, 0, 255)  # a black digit on a clear canvas: dropping alpha leaves black on black
    digit = Image.fromarray(grey)
    return {"RGBA": encoded(Image.fromarray(rgba)), "palette": encoded(digit.convert("P"), transparency=0),
            "grey colour key": encoded(digit, transparency=0),
            "GIF": encoded(digit.convert("P"), "GIF", transparency=0)}


@pytest.mark.parametrize("kind", list(transparent_uploads()))
def test_transparent_upload_is_refused_by_name(kind):
    with pytest.raises(service.UploadError, match="transparent pixels.*flatten it onto a background"):
        service.open_upload(transparent_uploads()[kind])


def test_opaque_alpha_channel_is_accepted():
    image = service.open_upload(encoded(service.example_digit(3).convert("RGBA")))
    assert service.fit_image(image, 28, 3)[1] == "converted RGBA -> RGB"


@pytest.mark.parametrize("array", [np.random.default_rng(0).random((28, 28), dtype=np.float32),
                                   np.full((28, 28), 70000, np.int32)], ids=["float", "int32"])
def test_32_bit_upload_is_refused_by_name(array):
    with pytest.raises(service.UploadError, match="32-bit pixels .*8- or 16-bit PNG or as JPEG, and upload it again"):
        service.open_upload(encoded(Image.fromarray(array), "TIFF"))


def test_interpolating_a_model_without_latents_is_refused_by_name():
    classifier = build_model("classifier", ClassifierConfig(width=4))
    with pytest.raises(ValueError, match="a classifier checkpoint has no latent space to interpolate; pick a "
                                         "generator or a vae"):
        service.interpolate(classifier, {"architecture": "classifier"}, 0, 1, 3)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_seed_out_of_range_is_refused_by_name(seed):
    torch.manual_seed(0)
    faces = build_model("generator", GeneratorConfig(z_dim=8, image_size=64, width=4))
    digits = build_model("generator", GeneratorConfig(z_dim=8, image_size=28, width=4, num_classes=10))
    document = {"architecture": "generator"}
    message = rf"seed={seed} is out of range; give a whole number from 0 to {2**32 - 1}"
    with pytest.raises(ValueError, match=message):
        service.generate_faces(faces, document, 1, seed)
    with pytest.raises(ValueError, match=message.replace("seed", "seed B", 1)):
        service.interpolate(faces, document, 0, seed, 3)
    with pytest.raises(ValueError, match=message):
        service.digits(digits, document, 3, 1, seed)
    assert service.generate_faces(faces, document, 1, 2**32 - 1).shape == (1, 3, 64, 64)  # the CLI's largest seed


def test_role_folder_holding_another_kind_is_a_note(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "checkpoints"
    checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), root / service.DIGIT_DIFFUSION)
    catalog = service.catalog(root, repos=[])
    with pytest.raises(service.ModelMissing, match=r"holds a classifier with num_classes=10 checkpoint, not a unet "
                                                   r"with num_classes=10\); train it"):
        catalog.get(service.DIGIT_DIFFUSION)
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(root))
    monkeypatch.delenv("DLCV_HUB_REPOS", raising=False)
    app = AppTest.from_file(APP, default_timeout=60).run()
    app.switch_page("app_pages/digits.py").run()
    assert not app.exception  # the page read the classifier's missing diffusion schedule
    assert any("holds a classifier" in i.value for i in app.info)


def test_cleared_gradio_number_box_is_named():
    gradio_app = pytest.importorskip("gradio_app")

    with pytest.raises(gradio_app.gr.Error, match="a number box is empty; type a value"):
        gradio_app.one_line_errors(lambda n, seed: int(seed))(4, None)


def test_phone_photo_is_turned_upright_by_its_exif_orientation():
    upright = Image.fromarray(grey_digit())
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are the upright image turned 90 degrees anticlockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    opened = service.open_upload(encoded(stored, "JPEG", exif=exif, quality=100))
    assert opened.size == upright.size
    assert np.abs(np.asarray(opened, np.int16) - np.asarray(upright, np.int16)).mean() < 4


def test_damaged_exif_keeps_the_stored_pixels():
    digit = Image.fromarray(grey_digit())
    opened = service.open_upload(encoded(digit, exif=b"Exif\0\0XX\0*\0\0\0\x08"))  # not a TIFF header
    assert np.array_equal(np.asarray(opened), grey_digit())
