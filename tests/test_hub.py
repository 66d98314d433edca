"""Checkpoints: save -> load gives identical outputs; strict shape checks; the course classifier loader."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dlcv import checkpoint, hub
from dlcv.models.classifier import Classifier, ClassifierConfig


def test_round_trip_identical_outputs(tmp_ckpt, tiny_images):
    from dlcv.data.loaders import to_model_range

    model, meta = checkpoint.load(tmp_ckpt)
    again, _ = checkpoint.load(tmp_ckpt)
    x = to_model_range(tiny_images)
    assert torch.equal(model(x), again(x))
    assert meta["architecture"] == "classifier" and meta["metrics"] == {"val_accuracy": 0.5}
    assert sorted(p.name for p in tmp_ckpt.iterdir()) == ["config.json", "model.safetensors"]


def test_save_overwrites_atomically(tmp_ckpt):
    first = checkpoint.weights_sha256(tmp_ckpt)
    checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_ckpt)
    assert checkpoint.weights_sha256(tmp_ckpt) != first
    assert not [p for p in tmp_ckpt.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_save_never_deletes_other_files(tmp_path):
    folder = tmp_path / "runs"
    (folder / "run").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"holds other files \(notes.txt, run\).*new or empty folder"):
        checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), folder)
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "run").is_dir()


def test_shape_mismatch_is_a_clear_error(tmp_ckpt):
    document = json.loads((tmp_ckpt / "config.json").read_text())
    document["config"]["width"] = 8  # weights were saved with width 4
    (tmp_ckpt / "config.json").write_text(json.dumps(document))
    with pytest.raises(checkpoint.CheckpointError, match="shape mismatch"):
        checkpoint.load(tmp_ckpt)


def test_missing_and_unexpected_keys(tmp_ckpt):
    state = Classifier(ClassifierConfig(kind="convnet", width=4)).state_dict()
    state.pop("head.1.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_ckpt / "model.safetensors"))
    with pytest.raises(checkpoint.CheckpointError, match=r"missing \['head.1.bias'\].*unexpected \['extra.weight'\]"):
        checkpoint.load(tmp_ckpt)


@pytest.mark.parametrize("breakage, fragment", [
    (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 10), "not a readable safetensors"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors not found"),
    (lambda d: (d / "config.json").write_text("{"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text('{"format": 99}'), "format 99"),
    (lambda d: (d / "config.json").write_text('{"format": 1, "architecture": "nope", "config": {}}'), "nope"),
])
def test_broken_checkpoints_name_the_file(tmp_ckpt, breakage, fragment):
    breakage(tmp_ckpt)
    with pytest.raises(checkpoint.CheckpointError, match=fragment):
        checkpoint.load(tmp_ckpt)


def test_course_classifier_loader(tmp_path):
    model = Classifier(ClassifierConfig(kind="lenet"))
    path = tmp_path / "Classifier.pth"
    torch.save({"state_dict": model.state_dict(), "optimizer": {}}, path)
    loaded = checkpoint.load_course_classifier(path)
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_course_classifier_loader_rejects_wrong_shapes(tmp_path):
    state = Classifier(ClassifierConfig(kind="lenet")).state_dict()
    state["fc3.weight"] = torch.zeros(5, 64)
    path = tmp_path / "Classifier.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"fc3.weight: file \(5, 64\) vs model \(10, 64\)"):
        checkpoint.load_course_classifier(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a loadable torch checkpoint"):
        checkpoint.load_course_classifier(tmp_path / "junk.pth")


def test_average_is_the_mean_of_the_weights(tmp_path):
    torch.manual_seed(0)
    a = checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "a", {"metrics": {"val_accuracy": 1.0}})
    b = checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "b",
                 {"run": {"name": "r"}, "trained_steps": 7, "metrics": {"val_accuracy": 0.5}})
    out = checkpoint.average([a, b], tmp_path / "avg")
    (ma, _), (mb, _), (mean, meta) = checkpoint.load(a), checkpoint.load(b), checkpoint.load(out)
    for key, value in mean.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (ma.state_dict()[key] + mb.state_dict()[key]) / 2)
        else:
            assert torch.equal(value, mb.state_dict()[key])
    assert meta["run"] == {"name": "r"} and meta["trained_steps"] == 7
    assert "metrics" not in meta and meta["averaged_from"] == [str(a), str(b)]
    card = hub.model_card(out)  # the Hub card says what the weights are: an average, and of what
    assert "- trained steps: 7" in card
    assert (f"- weights: the uniform average of 2 checkpoints of this run (`python -m dlcv average`): `{a}`; `{b}`"
            in card)


def test_average_refuses_checkpoints_of_other_configs(tmp_path):
    a = checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "a")
    b = checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=8)), tmp_path / "b")
    with pytest.raises(checkpoint.CheckpointError, match="average snapshots of one run only"):
        checkpoint.average([a, b], tmp_path / "avg")
    with pytest.raises(ValueError, match="at least two"):
        checkpoint.average([a], tmp_path / "avg")
    assert not (tmp_path / "avg").exists()
