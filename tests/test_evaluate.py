"""dlcv.evaluate and `python -m dlcv evaluate`: each family's metrics on tiny checkpoints and data made here, recorded
through the schema (FID faked: Inception on a CPU is too slow for fast tests)."""

from __future__ import annotations

import json

import pytest
import torch

from dlcv import checkpoint, cli, metadata
from dlcv.evaluate import EvalOptions, evaluate, record
from dlcv.models import build_model
from dlcv.models.gan import GeneratorConfig
from dlcv.models.uda import UDANetConfig
from dlcv.models.vae import VAEConfig

QUIET = EvalOptions(progress=False)


def test_uda_target_accuracy_is_measured_and_merged_with_training_metrics(tiny_digits, tmp_path, capsys):
    run = {"data": {"dataset": "digits", "domain": "mnistm", "target_domain": "usps"}}
    folder = checkpoint.save(build_model("uda_net", UDANetConfig(width=4)), tmp_path / "uda_dann_mnistm_to_usps",
                             {"metrics": {"method": "dann", "steps": 3, "target_test_acc": 0.0}})
    document = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**document, "run": run}))
    metrics = evaluate(folder, tiny_digits, QUIET)
    assert metrics["source"] == "mnistm" and metrics["target"] == "usps"
    assert 0 <= metrics["target_test_acc"] <= 1 and 0 <= metrics["target_val_acc"] <= 1
    assert cli.main(["evaluate", str(folder), "--data", str(tiny_digits), "--record", "--no-progress"]) == 0
    recorded = checkpoint.read_config(folder)["metrics"]
    assert recorded["target_test_acc"] == metrics["target_test_acc"] and recorded["steps"] == 3  # merged
    assert '"target_test_acc"' in capsys.readouterr().out


def test_vae_mse_with_its_protocol(tiny_faces, tmp_path):
    folder = checkpoint.save(build_model("vae", VAEConfig(image_size=64, channels=3, latent_dim=8, width=4)),
                             tmp_path / "vae")
    metrics = evaluate(folder, tiny_faces, QUIET)
    assert 0 < metrics["val_mse"] < 1 and "test_mse" not in metrics  # tiny_faces has no test split
    assert metrics["protocol"] == {"samples": 4, "reference": "face/val", "seed": 0, "judge": ""}
    record(folder, metrics)
    assert checkpoint.read_config(folder)["metrics"] == metrics


def test_face_gan_fid_and_another_seed_goes_to_other_seeds(tiny_faces, tmp_path, monkeypatch):
    import dlcv.metrics

    calls = []

    def face_scores(samples, reference, **kwargs):
        calls.append((str(reference), len(list(samples.iterdir()))))
        return {"fid": 40.0 + len(calls), "kid_mean": 0.01, "kid_std": 0.001}

    monkeypatch.setattr(dlcv.metrics, "face_scores", face_scores)
    folder = checkpoint.save(build_model("generator", GeneratorConfig(z_dim=8, image_size=64, width=4)),
                             tmp_path / "gan")
    first = evaluate(folder, tiny_faces, EvalOptions(samples=6, progress=False))
    assert calls == [(str(tiny_faces / "face" / "val"), 6)]
    assert first == {"fid": 41.0, "kid_mean": 0.01, "kid_std": 0.001,
                     "protocol": {"samples": 6, "reference": "face/val", "seed": 0, "judge": ""}}
    record(folder, first)
    record(folder, evaluate(folder, tiny_faces, EvalOptions(samples=6, seed=1000, progress=False)))
    recorded = checkpoint.read_config(folder)["metrics"]
    assert recorded["fid"] == 41.0 and recorded["other_seeds"] == {"1000": {"fid": 42.0, "kid_mean": 0.01,
                                                                             "kid_std": 0.001}}


def test_digit_generator_accuracy_by_the_course_classifier(tiny_digits, tmp_path):
    from dlcv.models.classifier import Classifier, ClassifierConfig

    classifier = tmp_path / "Classifier.pth"
    torch.save({"state_dict": Classifier(ClassifierConfig(kind="lenet")).state_dict()}, classifier)
    folder = checkpoint.save(build_model("generator", GeneratorConfig(z_dim=8, image_size=28, width=4,
                                                                      num_classes=10)), tmp_path / "acgan")
    metrics = evaluate(folder, tiny_digits, EvalOptions(samples=20, course_classifier=str(classifier),
                                                        progress=False))
    assert 0 <= metrics["digit_accuracy"] <= 1 and len(metrics["per_class_accuracy"]) == 10
    assert metrics["protocol"]["judge"] == "course_classifier" and metrics["protocol"]["samples"] == 20
    metadata.check_metrics("generator", metrics)
    with pytest.raises(ValueError, match="diffusion checkpoints only"):
        evaluate(folder, tiny_digits, EvalOptions(samples=20, course_classifier=str(classifier), progress=False,
                                                  sampling=["--sampling.guidance=1"]))


def test_evaluate_reports_missing_data_in_one_line(tmp_path, capsys):
    folder = checkpoint.save(build_model("vae", VAEConfig(image_size=64, channels=3, latent_dim=8, width=4)),
                             tmp_path / "vae")
    assert cli.main(["evaluate", str(folder), "--data", str(tmp_path / "nothing"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no faces under") and "\n" not in err
