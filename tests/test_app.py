"""The demo on tiny checkpoints of every kind it shows: the service functions, every Streamlit page through
streamlit.testing's AppTest (widgets change outputs, downloads are there, missing models give notes), and the
Gradio app through gradio_client against a local server."""

from __future__ import annotations

import io
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import checkpoint, hub, service
from dlcv.diffusion import NoiseSchedule, ScheduleConfig
from dlcv.models import ARCHITECTURES, build_model
from dlcv.models.classifier import ClassifierConfig
from dlcv.models.gan import GeneratorConfig
from dlcv.models.uda import UDANetConfig
from dlcv.models.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
PAGES = ["app_pages/overview.py", "app_pages/faces.py", "app_pages/digits.py", "app_pages/adaptation.py",
         "app_pages/results.py"]
UDA = ["uda_source_only_mnistm_to_svhn", "uda_dann_mnistm_to_svhn", "uda_improved_mnistm_to_svhn"]
HAS_VAE = "vae" in ARCHITECTURES


def tiny_generator(image_size: int, num_classes: int = 0) -> torch.nn.Module:
    return build_model("generator", GeneratorConfig(z_dim=8, image_size=image_size, width=4, num_classes=num_classes))


def tiny_vae() -> torch.nn.Module:
    from dlcv.models.vae import VAEConfig

    return build_model("vae", VAEConfig(latent_dim=8, width=4))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A checkpoints folder with a tiny model of every name the demo uses, plus a t-SNE figure and a report."""
    root = tmp_path_factory.mktemp("demo")
    ckpts = root / "checkpoints"
    torch.manual_seed(0)
    for name in ("dcgan_faces", "sngan_faces"):
        checkpoint.save(tiny_generator(64), ckpts / name)
    checkpoint.save(tiny_generator(64, num_classes=2), ckpts / "acgan_faces", {"run": {"data": {"attribute": "Smiling"}}})
    checkpoint.save(tiny_generator(28, num_classes=10), ckpts / "acgan_digits", {"metrics": {"digit_accuracy": 0.5}})
    checkpoint.save(build_model("classifier", ClassifierConfig(image_size=64, num_classes=2, width=4)),
             ckpts / "smiling_classifier", {"run": {"data": {"attribute": "Smiling"}}})
    unet = build_model("unet", UNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(), dropout=0.0))
    checkpoint.save(unet, ckpts / "ddpm_digits", {
        "schedule": {"num_timesteps": 50, "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "sampling": {"sampler": "ddim", "steps": 10, "eta": 0.0, "guidance": 1.0}})
    for i, name in enumerate(UDA):
        checkpoint.save(build_model("uda_net", UDANetConfig(width=4)), ckpts / name,
                 {"metrics": {"target_test_acc": 0.3 + 0.1 * i}})
    if HAS_VAE:
        checkpoint.save(tiny_vae(), ckpts / "vae_faces")
    figures = root / "figures"
    figures.mkdir()
    Image.new("RGB", (60, 40), "navy").save(figures / "tsne_mnistm_to_svhn.png")
    (root / "report.md").write_text("# Grading report\n\n| task | score |\n| --- | --- |\n| hw2_1 | 1.0 |\n")
    return root


@pytest.fixture
def demo_env(demo_root: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(demo_root / "checkpoints"))
    monkeypatch.setenv("DLCV_FIGURES", str(demo_root / "figures"))
    monkeypatch.setenv("DLCV_REPORT", str(demo_root / "report.md"))
    monkeypatch.delenv("DLCV_HUB_REPOS", raising=False)
    return demo_root


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- service

def test_catalog_groups_face_gans_and_uda_pairs(demo_env):
    catalog = service.catalog()
    assert [m.name for m in catalog.face_generators()] == ["dcgan_faces", "sngan_faces"]  # A, B; not the ACGAN
    pairs = catalog.uda_pairs()
    assert list(pairs) == ["mnistm -> svhn"] and list(pairs["mnistm -> svhn"]) == ["source_only", "dann", "improved"]
    with pytest.raises(service.ModelMissing, match="python -m dlcv train wgan_gp_faces"):
        catalog.get("wgan_gp_faces")
    assert service.tsne_figures("mnistm -> svhn")[0].name == "tsne_mnistm_to_svhn.png"
    assert service.tsne_figures("usps -> svhn") == service.tsne_figures()  # none names the pair: all of them


def test_uda_pairs_come_in_the_catalog_order(demo_env, tmp_path, monkeypatch):
    """The course's pair first (the demo's default), then the anchored pairs; not alphabetical."""
    import shutil

    ckpts = tmp_path / "checkpoints"  # a copy: demo_root is shared by the other tests
    for pair in ("mnistm_to_svhn", "mnist_to_usps", "mnistm_to_usps"):
        shutil.copytree(demo_env / "checkpoints" / "uda_dann_mnistm_to_svhn", ckpts / f"uda_dann_{pair}")
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(ckpts))
    assert list(service.catalog().uda_pairs()) == ["mnistm -> usps", "mnist -> usps", "mnistm -> svhn"]


def test_example_digit_is_drawn_like_the_target_domain():
    grey, colour = (np.asarray(service.example_digit(3, domain=d)) for d in ("usps", "mnistm"))
    assert grey.shape == colour.shape == (28, 28, 3)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()  # white on black
    assert not (colour[..., 0] == colour[..., 2]).all()


def test_faces_pairs_and_interpolation_share_z(demo_env):
    catalog = service.catalog()
    model, document = service.load(catalog.get("dcgan_faces").path)
    faces = service.generate_faces(model, document, 3, seed=5)
    assert faces.shape == (3, 3, 64, 64) and faces.abs().max() <= 1
    assert torch.allclose(service.generate_faces(model, document, 1, seed=5), faces[:1], atol=1e-6)  # seed + i
    path = service.interpolate(model, document, seed_a=5, seed_b=9, steps=4)
    assert torch.allclose(path[0], faces[0], atol=1e-5)  # the ends are seed A's and seed B's first faces
    assert torch.allclose(path[-1], service.generate_faces(model, document, 1, seed=9)[0], atol=1e-5)
    z0, z1 = torch.randn(8), torch.randn(8)
    middle = service.slerp(z0, z1, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(middle[[0, 2]], torch.stack([z0, z1]), atol=1e-5)
    acgan, _ = service.load(catalog.get("acgan_faces").path)
    neutral, smiling = service.smiling_pairs(acgan, 2, seed=1)
    y0, y1 = torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)
    z = service._z(acgan, 1, 2)
    assert torch.allclose(neutral, acgan(z, y0), atol=1e-5) and torch.allclose(smiling, acgan(z, y1), atol=1e-5)
    with pytest.raises(ValueError, match="num_classes=2"):
        service.smiling_pairs(model, 2)


@pytest.mark.skipif(not HAS_VAE, reason="dlcv.models.vae is not registered yet")
def test_vae_samples_and_reconstruction():
    vae = tiny_vae()
    document = {"architecture": "vae"}
    samples = service.generate_faces(vae, document, 2, seed=0, temperature=0.5)
    assert samples.shape == (2, 3, 64, 64)
    x, x_hat, note = service.reconstruct(vae, Image.new("L", (30, 50), 128))
    assert x.shape == x_hat.shape == (1, 3, 64, 64) and note == "converted L -> RGB, 30x50 -> 64x64"
    assert torch.equal(x_hat, service.reconstruct(vae, Image.new("L", (30, 50), 128))[1])  # decode(mu): no noise


def test_digits_keep_the_reverse_process(demo_env):
    model, document = service.load(service.catalog().get("ddpm_digits").path)
    calls = []
    images, frames = service.digits(model, document, 4, 3, seed=0, guidance=0.0, sampler="ddim", steps=5,
                                    progress=lambda done, total: calls.append((done, total)))
    assert images.shape == (3, 3, 28, 28) and calls[-1] == (15, 15)
    assert [t for t, _ in frames] == [49, 37, 24, 12, 0, -1] and torch.equal(frames[-1][1], images)
    gif = Image.open(io.BytesIO(service.reverse_gif(frames)))
    assert gif.format == "GIF" and gif.n_frames == len(frames)
    assert len(service.reverse_keep("ddpm", 0, NoiseSchedule(ScheduleConfig(num_timesteps=1000)), frames=50)) == 50
    with pytest.raises(ValueError, match="digits 0..9"):
        service.digits(model, document, 10, 1)


def test_compare_uploads_and_downloads(demo_env):
    pair = service.catalog().uda_pairs()["mnistm -> svhn"]
    models = {method: service.load(info.path)[0] for method, info in pair.items()}
    probs, note = service.compare(models, Image.new("L", (32, 32), 200))
    assert list(probs) == ["source_only", "dann", "improved"] and note == "converted L -> RGB, 32x32 -> 28x28"
    assert all(p.shape == (10,) and np.isclose(p.sum(), 1, atol=1e-5) for p in probs.values())
    with pytest.raises(service.UploadError, match="at most 1 MB"):
        service.open_upload(b"x" * (2 * 2**20), max_bytes=2**20)
    with pytest.raises(service.UploadError, match="not a readable image"):
        service.open_upload(b"%PDF-1.4 not an image")
    assert service.open_upload(png_bytes(Image.new("RGB", (5, 4)))).size == (5, 4)
    images = torch.zeros(3, 3, 8, 8)
    with zipfile.ZipFile(io.BytesIO(service.zip_pngs(images, "face"))) as archive:
        assert archive.namelist() == ["face_000.png", "face_001.png", "face_002.png"]
    assert Image.open(io.BytesIO(service.grid_png(images, nrow=3))).size == (3 * 10 + 2, 12)


def test_catalog_pulls_hub_repos_and_notes_failures(demo_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from hub_server import HubServer

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))  # read once at import
    with HubServer() as server:
        hub.push(demo_env / "checkpoints" / "dcgan_faces", "org/dcgan_faces", endpoint=server.url)
        catalog = service.catalog(tmp_path / "empty", ["org/dcgan_faces", "org/sngan_faces"], endpoint=server.url)
    assert list(catalog.models) == ["dcgan_faces"] and catalog.models["dcgan_faces"].source == "hub:org/dcgan_faces"
    assert len(catalog.notes) == 1 and catalog.notes[0].startswith("org/sngan_faces: ")
    assert "not available" in catalog.notes[0]
    model, _ = service.load(catalog.models["dcgan_faces"].path)
    assert model.config.image_size == 64


# ---------------------------------------------------------------- Streamlit pages (AppTest)

def open_page(page: str):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(APP, default_timeout=60).run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    assert not app.exception, app.exception
    return app


def submit(app, form: str):
    next(b for b in app.button if getattr(b, "form_id", "") == form).click()
    app.run()
    assert not app.exception, app.exception
    return app


def image_urls(app) -> list[str]:
    return [url for element in app.image for url in element.value]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_without_checkpoints_shows_notes(page, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(tmp_path / "none"))
    monkeypatch.setenv("DLCV_FIGURES", str(tmp_path / "none"))
    monkeypatch.setenv("DLCV_REPORT", str(tmp_path / "none.md"))
    app = open_page(page)
    notes = " ".join(i.value for i in app.info)
    expected = {"overview": "No checkpoints found", "faces": "`dcgan_faces` is not available",
                "digits": "`ddpm_digits` is not available", "adaptation": "No adaptation checkpoints yet",
                "results": "No grading report"}
    assert expected[Path(page).stem] in notes


def test_faces_page(demo_env):
    app = open_page("app_pages/faces.py")
    assert not app.info or all("wgan" not in i.value for i in app.info)
    submit(app, "faces_gan")
    first = image_urls(app)
    assert len(first) == 2 * 16 + (2 if HAS_VAE else 0)  # method A and B, 16 faces each (+ the example face and its VAE reconstruction)
    labels = [b.label for b in app.download_button]
    extra = 1 if HAS_VAE else 0  # the example reconstruction has its downloads too
    assert labels.count("Grid (PNG)") == 2 + extra and labels.count("All images (zip)") == 2 + extra
    app.number_input(key="faces_gan_seed").set_value(7)
    submit(app, "faces_gan")
    assert image_urls(app) != first  # another seed, other faces
    app.selectbox[0].set_value("sngan_faces")  # interpolation model
    submit(app, "faces_interp")
    submit(app, "faces_smile")
    captions = [c for element in app.image for c in element.captions]
    assert sum(c.startswith("P(smile)") for c in captions) == 2 * 8
    if HAS_VAE:
        submit(app, "faces_vae")
        assert any("reconstruction" in element.captions for element in app.image)  # the example face, no upload
        app.radio(key="vae_source").set_value("upload").run()
        app.file_uploader(key="vae_upload").set_value(("face.png", png_bytes(Image.new("L", (40, 40))), "image/png"))
        app.run()
        assert not app.exception
        assert any("reconstruction" in element.captions for element in app.image)
        assert any("converted L -> RGB, 40x40 -> 64x64" in c.value for c in app.caption)
        app.file_uploader(key="vae_upload").set_value(("face.png", b"not an image", "image/png"))
        app.run()
        assert not app.exception and "not a readable image" in app.error[0].value  # refused with a note
    assert len(app.download_button) >= 8  # every generated set has its PNG and zip


def test_digits_page(demo_env):
    app = open_page("app_pages/digits.py")
    app.slider(key="ddpm_count").set_value(3)
    app.slider(key="ddpm_steps").set_value(5)
    submit(app, "digits_diffusion")
    frame_images = image_urls(app)
    assert any(b.label == "Animation (GIF)" for b in app.download_button)
    assert {"Grid (PNG)", "All images (zip)"} <= {b.label for b in app.download_button}
    assert app.select_slider(key="ddpm_frame").value == "t=49"  # the slider starts at x_T
    app.select_slider(key="ddpm_frame").set_value("x0").run()
    assert not app.exception and image_urls(app) != frame_images  # scrubbing to x_0 shows another frame
    all_ten = next(b for b in app.button if b.label == "All ten digits")
    all_ten.click().run()
    assert not app.exception and "digits 0-9" in " ".join(m.value for m in app.markdown)
    app.slider(key="ddpm_guidance").set_value(0.0)
    submit(app, "digits_diffusion")
    assert "w = 0.0" in " ".join(m.value for m in app.markdown)
    submit(app, "digits_gan")
    assert {b.key for b in app.download_button} >= {"acgan_png", "acgan_zip", "ddpm_gif"}


def test_adaptation_page(demo_env):
    app = open_page("app_pages/adaptation.py")
    predictions = [m.value for m in app.markdown if m.value.startswith("**")]
    assert [p.split("**")[1] for p in predictions] == ["source_only", "dann", "improved"]
    assert len(app.dataframe) == 1 and list(app.dataframe[0].value["method"]) == ["source_only", "dann", "improved"]
    assert any("tsne_mnistm_to_svhn" in element.captions for element in app.image)
    app.radio[0].set_value("upload").run()
    app.file_uploader(key="uda_upload").set_value(("d.png", png_bytes(Image.new("L", (40, 30), 255)), "image/png"))
    app.run()
    assert not app.exception
    assert any("converted L -> RGB, 40x30 -> 28x28" in element.captions for element in app.image)


def test_results_page(demo_env):
    app = open_page("app_pages/results.py")
    assert any("Grading report" in m.value for m in app.markdown)
    assert len(app.expander) >= 1 and any(m.value.startswith("| ") for m in app.markdown)  # tables, not the file
    assert app.download_button[0].label == "Report (Markdown)"


# ---------------------------------------------------------------- Gradio app (gradio_client)

def free_port() -> int | None:
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_gradio_api(demo_env, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    import sys

    sys.path.insert(0, str(ROOT))
    import gradio_app
    from gradio_client import Client

    gradio_app.catalog.cache_clear()
    port = free_port()
    if port is None:
        pytest.skip("cannot bind a localhost port")
    demo = gradio_app.build()
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    except OSError as err:
        pytest.skip(f"cannot start the Gradio server on 127.0.0.1:{port} ({err})")
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        gallery, archive, note = client.predict("sngan_faces", 4, 3, 0.0, api_name="/faces")
        assert len(gallery) == 4 and note == "sngan_faces: 4 faces" and zipfile.is_zipfile(archive)
        gallery, gif, archive, note = client.predict("ddpm_digits", 2, 3, 0, 1.0, "ddim", 5, api_name="/digits")
        assert len(gallery) == 3 and Image.open(gif).n_frames == 6 and "digit 2" in note
        gallery, gif, archive, note = client.predict("ddpm_digits", 0, 1.0, "dpm++2m", 5, api_name="/all_digits")
        assert len(gallery) == 10 and "digits 0-9, dpm++2m-5" in note
        gallery, *_ = client.predict(5, 0, 0.0, api_name="/smiling_pairs")
        assert len(gallery) == 10 and "P(smile)" in gallery[1]["caption"]
        shown, scores, note = client.predict("mnistm -> svhn", None, 7, api_name="/adapt")
        assert Image.open(shown).size == (112, 112) and "| dann |" in note  # the input digit is shown
        plot = scores.get("value", scores) if isinstance(scores, dict) else scores
        methods = [row[2] for row in plot["data"]]
        assert sorted(set(methods)) == ["dann", "improved", "source_only"] and len(methods) == 30
        from gradio_client.exceptions import AppError

        with pytest.raises(AppError, match="less than minimum"):  # a bad request: one line
            client.predict("sngan_faces", 0, 1, 1, "slerp", api_name="/interpolate")
        with pytest.raises(gradio_app.gr.Error, match="at least 2 images") as raised:  # no traceback in the log
            gradio_app.one_line_errors(gradio_app.interpolate)("sngan_faces", 0, 1, 1, "slerp")
        assert raised.value.print_exception is False
        assert "hw2_1" in client.predict(api_name="/report")
        gallery, archive, note = client.predict("wgan_gp_faces", 4, 0, 0.0, api_name="/faces")
        assert gallery == [] and "`wgan_gp_faces` is not available" in note  # a note, not an error
    finally:
        demo.close()


def test_space_reads_its_models_from_the_readme(tmp_path, monkeypatch):
    import sys

    sys.path.insert(0, str(ROOT))
    import gradio_app

    readme = tmp_path / "README.md"
    readme.write_text('---\nsdk: gradio\npython_version: "3.11"\napp_file: gradio_app.py\n'
                      "models:\n  - org/dcgan_faces\n  - org/ddpm_digits\n---\n# demo\n")
    monkeypatch.setattr(gradio_app, "README", readme)
    monkeypatch.delenv("DLCV_HUB_REPOS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert gradio_app.space_repos() == []  # locally: checkpoints/ only, no network
    monkeypatch.setenv("SPACE_ID", "org/dlcv-demo")
    assert gradio_app.space_repos() == ["org/dcgan_faces", "org/ddpm_digits"]
    monkeypatch.setenv("DLCV_HUB_REPOS", "org/other")
    assert gradio_app.space_repos() == ["org/other"]



def test_markdown_tables_and_headline(demo_env):
    text = "# R\nprose\n## A\ntext\n| a | b |\n| - | - |\n| 1 | 2 |\nmore\n## B\nno table\n### C\n| x |\n"
    assert service.markdown_tables(text) == [("A", ["| a | b |\n| - | - |\n| 1 | 2 |"]), ("C", ["| x |"])]
    rows = service.headline(service.catalog())
    assert rows and all(all(str(v) for v in row.values()) for row in rows)  # no empty cell
    assert any(r["model"] == "acgan_digits" and r["metric"] == "accuracy 0.500" for r in rows)


def test_overview_page_is_a_landing_page(demo_env):
    app = open_page("app_pages/overview.py")
    assert not app.exception
    assert "Headline results" in [s.value for s in app.subheader]
    assert len(app.expander) == 1 and "checkpoints" in app.expander[0].label
