"""The command line: presets in --help, train with overrides, eval, and one-line errors."""

import pytest
import torch

from dlcv.cli import main
from dlcv.models.classifier import Classifier, ClassifierConfig
from dlcv.presets import PRESETS


def test_help_lists_presets(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)


def test_train_then_eval(tiny_digits, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    code = main(["train", "classifier_digits", f"--data.root={tiny_digits}", f"--train.out_dir={tmp_path}/runs",
                 "--train.steps=2", "--train.batch_size=4", "--model.width=4", "--train.progress=false",
                 "--out", str(ckpt)])
    assert code == 0 and (ckpt / "model.safetensors").is_file()
    assert main(["eval", str(ckpt), "--data", str(tiny_digits), "--domain", "usps", "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "digits/usps/val: accuracy" in out and "on 20 images" in out


def test_eval_course_classifier_file(tiny_digits, tmp_path, capsys):
    path = tmp_path / "Classifier.pth"
    torch.save({"state_dict": Classifier(ClassifierConfig(kind="lenet")).state_dict()}, path)
    assert main(["eval", str(path), "--data", str(tiny_digits), "--split", "test", "--json"]) == 0
    assert '"n": 20' in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["train", "no_such_preset"], "unknown preset 'no_such_preset'"),
    (["train", "classifier_digits", "--train.nope=1"], "unknown override key 'train.nope'"),
    (["eval", "/no/such/ckpt"], "/no/such/ckpt does not exist; give a checkpoint folder"),
])
def test_errors_are_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_print_config(capsys):
    assert main(["train", "smiling_classifier", "--train.lr=0.5", "--print-config"]) == 0
    assert '"lr": 0.5' in capsys.readouterr().out


def test_a_reader_that_stops_early_is_not_an_error():
    # `dlcv ... | head`: the pipe closes before the command writes; no "error: Broken pipe" line
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "dlcv", "sampling-config", str(root / "checkpoints" / "ddpm_digits"),
                             "--show"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 1) and b"error" not in err
