"""Bad input never loses data: each command refuses, in one line, a destination whose files it would delete or
overwrite, and values it could not use (found by trying each command's wrong inputs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dlcv.cli import main
from dlcv.config import apply_overrides
from dlcv.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints"


def one_line_error(capsys, fragment: str) -> str:
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("override, fragment", [
    ("--name=..", "is not a plain run name"),
    ("--name=a/b", "is not a plain run name"),
    ("--train.betas=0.9", "must be two numbers in [0, 1)"),
    ("--train.betas=0.9,0.99,0.5", "must be two numbers in [0, 1)"),
    ("--train.lr=-1", "train.lr=-1.0 must be a positive number"),
    ("--model.width=0", "model.width=0 must be at least 1"),
])
def test_run_config_refuses_values_it_cannot_use(override, fragment, capsys):
    with pytest.raises(ValueError, match="must|plain run name"):
        apply_overrides(get_preset("classifier_digits"), [override])
    assert main(["train", "classifier_digits", override, "--print-config"]) == 2
    one_line_error(capsys, fragment)


def test_fresh_empties_only_a_run_folder(tiny_digits, tmp_path, capsys):
    folder = tmp_path / "runs" / "mine"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    argv = ["train", "classifier_digits", f"--data.root={tiny_digits}", f"--train.out_dir={tmp_path / 'runs'}",
            "--name=mine", "--train.steps=1", "--train.batch_size=4", "--model.width=4", "--train.progress=false",
            "--fresh"]
    assert main(argv) == 2
    one_line_error(capsys, "is not a run folder")
    assert (folder / "notes.txt").read_text() == "keep me"
    (folder / "notes.txt").unlink()
    assert main(argv) == 0 and (folder / "metrics.jsonl").is_file()  # an empty folder, then a run's: emptied
    assert main(argv) == 0


def test_a_checkpoint_is_never_replaced_by_another_kind_of_model(tmp_path, capsys):
    gan = tmp_path / "gan"
    shutil.copytree(SHIPPED / "dcgan_faces", gan)
    before = (gan / "model.safetensors").read_bytes()
    assert main(["export", str(SHIPPED / "classifier_digits_mnistm"), "--out", str(gan)]) == 2
    one_line_error(capsys, "holds a generator checkpoint, which a classifier would replace")
    assert (gan / "model.safetensors").read_bytes() == before
    assert main(["export", str(SHIPPED / "dcgan_faces"), "--out", str(gan)]) == 0  # the same kind: replaced


def test_predictions_never_overwrite_another_file(tmp_path, capsys):
    images = tmp_path / "usps" / "data"
    images.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("L", (28, 28), color=i * 40).save(images / f"{i:05d}.png")
    labels = tmp_path / "usps" / "test.csv"
    labels.write_text("image_name,label\n00000.png,1\n")
    clf = str(SHIPPED / "classifier_digits_mnistm")
    for target, fragment in [(images / "00001.png", "is not a predictions CSV"),
                             (labels, "is the label file of a digits domain")]:
        before = target.read_bytes()
        assert main(["predict", clf, "--images", str(images), "--out", str(target)]) == 2
        one_line_error(capsys, fragment)
        assert target.read_bytes() == before
    other = tmp_path / "mnistm"  # another domain's label file is refused too
    (other / "data").mkdir(parents=True)
    (other / "val.csv").write_text("image_name,label\n00000.png,1\n")
    assert main(["predict", clf, "--images", str(images), "--out", str(other / "val.csv")]) == 2
    one_line_error(capsys, "is the label file of a digits domain")
    out = tmp_path / "pred.csv"
    out.touch()  # an empty file (made by a harness beforehand) is replaced
    assert main(["predict", clf, "--images", str(images), "--out", str(out)]) == 0
    assert main(["predict", clf, "--images", str(images), "--out", str(out)]) == 0  # an earlier prediction: replaced


def test_sample_force_replaces_only_a_folder_of_images(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    gan = str(SHIPPED / "dcgan_faces")
    assert main(["sample", gan, "--n", "2", "--out", str(out), "--force"]) == 2
    one_line_error(capsys, "which are not images this would write")
    assert (out / "notes.txt").read_text() == "keep me" and (out / "sub").is_dir()
    copy = tmp_path / "ckpt"
    shutil.copytree(SHIPPED / "dcgan_faces", copy)
    assert main(["sample", str(copy), "--n", "2", "--out", str(copy), "--force"]) == 2  # its own checkpoint
    one_line_error(capsys, "config.json, model.safetensors, which are not images this would write")
    assert (copy / "model.safetensors").is_file()
    (out / "notes.txt").unlink()
    (out / "sub").rmdir()
    (out / ".DS_Store").write_text("")  # hidden files and earlier images: replaced
    assert main(["sample", gan, "--n", "2", "--out", str(out), "--force"]) == 0
    assert main(["sample", gan, "--n", "2", "--out", str(out), "--force"]) == 0


def test_sampling_values_a_checkpoint_cannot_use_are_refused_before_writing(tmp_path, capsys):
    ddpm, clf = tmp_path / "ddpm", tmp_path / "clf"
    shutil.copytree(SHIPPED / "ddpm_digits", ddpm)
    shutil.copytree(SHIPPED / "classifier_digits_mnistm", clf)
    for folder, item, fragment in [(ddpm, "--sampling.guidance=nan", "sampling.guidance=nan must be a finite number"),
                                   (ddpm, "--sampling.steps=5000", "must be between 1 and"),
                                   (ddpm, "--sampling.guidance_interval=900,100", "0 <= LO <= HI"),
                                   (ddpm, "--sampling.guidance_interval=100,1500", "within the schedule's timesteps"),
                                   (clf, "--sampling.steps=3", "a classifier checkpoint does not use it")]:
        before = (folder / "config.json").read_bytes()
        assert main(["sampling-config", str(folder), item]) == 2
        one_line_error(capsys, fragment)
        assert (folder / "config.json").read_bytes() == before


@pytest.mark.parametrize("samples, fragment", [("0", "--samples must be at least 1"),
                                               ("3", "does not split evenly over the model's 10 classes")])
def test_evaluate_refuses_a_sample_count_it_cannot_split(samples, fragment, tmp_path, capsys):
    assert main(["evaluate", str(SHIPPED / "ddpm_digits"), "--data", str(tmp_path), "--samples", samples]) == 2
    one_line_error(capsys, fragment)


def test_evaluate_that_measures_nothing_records_nothing(tmp_path, capsys):
    clf = tmp_path / "clf"
    shutil.copytree(SHIPPED / "classifier_digits_mnistm", clf)
    before = (clf / "config.json").read_bytes()
    assert main(["evaluate", str(clf), "--data", str(tmp_path / "empty"), "--record", "--no-progress"]) == 2
    one_line_error(capsys, "nothing measured")
    assert (clf / "config.json").read_bytes() == before


def test_scorer_leaves_a_folder_that_is_not_an_output_alone(tmp_path):
    folder = tmp_path / "hw"
    folder.mkdir()
    (folder / "report.md").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "grading.score", str(folder), "--no-fid"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds none of manifest.json" in done.stderr
    assert (folder / "report.md").read_text() == "mine" and not (folder / "score.json").exists()


def test_hw_run_refuses_a_data_root_that_does_not_exist(tmp_path, capsys):
    from grading import run

    assert run.main([str(tmp_path / "out"), str(tmp_path / "nope"), "--parts", "adaptation"]) == 2
    one_line_error(capsys, "DATA_DIR " + str(tmp_path / "nope") + " is not a folder")
    assert not (tmp_path / "out").exists()


def test_fresh_empties_a_run_that_stopped_in_its_first_steps(tiny_run_cfg):
    from dlcv.training import train
    from dlcv.training.common import run_dir

    folder = run_dir(tiny_run_cfg)
    (folder / "tensorboard").mkdir(parents=True)  # all a run killed before its first log point leaves
    (folder / "tensorboard" / "events.out").write_text("x")
    train(tiny_run_cfg, fresh=True)
    assert not (folder / "tensorboard" / "events.out").exists() and (folder / "metrics.jsonl").is_file()


def test_ddpm_sampling_runs_every_timestep_whatever_steps_says(tmp_path, capsys):
    ddpm = tmp_path / "ddpm"
    shutil.copytree(SHIPPED / "ddpm_digits", ddpm)
    assert main(["sampling-config", str(ddpm), "--show", "--sampling.sampler=ddpm", "--sampling.steps=1000"]) == 0
    assert main(["sampling-config", str(ddpm), "--show", "--sampling.sampler=ddim", "--sampling.steps=1000"]) == 0
    assert main(["sampling-config", str(ddpm), "--show", "--sampling.sampler=dpm++2m", "--sampling.steps=1000"]) == 2
    one_line_error(capsys, "must be between 1 and 999 for sampler dpm++2m")


def test_eval_refuses_an_attribute_the_classifier_was_not_trained_on(capsys):
    assert main(["eval", str(SHIPPED / "smiling_classifier"), "--attribute", "Male", "--split", "val"]) == 2
    one_line_error(capsys, "classifies the face attribute Smiling, not Male; pass --attribute Smiling")


def test_figures_refuse_an_attribute_the_faces_do_not_carry(tiny_faces, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", str(SHIPPED / "vae_faces"), "--out", str(out), "--data", str(tiny_faces),
                 "--attribute", "Nope"]) == 2
    one_line_error(capsys, "--attribute 'Nope': the val faces carry no such attribute")
    assert not out.exists() or not any(out.iterdir())


def test_figures_refuse_a_metrics_file_that_is_not_a_run_log(tmp_path, capsys):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    out = tmp_path / "figs"
    assert main(["figures", str(SHIPPED / "dcgan_faces"), "--out", str(out), "--metrics", str(bad)]) == 2
    one_line_error(capsys, "line 2 is not a JSON object")
    assert not out.exists()


def test_a_device_torch_does_not_run_on_is_named(capsys):
    from dlcv.runtime import pick_device

    for name in ("tpu", "cuda:x"):
        with pytest.raises(ValueError, match="use auto, cpu, cuda, cuda:N or mps"):
            pick_device(name)
    with pytest.raises(SystemExit):
        main(["data", "prepare", "--synth-mnistm", "-5"])
    assert "-5 is negative; give 0 or more" in capsys.readouterr().err


def test_evaluate_checks_sampling_options_before_any_work(tmp_path, capsys):
    argv = ["evaluate", str(SHIPPED / "ddpm_digits"), "--data", str(tmp_path), "--classifier", str(tmp_path / "none")]
    assert main([*argv, "--sampling.steps=5000"]) == 2  # refused before the (missing) classifier is looked for
    one_line_error(capsys, "sampling.steps=5000 must be between 1 and")
    assert main(["evaluate", str(SHIPPED / "vae_faces"), "--sampling.guidance=3"]) == 2
    one_line_error(capsys, "drop them for a vae checkpoint")


def test_hw_run_force_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    from grading import run

    root = tmp_path / "data"  # a data root given as OUT_DIR by mistake: its digits/ is not an output
    (root / "digits" / "usps").mkdir(parents=True)
    (root / "digits" / "usps" / "test.csv").write_text("image_name,label\n")
    assert run.main([str(root), "--force", "--parts", "digits", "--checkpoints", str(tmp_path / "none")]) == 2
    one_line_error(capsys, "which its manifest.json does not record as written by hw_run.sh")
    assert (root / "digits" / "usps" / "test.csv").is_file()
