"""The grading harness: hw_run end to end on tiny checkpoints and data made here, the course wrappers, and the
scorer on valid and deliberately broken submissions (FID faked: Inception on a CPU is too slow for fast tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grading import course, run, score

from conftest import write_digits_domain

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoints(root: Path) -> Path:
    """Tiny versions of every shipped generator and two UDA models for mnistm -> usps."""
    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.gan import GeneratorConfig
    from dlcv.models.uda import UDANetConfig
    from dlcv.models.unet import UNetConfig

    face = GeneratorConfig(z_dim=8, image_size=64, width=4)
    for name in ("dcgan_faces", "sngan_faces"):
        checkpoint.save(build_model("generator", face), root / name)
    checkpoint.save(build_model("generator", GeneratorConfig(z_dim=8, image_size=28, width=4, num_classes=10)),
             root / "acgan_digits")
    unet = UNetConfig(base_width=4, channel_mults=(1,), attention_levels=(), image_size=28, dropout=0.0)
    checkpoint.save(build_model("unet", unet), root / "ddpm_digits", {
        "schedule": {"num_timesteps": 20, "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "sampling": {"sampler": "ddim", "steps": 2, "eta": 0.0, "guidance": 0.0}})
    # an unknown (experimental) method with the best accuracy: never the pair's model nor a table slot
    for method, acc in (("dann", 0.5), ("vada", 0.7), ("source_only", 0.3), ("target_only", 0.9),
                        ("experimental", 0.95)):
        metrics = {"method": method, "source": "mnistm", "target": "usps", "target_test_acc": acc,
                   "oracle_target_test_acc": 0.99, "last_step_target_test_acc": 0.1}  # as training/uda.py records
        checkpoint.save(build_model("uda_net", UDANetConfig(width=4)), root / f"uda_{method}_mnistm_to_usps",
                 {"metrics": metrics})
    return root


def write_faces(folder: Path, n: int, size: int = 64, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{i:04d}.png")
    return folder


def write_digit_files(folder: Path, per_class: int, size: int = 28) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(10):
        for i in range(1, per_class + 1):
            Image.new("RGB", (size, size), (d * 20, 0, 0)).save(folder / f"{d}_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints, data (digits mnistm/usps, faces val/test) and a course classifier, made once per module."""
    from dlcv.models.classifier import Classifier, ClassifierConfig

    base = tmp_path_factory.mktemp("world")
    data = base / "data"
    write_digits_domain(data, "mnistm", {"train": 20, "val": 10, "test": 10}, channels=3)
    write_digits_domain(data, "usps", {"train": 20, "val": 10, "test": 10}, channels=1, seed=1)
    write_faces(data / "face" / "test", 12, seed=1)
    write_faces(data / "face" / "val", 12, seed=2)
    classifier = base / "Classifier.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": Classifier(ClassifierConfig(kind="lenet")).state_dict()}, classifier)
    return {"checkpoints": make_checkpoints(base / "checkpoints"), "data": data, "classifier": classifier,
            "base": base}


def fake_figures(checkpoint: Path, out: Path, data: Path, seed: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(out / f"{checkpoint.name}_grid.png")


@pytest.fixture(scope="module")
def hw_out(world) -> Path:
    """One full hw_run (figures command faked) whose output the scorer tests copy."""
    mp = pytest.MonkeyPatch()
    mp.setattr(run, "figures_available", lambda: True)
    mp.setattr(run, "run_figures_command", fake_figures)
    mp.setattr(run, "FACE_FIGURE_MODELS", ("dcgan_faces",))
    try:
        out = world["base"] / "hw_out"
        code = run.main([str(out), str(world["data"]), "--checkpoints", str(world["checkpoints"])])
    finally:
        mp.undo()
    assert code == 0, json.loads((out / "manifest.json").read_text())
    return out


@pytest.fixture
def fake_fid(monkeypatch) -> list[dict]:
    """Replace dlcv.metrics.face_scores (which may not exist yet) by a recorder returning fixed numbers, and the
    face detector (5 ms a face) by the share of faces whose mean pixel is above 127."""
    import dlcv.metrics

    calls = []
    monkeypatch.setattr(score, "face_detection_rate", lambda images: float((images.mean((1, 2, 3)) > 127).mean()))

    def face_scores(samples_dir, reference_dir, *, kid_subset_size=1000, cache_name=None, isc=False, batch_size=64):
        calls.append({"samples": samples_dir, "reference": reference_dir, "kid_subset_size": kid_subset_size,
                      "cache_name": cache_name})
        return {"fid": 42.0, "kid_mean": 0.01, "kid_std": 0.001, "n_samples": 1000, "n_reference": 12}

    monkeypatch.setattr(dlcv.metrics, "face_scores", face_scores, raising=False)
    return calls


def grade(out: Path, world, *extra: str) -> dict:
    code = score.main([str(out), "--data", str(world["data"]), "--classifier", str(world["classifier"]), *extra])
    assert code == 0
    return json.loads((out / "score.json").read_text())


# ---------------------------------------------------------------- hw_run

def test_hw_run_writes_every_output(hw_out, world):
    from dlcv import checkpoint

    assert sorted(os.listdir(hw_out / "faces" / "gan_a")) == [f"{i:04d}.png" for i in range(1000)]
    assert len(os.listdir(hw_out / "faces" / "gan_b")) == 1000
    for folder in ("acgan", "diffusion"):
        names = sorted(os.listdir(hw_out / "digits" / folder))
        assert len(names) == 1000 and names[0] == "0_001.png" and names[-1] == "9_100.png"
    with Image.open(hw_out / "faces" / "gan_a" / "0000.png") as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    lines = (hw_out / "adaptation" / "mnistm_to_usps.csv").read_text().splitlines()
    assert lines[0] == "image_name,label" and len(lines) == 11  # usps/test.csv lists 10 images
    manifest = json.loads((hw_out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["seed"] == 0
    entries = {e["output"]: e for p in manifest["parts"].values() for e in p["entries"]}
    assert entries["faces/gan_a"]["checkpoint"] == "dcgan_faces"
    assert entries["faces/gan_a"]["sha256"] == checkpoint.weights_sha256(world["checkpoints"] / "dcgan_faces")
    csv_entry = entries["adaptation/mnistm_to_usps.csv"]
    assert csv_entry["checkpoint"] == "uda_vada_mnistm_to_usps"  # the improved method beats DANN
    assert csv_entry["details"]["images"] == "test.csv"
    assert all(p["seconds"] >= 0 for p in manifest["parts"].values())


def test_hw_run_records_missing_and_failing_parts(world, tmp_path, monkeypatch):
    monkeypatch.setattr(run, "N_FACES", 10)
    monkeypatch.setattr(run, "PER_CLASS", 10)
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(world["checkpoints"], checkpoints)
    shutil.rmtree(checkpoints / "sngan_faces")
    (checkpoints / "uda_dann_mnistm_to_usps" / "model.safetensors").write_bytes(b"garbage")
    for name in ("uda_vada_mnistm_to_usps", "uda_source_only_mnistm_to_usps", "uda_target_only_mnistm_to_usps"):
        shutil.rmtree(checkpoints / name)
    monkeypatch.setattr(run, "figures_available", lambda: False)  # the digits part falls back to dlcv.viz
    out = tmp_path / "out"
    code = run.main([str(out), str(world["data"]), "--checkpoints", str(checkpoints),
                     "--parts", "faces", "digits", "adaptation"])
    assert code == 1
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["output"]: e for p in manifest["parts"].values() for e in p["entries"]}
    assert entries["faces/gan_b"]["status"] == "missing"
    assert "sngan_faces is not shipped" in entries["faces/gan_b"]["message"]
    assert entries["faces/gan_a"]["status"] == "ok" and len(os.listdir(out / "faces" / "gan_a")) == 10
    assert "figures command unavailable" in entries["faces/figures/dcgan_faces"]["message"]
    assert manifest["parts"]["digits"]["status"] == "ok"  # fallback figures
    assert (out / "digits" / "figures" / "ddpm_digits" / "ddpm_digits_reverse.png").is_file()
    assert (out / "digits" / "figures" / "acgan_digits" / "acgan_digits_grid.png").is_file()
    assert entries["adaptation/mnistm_to_usps.csv"]["status"] == "failed"
    assert "not a readable safetensors" in entries["adaptation/mnistm_to_usps.csv"]["message"]
    assert manifest["parts"]["faces"]["status"] == "failed" and manifest["status"] == "failed"
    assert score.main([str(out), "--data", str(world["data"]), "--classifier", str(world["classifier"]),
                       "--no-fid"]) == 0
    report = (out / "report.md").read_text()
    assert "## What hw_run.sh could not write" in report and "- `faces/gan_b`: missing: checkpoint" in report


def test_adaptation_figures_are_the_figures_commands_t_sne(world, tmp_path):
    out = tmp_path / "out"
    assert run.main([str(out), str(world["data"]), "--parts", "adaptation",
                     "--checkpoints", str(world["checkpoints"])]) == 0
    figures = out / "adaptation" / "figures" / "uda_vada_mnistm_to_usps"
    assert sorted(os.listdir(figures)) == ["uda_vada_mnistm_to_usps_tsne_class.png",
                                           "uda_vada_mnistm_to_usps_tsne_domain.png"]
    entry = json.loads((out / "manifest.json").read_text())["parts"]["adaptation"]["entries"][1]
    assert entry["status"] == "ok" and entry["files"] == 2 and entry["seed"] == 0


def test_hw_run_refuses_a_non_empty_folder_unless_forced(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    env = {**os.environ, "PYTHON": sys.executable, "DLCV_CHECKPOINTS": str(tmp_path / "none")}
    done = subprocess.run(["bash", str(ROOT / "grading" / "hw_run.sh"), str(out), str(world["data"])],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not empty; pass --force" in done.stderr
    code = run.main([str(out), str(world["data"]), "--force", "--parts", "adaptation",
                     "--checkpoints", str(tmp_path / "none")])
    manifest = json.loads((out / "manifest.json").read_text())
    assert code == 1 and (out / "keep.txt").is_file()  # --force replaces only the parts' outputs
    assert manifest["parts"]["adaptation"]["entries"][0]["status"] == "missing"


@pytest.mark.skipif(not run.figures_available(), reason="this dlcv has no `python -m dlcv figures`")
def test_figures_command_in_process(world, tmp_path):
    run.run_figures_command(world["checkpoints"] / "dcgan_faces", tmp_path / "figs", world["data"])
    assert (tmp_path / "figs" / "dcgan_faces_grid.png").is_file()
    with pytest.raises(RuntimeError, match="figures .*(wrote no figure|exited)"):
        run.run_figures_command(world["checkpoints"] / "absent", tmp_path / "none", world["data"])


# ---------------------------------------------------------------- course wrappers

@pytest.mark.parametrize("path, domain", [
    ("hw2_data/digits/usps/data", "usps"), ("/x/mnistm/data", "mnistm"), ("/x/svhn_test", "svhn"),
    ("/a/mnist/b", "mnist"), ("/x/digits/mnistm_synth/data", "mnistm_synth")])
def test_domain_in_path(path, domain):
    assert course.domain_in_path(path) == domain


def test_domain_in_path_error():
    with pytest.raises(ValueError, match="names no target domain"):
        course.domain_in_path("/tmp/images")


def test_hw2_3_predicts_every_image_of_the_named_target(world, tmp_path):
    out_csv = tmp_path / "sub" / "pred.csv"
    env = {**os.environ, "PYTHON": sys.executable, "DLCV_CHECKPOINTS": str(world["checkpoints"])}
    done = subprocess.run(["bash", str(ROOT / "grading" / "hw2_3.sh"), str(world["data"] / "digits" / "usps" / "data"),
                           str(out_csv)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "uda_vada_mnistm_to_usps" in done.stdout
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "image_name,label" and len(lines) == 41  # every image of the folder


def test_hw2_1_and_hw2_2_write_into_the_folder(world, tmp_path, monkeypatch):
    monkeypatch.setenv("DLCV_CHECKPOINTS", str(world["checkpoints"]))
    monkeypatch.setattr(course, "N_FACES", 10)  # the counts are the course's 1000 in hw_run's test above
    monkeypatch.setattr(course, "PER_CLASS", 3)
    assert course.main(["hw2_1", str(tmp_path / "faces"), "a"]) == 0
    assert len(os.listdir(tmp_path / "faces")) == 10
    assert course.main(["hw2_2", str(tmp_path / "digits")]) == 0
    assert sorted(os.listdir(tmp_path / "digits"))[-1] == "9_003.png"
    assert course.main(["hw2_3", str(tmp_path / "faces"), str(tmp_path / "x.csv")]) == 2  # no domain in the path


# ---------------------------------------------------------------- scorer: a valid submission

def test_score_valid_submission(hw_out, world, tmp_path, fake_fid):
    out = tmp_path / "out"
    shutil.copytree(hw_out, out)
    result = grade(out, world)
    for name in ("gan_a", "gan_b"):
        r = result["faces"][name]
        assert r["status"] == "ok" and r["fid"] == 42.0 and 0.0 <= r["detection_rate"] <= 1.0
    assert fake_fid[0]["reference"].endswith("face/test") and fake_fid[0]["cache_name"].startswith("dlcv_faces_test_")
    assert fake_fid[0]["kid_subset_size"] == 12  # never more than the reference holds
    assert result["faces"]["real_detection_rate"] is not None
    for name in ("acgan", "diffusion"):
        r = result["digits"][name]
        assert r["status"] == "ok" and 0.0 <= r["accuracy"] <= 1.0 and len(r["per_class"]) == 10
    pair = result["adaptation"]["pairs"]["mnistm_to_usps.csv"]
    assert pair["status"] == "ok" and pair["total"] == 10 and pair["checkpoint"] == "uda_vada_mnistm_to_usps"
    report = (out / "report.md").read_text()
    assert "| gan_a | dcgan_faces | 42.00 |" in report
    assert "| mnistm_to_usps | 0.300 | 0.500 | 0.700 (vada) | 0.900 |" in report
    assert "![faces/figures/dcgan_faces/dcgan_faces_grid.png](faces/figures/dcgan_faces/dcgan_faces_grid.png)" in report
    assert "| faces |" in report.split("## Time")[1]


def test_score_same_cache_name_until_reference_changes(world, tmp_path):
    folder = write_faces(tmp_path / "ref", 3)
    first = score.reference_cache_name(folder)
    assert score.reference_cache_name(folder) == first
    write_faces(folder, 4, seed=5)
    assert score.reference_cache_name(folder) != first


# ---------------------------------------------------------------- scorer: broken submissions

def _extra_file(f: Path) -> None:
    (f / "notes.txt").write_text("hi")


def _wrong_size(f: Path) -> None:
    Image.new("RGB", (32, 32)).save(f / "0003.png")


def _grey(f: Path) -> None:
    Image.new("L", (64, 64)).save(f / "0004.png")


def _too_few(f: Path) -> None:
    (f / "0009.png").unlink()


def _corrupt(f: Path) -> None:
    (f / "0002.png").write_bytes(b"not a png")


def _sub_folder(f: Path) -> None:
    (f / "more").mkdir()


@pytest.mark.parametrize("breakage, fragment", [
    (_extra_file, "1 entries are not .png files (notes.txt)"),
    (_wrong_size, "1 images are not 64x64: 0003.png is 32x32"),
    (_grey, "1 images are grey, not RGB: 0004.png (L)"),
    (_too_few, "holds 9 PNG images; exactly 10 are required"),
    (_corrupt, "1 files are not readable images: 0002.png"),
    (_sub_folder, "(more/)"),
])
def test_image_folder_rules(tmp_path, breakage, fragment):
    folder = write_faces(tmp_path / "gan_a", 10)
    score.check_image_folder(folder, 10, 64)  # valid before the breakage
    breakage(folder)
    with pytest.raises(score.Invalid) as err:
        score.check_image_folder(folder, 10, 64)
    assert any(fragment in p for p in err.value.problems), err.value.problems


def test_image_folder_missing_or_a_file(tmp_path):
    with pytest.raises(score.Invalid, match="gan_a/ is missing"):
        score.check_image_folder(tmp_path / "gan_a", 10, 64)
    (tmp_path / "gan_b").write_text("x")
    with pytest.raises(score.Invalid, match="is a file"):
        score.check_image_folder(tmp_path / "gan_b", 10, 64)


def test_digit_folder_names_and_class_counts(tmp_path):
    folder = write_digit_files(tmp_path / "acgan", 2)
    images, names = score.check_image_folder(folder, 20, 28, per_class=2)
    assert images.shape == (20, 28, 28, 3) and names[0] == "0_001.png"
    (folder / "9_002.png").rename(folder / "x_002.png")
    (folder / "0_002.png").rename(folder / "1_003.png")
    with pytest.raises(score.Invalid) as err:
        score.check_image_folder(folder, 20, 28, per_class=2)
    text = " ".join(err.value.problems)
    assert "1 file names do not start with their digit" in text and "x_002.png" in text
    assert "0: 1, 1: 3, 9: 1" in text


TRUTH = {"a.png": 1, "b.png": 2, "c.png": 3}


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b"name,label\na.png,1\n", "header is 'name,label'"),
    (b"image_name,label,score\na.png,1,0.5\n", "must be exactly image_name,label"),
    (b"image_name,label\na.png,1\na.png,2\n", "1 images are listed more than once: a.png (line 3)"),
    (b"image_name,label\na.png,1,7\nb.png\n", "2 malformed rows"),
    (b"\xff\xfe\x00\x01garbage", "is not UTF-8 text"),
])
def test_broken_csv_scores_zero(tmp_path, content, fragment):
    path = tmp_path / "mnistm_to_usps.csv"
    path.write_bytes(content)
    with pytest.raises(score.Invalid) as err:
        score.score_predictions(path, TRUTH)
    assert any(fragment in p for p in err.value.problems), err.value.problems


def test_csv_missing_unknown_and_non_integer_rows_count_wrong(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("image_name,label\na.png,01\nb.png,two\nd.png,4\n")
    result = score.score_predictions(path, TRUTH)
    assert result["correct"] == 1 and result["total"] == 4 and result["accuracy"] == 0.25  # labels as integers
    assert result["missing"] == ["c.png"] and result["unknown"] == ["d.png"]
    assert result["not_integer"] == ["b.png='two'"]


def test_csv_byte_order_mark_and_spaces_are_tolerated(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffimage_name, label\r\na.png, 1\r\nb.png,2\r\nc.png,3\r\n".encode())
    assert score.score_predictions(path, TRUTH)["accuracy"] == 1.0


def test_score_broken_submission_zeroes_only_the_broken_parts(hw_out, world, tmp_path, fake_fid):
    out = tmp_path / "out"
    shutil.copytree(hw_out, out)
    Image.new("L", (64, 64)).save(out / "faces" / "gan_a" / "0000.png")  # grey face
    (out / "digits" / "acgan" / "5_050.png").unlink()  # 999 digits
    csv_path = out / "adaptation" / "mnistm_to_usps.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + [lines[1]]) + "\n")  # a duplicate row
    (out / "adaptation" / "mnistm_to_svhn.csv").write_text("")  # empty CSV of a target without data
    (out / "adaptation" / "weird.csv").write_text("image_name,label\n")
    (out / "adaptation" / "readme.txt").write_text("x")
    result = grade(out, world)
    assert result["faces"]["gan_a"]["status"] == "invalid" and result["faces"]["gan_a"]["score"] == 0.0
    assert result["faces"]["gan_b"]["status"] == "ok" and result["faces"]["gan_b"]["fid"] == 42.0
    assert result["digits"]["acgan"]["score"] == 0.0 and result["digits"]["diffusion"]["status"] == "ok"
    pairs = result["adaptation"]["pairs"]
    assert pairs["mnistm_to_usps.csv"]["score"] == 0.0
    assert "more than once" in pairs["mnistm_to_usps.csv"]["problems"][0]
    assert pairs["mnistm_to_svhn.csv"]["status"] == "incomplete"  # grader-side: no svhn labels in DATA
    assert pairs["weird.csv"]["score"] == 0.0
    report = (out / "report.md").read_text()
    assert "- **faces/gan_a**: 1 images are grey, not RGB: 0000.png (L)" in report
    assert "holds 999 PNG images; exactly 1000 are required" in report
    assert "not CSVs (ignored): readme.txt" in report


def test_score_reports_fid_failures_and_a_missing_classifier(hw_out, world, tmp_path, monkeypatch, fake_fid):
    import dlcv.metrics

    def broken(*args, **kwargs):
        raise RuntimeError("no Inception weights")

    out = tmp_path / "out"
    shutil.copytree(hw_out, out)
    monkeypatch.setattr(dlcv.metrics, "face_scores", broken, raising=False)
    code = score.main([str(out), "--data", str(world["data"]), "--classifier", str(tmp_path / "none.pth")])
    result = json.loads((out / "score.json").read_text())
    assert code == 0 and result["faces"]["gan_a"]["status"] == "incomplete"
    assert "FID/KID not computed: RuntimeError: no Inception weights" in result["faces"]["gan_a"]["notes"][0]
    assert result["faces"]["gan_a"]["detection_rate"] is not None  # the detector still ran
    assert result["digits"]["acgan"]["status"] == "incomplete" and result["digits"]["acgan"]["accuracy"] is None
    monkeypatch.delattr(dlcv.metrics, "face_scores", raising=False)
    result = grade(out, world)
    assert "FID/KID not computed: ImportError" in result["faces"]["gan_b"]["notes"][0]


def test_inception_score_falls_back_to_fid_without_official_weights(world, tmp_path, monkeypatch, fake_fid):
    import dlcv.metrics

    plain = dlcv.metrics.face_scores

    def face_scores(samples, reference, *, isc=False, **kwargs):
        if isc:
            raise ValueError("isc=True needs the Inception logits")
        return plain(samples, reference, **kwargs)

    monkeypatch.setattr(dlcv.metrics, "face_scores", face_scores)
    monkeypatch.setattr(score, "N_IMAGES", 5)
    for name in score.FACE_FOLDERS:
        write_faces(tmp_path / "faces" / name, 5)
    result = score.score_faces(tmp_path, world["data"], isc=True)["gan_a"]
    assert result["status"] == "ok" and result["fid"] == 42.0
    assert result["notes"] == ["IS not computed: ValueError: isc=True needs the Inception logits"]


@pytest.mark.parametrize("manifest", ['{"parts": []}', '{"parts": {"faces": {"entries": [1, {"x": 2}]}}}', "[]"])
def test_score_survives_a_hand_edited_manifest(world, tmp_path, manifest, fake_fid):
    (tmp_path / "manifest.json").write_text(manifest)
    assert grade(tmp_path, world, "--no-fid")["digits"]["acgan"]["status"] == "invalid"


def test_score_an_empty_or_foreign_folder_never_crashes(world, tmp_path, capsys, fake_fid):
    out = tmp_path / "out"
    (out / "faces").mkdir(parents=True)
    (out / "faces" / "gan_a").write_text("a file")
    (out / "manifest.json").write_text("{not json")
    result = grade(out, world, "--no-fid")
    assert result["faces"]["gan_a"]["score"] == 0.0 and result["digits"]["diffusion"]["score"] == 0.0
    assert "manifest.json is unreadable" in result["notes"][0]
    assert "no adaptation/<source>_to_<target>.csv to score" in result["adaptation"]["notes"]
    assert "faces/gan_a" in capsys.readouterr().out
    assert score.main([str(tmp_path / "absent")]) == 2


def test_face_detector_runs_on_64px_images():
    noise = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert score.face_detection_rate(noise) == 0.0  # dlib's HOG detector finds no face in noise


# ---------------------------------------------------------------- real data (slow)

REAL_FACES = ROOT / "data" / "face" / "val"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FACES.is_dir(), reason="needs data/face/val (python -m dlcv data prepare)")
def test_real_faces_detection_rate_and_fid(tmp_path):
    from dlcv.data.faces import read_faces
    from dlcv.metrics import face_scores

    faces = read_faces(ROOT / "data", "val").images[:200]
    assert score.face_detection_rate(faces.permute(0, 2, 3, 1).numpy()) >= 0.85
    for folder, images in (("a", faces[:50]), ("b", faces[50:100])):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / folder / f"{i:04d}.png")
    result = face_scores(str(tmp_path / "a"), str(tmp_path / "b"), kid_subset_size=50)
    assert result["fid"] >= 0 and result["n_samples"] == 50


@pytest.mark.parametrize("entry", [
    {"output": "adaptation/mnistm_to_usps.csv", "status": "ok", "details": {"candidates": ["a", "b"]}},
    {"output": "adaptation/mnistm_to_usps.csv", "status": "ok", "details": {"candidates": {"x": "text"}}},
    {"output": "adaptation/mnistm_to_usps.csv", "status": "ok",
     "details": {"candidates": {"x": {"method": 3, "metrics": [1, 2]}}}},
    {"output": "adaptation/mnistm_to_usps.csv", "status": {"not": "a string"}, "message": [1], "details": "x",
     "checkpoint": 7},
])
def test_score_survives_wrong_types_in_a_manifest(world, tmp_path, entry, fake_fid):
    """A hand-edited manifest: the ill-typed values are dropped with a note, report.md is written."""
    manifest = {"parts": {"adaptation": {"status": "ok", "seconds": "fast", "entries": [entry]},
                          "digits": {"status": 1, "entries": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = grade(tmp_path, world, "--no-fid")
    assert (tmp_path / "report.md").is_file()
    assert any("manifest.json: ignored" in n and "wrong type" in n for n in result["notes"])
    assert "mnistm_to_usps.csv" in result["adaptation"]["pairs"]


def test_hw_run_skips_pairs_whose_data_is_absent(world, tmp_path, monkeypatch, caplog):
    """A data folder with only face/ and digits/{mnistm,usps}: pairs naming mnist are skipped in seconds, exit 0."""
    import logging

    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.classifier import ClassifierConfig

    monkeypatch.setattr(run, "N_FACES", 4)
    monkeypatch.setattr(run, "PER_CLASS", 1)
    monkeypatch.setattr(run, "figures_available", lambda: True)
    monkeypatch.setattr(run, "run_figures_command", fake_figures)
    monkeypatch.setattr(run, "FACE_FIGURE_MODELS", ("dcgan_faces",))
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(world["checkpoints"], checkpoints)
    for source, target in (("mnist", "mnistm"), ("usps", "mnist")):
        checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), checkpoints / f"uda_dann_{source}_to_{target}")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="grading.run"):
        assert run.main([str(out), str(world["data"]), "--checkpoints", str(checkpoints)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    entries = {e["output"]: e for p in manifest["parts"].values() for e in p["entries"]}
    assert manifest["status"] == "ok" and manifest["data_found"] == {"face": True, "digits": ["mnistm", "usps"]}
    assert entries["adaptation/usps_to_mnist.csv"]["status"] == "skipped"
    assert entries["adaptation/usps_to_mnist.csv"]["message"] == "skipped (no mnist data)"
    assert entries["adaptation/figures/uda_dann_mnist_to_mnistm"]["message"] == "skipped (no mnist data)"
    assert entries["adaptation/mnist_to_mnistm.csv"]["status"] == "ok"  # the target's images are there
    assert entries["adaptation/mnistm_to_usps.csv"]["status"] == "ok"
    assert all(e["seconds"] < 1 for e in entries.values() if e["status"] == "skipped")
    assert caplog.text.count("uda_dann_mnist_to_mnistm ...") == 1  # one progress line per entry, no duplicate
