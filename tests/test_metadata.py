"""dlcv.metadata: typed metrics per family (checked on save and load), SamplingConfig read through one function and
written by `python -m dlcv sampling-config` / `export`, and every shipped checkpoint's rebuild commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dlcv import checkpoint, cli, metadata
from dlcv.models import build_model
from dlcv.models.classifier import ClassifierConfig
from dlcv.models.gan import GeneratorConfig
from dlcv.models.unet import UNetConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file())


def tiny_generator() -> object:
    return build_model("generator", GeneratorConfig(z_dim=8, image_size=28, width=4, num_classes=10))


def test_save_refuses_a_metric_outside_the_familys_schema(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="unknown key.*'x'.*valid keys"):
        checkpoint.save(tiny_generator(), tmp_path / "a", {"metrics": {"x": 1}})
    with pytest.raises(checkpoint.CheckpointError, match="fid='low' must be a float"):
        checkpoint.save(tiny_generator(), tmp_path / "b", {"metrics": {"fid": "low"}})
    with pytest.raises(checkpoint.CheckpointError, match="val_accuracy"):  # a classifier metric on a generator
        checkpoint.save(tiny_generator(), tmp_path / "c", {"metrics": {"val_accuracy": 0.5}})
    assert not (tmp_path / "a").exists()  # nothing written


def test_load_refuses_a_hand_edited_metric_and_names_the_fix(tmp_path):
    folder = checkpoint.save(tiny_generator(), tmp_path / "g", {"metrics": {"digit_accuracy": 0.9}})
    document = json.loads((folder / "config.json").read_text())
    document["metrics"]["protocol"] = {"samples": "many"}
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(checkpoint.CheckpointError, match=r"protocol.samples='many' must be a int.*evaluate"):
        checkpoint.load(folder)


def test_legacy_metrics_are_read_in_the_schema():
    legacy = {"architecture": "generator", "metrics": {
        "accuracy": 0.9, "smiling_agreement": 0.8, "training": "prose", "other_seeds": {"1": {"smiling_agreement": 0.7}},
        "accuracy_other_seeds": {"2": 0.95}}, "sampling": {"guidance": 3.0, "chosen_by": "prose"}}
    upgraded = metadata.upgrade(legacy)
    assert upgraded["metrics"] == {"digit_accuracy": 0.9, "attribute_agreement": 0.8,
                                   "other_seeds": {"2": {"digit_accuracy": 0.95}}}
    assert upgraded["sampling"] == {"guidance": 3.0}
    metadata.check_document(upgraded)
    assert metadata.upgrade(upgraded) == upgraded


def test_update_metrics_goes_through_the_schema(tmp_ckpt):
    checkpoint.update_metrics(tmp_ckpt, {"test_accuracy": 0.25})
    assert checkpoint.read_config(tmp_ckpt)["metrics"] == {"val_accuracy": 0.5, "test_accuracy": 0.25}
    with pytest.raises(checkpoint.CheckpointError, match="unknown key"):
        checkpoint.update_metrics(tmp_ckpt, {"fid": 3.0})
    assert checkpoint.read_config(tmp_ckpt)["metrics"] == {"val_accuracy": 0.5, "test_accuracy": 0.25}


def test_sampling_config_is_the_one_resolver():
    assert metadata.sampling_config({}) == metadata.SamplingConfig()
    document = {"sampling": {"sampler": "ddim", "steps": 20, "guidance": 4.0, "uncond_every": 2}}
    resolved = metadata.sampling_config(document, steps=None, guidance=0.0, guidance_interval=[10, 20])
    assert (resolved.steps, resolved.guidance, resolved.uncond_every) == (20, 0.0, 2)  # 0.0 is a value, None unset
    assert resolved.guidance_interval == (10, 20)
    with pytest.raises(metadata.MetadataError, match="sampler='euler'; choose from"):
        metadata.sampling_config({"sampling": {"sampler": "euler"}})
    with pytest.raises(metadata.MetadataError, match="unknown sampling key 'w'"):
        metadata.parse_sampling_overrides(["--sampling.w=4"])


def test_sampling_config_command_writes_the_block_and_records_itself(tmp_path, capsys):
    unet = build_model("unet", UNetConfig(base_width=4, channel_mults=(1,), attention_levels=(), dropout=0.0))
    folder = checkpoint.save(unet, tmp_path / "ddpm", {
        "schedule": {"num_timesteps": 20, "kind": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        "rebuild": ["python -m dlcv train ddpm_digits --out x"]})
    # the default 50 steps do not fit this model's 20-step schedule: refused, then set
    assert cli.main(["sampling-config", str(folder), "--sampling.guidance=4", "--sampling.uncond_every=2"]) == 2
    assert "sampling.steps=50 must be between 1 and 20" in capsys.readouterr().err
    assert cli.main(["sampling-config", str(folder), "--sampling.guidance=4", "--sampling.uncond_every=2",
                     "--sampling.steps=20"]) == 0
    document = checkpoint.read_config(folder)
    assert document["sampling"]["guidance"] == 4.0 and document["sampling"]["uncond_every"] == 2
    assert document["rebuild"][-1] == (f"python -m dlcv sampling-config {folder} --sampling.guidance=4 "
                                       f"--sampling.uncond_every=2 --sampling.steps=20")
    assert cli.main(["export", str(folder), "--out", str(tmp_path / "copy"), "--sampling.steps=10"]) == 0
    copy = checkpoint.read_config(tmp_path / "copy")
    assert copy["sampling"]["steps"] == 10 and copy["sampling"]["guidance"] == 4.0
    assert copy["rebuild"][:2] == document["rebuild"] and copy["rebuild"][2].startswith("python -m dlcv export ")
    assert cli.main(["sampling-config", str(folder), "--sampling.sampler=euler"]) == 2
    assert "choose from" in capsys.readouterr().err
    # a combination the sampler refuses is refused before anything is written: the checkpoint keeps sampling
    before = (folder / "config.json").read_bytes()
    assert cli.main(["sampling-config", str(folder), "--sampling.sampler=dpm++2m"]) == 2  # uncond_every is 2 here
    assert "does not work with sampler dpm++2m" in capsys.readouterr().err
    assert cli.main(["sampling-config", str(folder), "--sampling.eta=0.5", "--sampling.uncond_every=1",
                     "--sampling.sampler=dpm++2m"]) == 2
    assert "applies to sampler ddim only" in capsys.readouterr().err
    assert (folder / "config.json").read_bytes() == before


def test_average_records_its_command(tmp_path):
    a = checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), tmp_path / "a")
    b = checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), tmp_path / "b",
                        {"rebuild": ["python -m dlcv train classifier_digits --out b"]})
    document = checkpoint.read_config(checkpoint.average([a, b], tmp_path / "avg"))
    assert document["rebuild"] == ["python -m dlcv train classifier_digits --out b",
                                   f"python -m dlcv average {a} {b} --out {tmp_path / 'avg'}"]


@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_fits_the_schema_and_its_rebuild_commands_resolve(folder):
    """Each recorded command parses with `python -m dlcv`'s argparse, and its preset + overrides resolve to the
    recorded run config (where it ran and its wall-clock limit aside)."""
    raw = json.loads((folder / "config.json").read_text())
    assert metadata.upgrade(raw) == raw  # stored in the schema, not upgraded on read
    metadata.check_document(raw, str(folder))
    assert metadata.check_rebuild(raw) == []


def test_docs_models_lists_every_shipped_checkpoint_with_its_rebuild_commands():
    text = (ROOT / "docs" / "models.md").read_text()
    for folder in SHIPPED:
        assert f"## {folder.name}\n" in text
        for command in checkpoint.read_config(folder)["rebuild"]:
            assert command in text, f"{folder.name}: {command}"


def test_check_rebuild_catches_a_command_that_does_not_rebuild(tmp_path):
    document = json.loads((ROOT / "checkpoints" / "ddpm_digits" / "config.json").read_text())
    document["rebuild"] = ["python -m dlcv train ddpm_digits --model.base_width=32 --out x"]
    problems = metadata.check_rebuild(document)
    assert any(p.startswith("model.base_width: recorded 16") for p in problems)
    assert any("train.steps" in p for p in problems)  # the preset's 8000 steps, the checkpoint's 12000
    document["rebuild"] = ["python -m dlcv average --out x"]
    assert metadata.check_rebuild(document)


def test_check_rebuild_accepts_auto_input_norm_recorded_as_what_it_resolved_to():
    document = json.loads((ROOT / "checkpoints" / "uda_assoc_usps_to_mnist" / "config.json").read_text())
    assert document["run"]["model"]["input_norm"] == "instance"
    command = " ".join(w for w in document["rebuild"][0].split() if not w.startswith("--model.input_norm="))
    document["rebuild"] = [command + " --model.input_norm=auto"]
    assert metadata.check_rebuild(document) == []
    document["rebuild"] = [command + " --model.input_norm=grey"]
    assert metadata.check_rebuild(document) == ["model.input_norm: recorded 'instance', the command gives 'grey'"]


def test_training_command_is_recorded(tiny_run_cfg, tmp_path, monkeypatch):
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    overrides = [f"--data.root={tiny_run_cfg.data.root}", f"--train.out_dir={tmp_path / 'runs'}", "--train.steps=1",
                 "--train.batch_size=4", "--model.width=4", "--train.eval_every=1", "--train.progress=false"]
    out = tmp_path / "ckpt"
    assert cli.main(["train", "classifier_digits", *overrides, "--out", str(out)]) == 0
    document = checkpoint.read_config(out)
    assert document["rebuild"] == [metadata.train_command("classifier_digits", overrides, str(out))]
    assert metadata.check_rebuild(document) == []
    # the run records every method option, those the preset leaves at their default too, so a default changed
    # later no longer matches the record
    assert document["run"]["method"] == {"label_smoothing": 0.0}
    document["run"]["method"]["label_smoothing"] = 0.1
    assert metadata.check_rebuild(document) == ["method.label_smoothing: recorded 0.1, the command gives 0.0"]


def test_a_refinement_records_the_commands_that_built_its_starting_checkpoint(tiny_digits, tmp_path):
    """`train uda_refine --method.init=X` lists X's own rebuild commands first (and the copy that put X where it is),
    so the shipped refinement is rebuilt from scratch; check_rebuild refuses a start that no command writes."""
    tiny = [f"--data.root={tiny_digits}", "--data.domain=mnistm", "--data.target_domain=usps",
            f"--train.out_dir={tmp_path / 'runs'}", "--train.steps=1", "--train.batch_size=8", "--model.width=8",
            "--train.eval_every=1", "--train.progress=false"]
    dann, copied, refined = tmp_path / "dann", tmp_path / "copied", tmp_path / "refined"
    assert cli.main(["train", "uda_dann", "--name=d", *tiny, "--out", str(dann)]) == 0
    shutil.copytree(dann, copied)
    refine = ["--name=r", *tiny, f"--method.init={copied}"]
    assert cli.main(["train", "uda_refine", *refine, "--out", str(refined)]) == 0
    document = checkpoint.read_config(refined)
    assert document["rebuild"] == [metadata.train_command("uda_dann", ["--name=d", *tiny], str(dann)),
                                   metadata.command_of(["export", str(dann), "--out", str(copied)]),
                                   metadata.train_command("uda_refine", refine, str(refined))]
    assert metadata.check_rebuild(document) == []
    document["rebuild"] = document["rebuild"][2:]  # the refinement alone
    assert metadata.check_rebuild(document) == [
        f"method.init={copied}: no earlier rebuild command writes it; record the command that trains it "
        f"(--out {copied}) first"]
