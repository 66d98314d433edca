"""Training loops: 2 steps on fake data write a loadable checkpoint; resume continues; seeds repeat."""

import json
import shutil

import pytest
import torch

from dlcv import checkpoint
from dlcv.config import apply_overrides
from dlcv.fileio import atomic_dir
from dlcv.training import train
from dlcv.training.common import STATE_NAME, run_dir


def test_two_steps_write_a_loadable_checkpoint(tiny_run_cfg, tmp_path):
    out = train(tiny_run_cfg, out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
    assert set(meta["metrics"]) >= {"val_accuracy", "test_accuracy", "best_step"}
    assert meta["run"]["train"]["steps"] == 2 and meta["run"]["train"]["seed"] == 0
    lines = [json.loads(line) for line in (run_dir(tiny_run_cfg) / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines)


def test_resume_continues_from_the_last_state(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    assert torch.load(run_dir(tiny_run_cfg) / STATE_NAME, weights_only=True)["step"] == 2
    longer = apply_overrides(tiny_run_cfg, ["--train.steps=4"])
    train(longer, out=tmp_path / "b")
    steps = [json.loads(line)["step"] for line in (run_dir(longer) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 were not redone


def test_resume_drops_the_log_lines_of_the_steps_it_trains_again(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    log = run_dir(tiny_run_cfg) / "metrics.jsonl"
    with open(log, "a") as f:  # the process logged steps 3-4 past its last state at step 2, then died mid-line
        f.write(json.dumps({"step": 3, "time_s": 0.5, "loss": 9.0}) + "\n")
        f.write(json.dumps({"step": 4, "time_s": 0.6, "loss": 9.0}) + "\n" + '{"step": 5, "ti')
    train(apply_overrides(tiny_run_cfg, ["--train.steps=4"]), out=tmp_path / "b")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all(line["loss"] != 9.0 for line in lines)  # steps 3-4 are the resumed run's
    times = [line["time_s"] for line in lines]
    assert times == sorted(times)  # training time goes on from step 2's


def test_resume_refuses_a_different_model(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    wider = apply_overrides(tiny_run_cfg, ["--model.width=8", "--train.steps=3"])
    with pytest.raises(RuntimeError, match="different model config"):
        train(wider, out=tmp_path / "b")


def test_resume_compares_every_method_option_and_reads_older_partial_records(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    path = run_dir(tiny_run_cfg) / STATE_NAME
    state = torch.load(path, weights_only=True)
    assert state["config"]["method"] == {"label_smoothing": 0.0}  # the default, recorded though the preset is silent
    longer = apply_overrides(tiny_run_cfg, ["--train.steps=3"])
    state["config"]["method"] = {"label_smoothing": 0.1}  # as if the default had been 0.1 when it saved
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="different method config"):
        train(longer, out=tmp_path / "b")
    state["config"]["method"] = {}  # a state that records only the options its run set resumes as before
    torch.save(state, path)
    train(longer, out=tmp_path / "b")
    assert torch.load(path, weights_only=True)["step"] == 3


def test_recorded_method_reads_only_family_and_method():
    from dlcv.training.common import recorded_method

    # another section that no longer parses does not spoil the method; a method that does not is kept as recorded
    assert recorded_method({"family": "classifier", "train": {"gone": 1}, "method": {}}) == {"label_smoothing": 0.0}
    assert recorded_method({"family": "classifier", "method": {"gone": 1}}) == {"gone": 1}
    assert recorded_method({"family": "gan", "method": {"diffaugment": 3}}) == {"diffaugment": 3}
    assert recorded_method({"family": "classifier"}) == {"label_smoothing": 0.0}


def test_out_may_not_replace_the_run_folder(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    before = sorted(p.name for p in run_dir(tiny_run_cfg).iterdir())
    for out in (run_dir(tiny_run_cfg), run_dir(tiny_run_cfg).parent):  # the folder itself, or one holding it
        with pytest.raises(ValueError, match="would replace the run folder"):
            train(apply_overrides(tiny_run_cfg, ["--train.steps=3"]), out=out)
    assert sorted(p.name for p in run_dir(tiny_run_cfg).iterdir()) == before
    assert torch.load(run_dir(tiny_run_cfg) / STATE_NAME, weights_only=True)["step"] == 2  # refused before training


def test_a_branch_starts_from_another_runs_state_in_its_own_folder(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    source = run_dir(tiny_run_cfg) / STATE_NAME
    before = source.read_bytes()
    moved = tmp_path / "moved"  # the same data elsewhere, as on another machine
    shutil.copytree(tiny_run_cfg.data.root, moved)
    branch = apply_overrides(tiny_run_cfg, ["--name=branch", f"--train.branch_from={run_dir(tiny_run_cfg)}",
                                            "--train.steps=4", f"--data.root={moved}"])
    train(branch, out=tmp_path / "b")
    steps = [json.loads(line)["step"] for line in (run_dir(branch) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4]  # it went on from the source's step 2
    assert torch.load(run_dir(branch) / STATE_NAME, weights_only=True)["step"] == 4
    assert source.read_bytes() == before  # the source run is only read
    with pytest.raises(FileNotFoundError, match="no saved run state at .*give a run folder"):
        train(apply_overrides(branch, ["--name=c", f"--train.branch_from={tmp_path / 'nowhere'}"]), out=tmp_path / "c")
    wider = apply_overrides(branch, ["--name=d", "--model.width=8"])
    with pytest.raises(RuntimeError, match="different model config; a branch changes only the method"):
        train(wider, out=tmp_path / "d")


@pytest.mark.parametrize("content", [b"garbage", None])  # not a torch file; a zip cut short
def test_resume_names_a_corrupt_state_and_the_fix(content, tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    path = run_dir(tiny_run_cfg) / STATE_NAME
    path.write_bytes(content if content is not None else path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r"state.pt is corrupt or unreadable .*pass --fresh"):
        train(apply_overrides(tiny_run_cfg, ["--train.steps=3"]), out=tmp_path / "b")


def test_same_seed_same_weights(tiny_run_cfg, tmp_path):
    a = train(apply_overrides(tiny_run_cfg, ["--name=a"]), out=tmp_path / "a")
    b = train(apply_overrides(tiny_run_cfg, ["--name=b"]), out=tmp_path / "b")
    assert checkpoint.weights_sha256(a) == checkpoint.weights_sha256(b)


def test_grey_domain_trains_as_three_channels(tiny_run_cfg, tmp_path):
    usps = apply_overrides(tiny_run_cfg, ["--data.domain=usps", "--name=usps"])
    model, _ = checkpoint.load(train(usps, out=tmp_path / "u"))
    assert model.config.in_channels == 3


def test_interrupted_folder_write_keeps_the_old_checkpoint(tmp_ckpt):
    before = checkpoint.weights_sha256(tmp_ckpt)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_ckpt) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt  # the process is stopped mid-write
    assert checkpoint.weights_sha256(tmp_ckpt) == before
    checkpoint.load(tmp_ckpt)


def test_ema_warm_up_forgets_the_initial_weights():
    from dlcv.training.common import ema_copy

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ema_copy(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(50):
        ema.update_parameters(model)
    # plain EMA would still hold 0.999^49 = 95 % of the zero init; the warm-up keeps < 1 %
    assert ema.module.weight.item() > 0.99
