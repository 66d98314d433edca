"""The engine: every preset runs with every train.* field meaning one thing (or refused by name), unknown method
keys fail, batches larger than the data and concurrent runs are refused, TensorBoard events, the DataLoader's batch
order, and torchrun with 2 gloo processes (same weights as 1 process, every family, rank 1 silent, resume)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlcv import checkpoint
from dlcv.cli import main
from dlcv.config import TrainConfig, apply_overrides
from dlcv.data.loaders import infinite, make_loader
from dlcv.presets import PRESETS, get_preset
from dlcv.training import FAMILIES, method_config, train
from dlcv.training.common import STATE_NAME, run_dir
from dlcv.training.engine import LOCK_NAME, RunLock, epoch_batches

REPO = Path(__file__).resolve().parents[1]


def tiny(preset: str, digits: Path, faces: Path, tmp_path: Path, *extra: str):
    """`preset` shrunk to a few steps on the tests' tiny data (external checkpoints it names switched off)."""
    cfg = get_preset(preset)
    overrides = [f"--data.root={faces if cfg.data.dataset == 'face' else digits}",
                 f"--train.out_dir={tmp_path / 'runs'}", "--train.batch_size=4", "--train.steps=2",
                 "--train.progress=false", "--train.deterministic=true", "--train.device=cpu"]
    overrides += {"classifier": ["--model.width=4"], "gan": ["--model.width=4", "--method.d_width=4"],
                  "vae": ["--model.width=4", "--model.latent_dim=8"],
                  "diffusion": ["--model.base_width=8", "--model.channel_mults=1,2", "--model.attention_levels=1"],
                  "uda": ["--model.width=4", "--data.target_domain=usps"]}[cfg.family]
    if cfg.family == "gan":
        overrides += ["--method.teacher=", "--method.init_generator="]
    if cfg.data.attribute:
        overrides.append("--data.attribute=Smiling")
    if cfg.data.dataset == "digits" and cfg.family != "uda":
        overrides.append("--data.domain=mnistm")
    return apply_overrides(cfg, overrides + list(extra))


def lines(cfg) -> list[dict]:
    return [json.loads(line) for line in (run_dir(cfg) / "metrics.jsonl").read_text().splitlines()]


TRAINED = sorted(name for name in PRESETS if name != "uda_refine")  # refine needs a trained run: tests/test_uda.py


@pytest.mark.parametrize("preset", TRAINED)
def test_every_preset_honours_every_train_field(preset, tiny_digits, tiny_faces, tmp_path):
    family = FAMILIES[get_preset(preset).family]
    fields = ["--train.steps=3", "--train.log_every=2", "--train.save_every=2", "--train.snapshot_every=2",
              "--train.max_minutes=30", "--train.seed=3", "--train.lr=1e-4", "--train.betas=0.5,0.99",
              "--train.weight_decay=0.01", "--train.channels_last=false", "--train.amp=false"]
    fields.append(f"--train.eval_every={2 if family.evaluate is not None else 0}")
    # one grid at the end; none for diffusion, whose 80-digit DDIM grid takes a minute here (tests/test_diffusion.py)
    grids = family.makes_samples(get_preset(preset)) and get_preset(preset).family != "diffusion"
    fields.append(f"--train.sample_every={3 if grids else 0}")
    if "ema_decay" not in family.REFUSES:
        fields.append("--train.ema_decay=0.9")
    cfg = tiny(preset, tiny_digits, tiny_faces, tmp_path, *fields)
    out = train(cfg, out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    assert meta["run"]["train"]["seed"] == 3 and meta["run"]["train"]["lr"] == 1e-4
    assert [line["step"] for line in lines(cfg)] == [2, 3]  # log_every=2, and the last step
    assert torch.load(run_dir(cfg) / STATE_NAME, weights_only=True)["step"] == 3  # save_every and the end
    snapshot, _ = checkpoint.load(run_dir(cfg) / "snapshots" / "step_000002")  # snapshot_every, every family
    assert type(snapshot) is type(model)
    samples = sorted(p.name for p in (run_dir(cfg) / "samples").glob("*.png"))
    assert samples == (["step_000003.png"] if grids else [])
    if family.evaluate is not None:
        assert len(lines(cfg)[-1]) > len(lines(cfg)[0]) - 1  # the evaluation's keys ride on the log lines
    events = list((run_dir(cfg) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and not (run_dir(cfg) / LOCK_NAME).exists()  # TensorBoard written; the lock released


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_refuses_an_unknown_method_key_and_fields_it_cannot_honour(preset, capsys):
    cfg = get_preset(preset)
    method_config(cfg)  # the preset's own method parses
    assert main(["train", preset, "--method.nope=1", "--train.steps=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    family = FAMILIES[cfg.family]
    refused = list(family.REFUSES) + (["eval_every"] if family.evaluate is None else []) + \
        ([] if family.makes_samples(cfg) else ["sample_every"])
    for field in refused:
        value = 0.5 if field == "ema_decay" else 7
        assert main(["train", preset, f"--train.{field}={value}", "--train.steps=0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"train.{field}" in err[0] and cfg.family in err[0]


def test_diffusion_ema_decay_zero_turns_ema_off(tiny_digits, tiny_faces, tmp_path):
    cfg = tiny("ddpm_digits", tiny_digits, tiny_faces, tmp_path, "--train.ema_decay=0", "--train.sample_every=0")
    train(cfg, out=tmp_path / "ckpt")
    assert "ema" not in torch.load(run_dir(cfg) / STATE_NAME, weights_only=True)["modules"]
    with pytest.raises(KeyError, match="p_uncnd"):
        train(tiny("ddpm_digits", tiny_digits, tiny_faces, tmp_path, "--method.p_uncnd=0.2"))


def test_a_batch_larger_than_the_split_is_refused_not_a_hang(tiny_run_cfg, tmp_path):
    big = apply_overrides(tiny_run_cfg, ["--train.batch_size=61"])  # tiny_digits' mnistm train has 60 images
    with pytest.raises(ValueError, match=r"batch_size=61 is larger than the 60 training images of "
                                         r"digits/mnistm/train; use --train.batch_size=60 or less"):
        train(big, out=tmp_path / "ckpt")


def test_a_second_run_of_the_same_name_is_refused_while_the_first_lives(tiny_run_cfg, tmp_path):
    folder = run_dir(tiny_run_cfg)
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_NAME).write_text(f"{holder.pid}\n")
        with pytest.raises(RuntimeError, match=f"being trained by process {holder.pid}"):
            train(tiny_run_cfg, out=tmp_path / "ckpt")
        assert not (folder / "metrics.jsonl").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    train(tiny_run_cfg, out=tmp_path / "ckpt")  # its process is gone: the stale lock is taken over
    assert not (folder / LOCK_NAME).exists()


def test_run_lock_is_exclusive_within_a_process_too(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK_NAME).exists()


def test_fresh_starts_over_under_the_lock(tiny_run_cfg, tmp_path):
    train(tiny_run_cfg, out=tmp_path / "a")
    (run_dir(tiny_run_cfg) / "metrics.jsonl").write_text('{"step": 99}\n')
    train(tiny_run_cfg, out=tmp_path / "b", fresh=True)
    assert [line["step"] for line in lines(tiny_run_cfg)] == [1, 2]


def test_one_process_batches_are_the_dataloaders():
    x, y = torch.arange(10), torch.arange(10) * 10
    for batch_size in (3, 5, 10):
        loader = infinite(make_loader(x, y, batch_size=batch_size, seed=5))
        ours = epoch_batches((x, y), batch_size, 5, 0, 1, get_preset("classifier_digits"))
        for _ in range(12):
            assert all(torch.equal(a, b) for a, b in zip(next(loader), next(ours)))


def test_ranks_take_disjoint_slices_of_the_global_batch():
    x = torch.arange(12)
    cfg = get_preset("classifier_digits")
    whole = epoch_batches((x,), 4, 0, 0, 1, cfg)
    halves = [epoch_batches((x,), 4, 0, r, 2, cfg) for r in (0, 1)]
    for _ in range(6):
        parts = [next(h)[0] for h in halves]
        assert torch.equal(torch.cat(parts), next(whole)[0]) and not set(parts[0].tolist()) & set(parts[1].tolist())


def test_tensorboard_holds_scalars_and_sample_grids(tiny_digits, tiny_faces, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny("dcgan_faces", tiny_digits, tiny_faces, tmp_path, "--train.log_every=1", "--train.sample_every=1")
    train(cfg, out=tmp_path / "ckpt")
    events = EventAccumulator(str(run_dir(cfg) / "tensorboard"))
    events.Reload()
    assert {"d_loss", "g_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("d_loss")] == [1, 2] and "samples" in events.Tags()["images"]


# ---------------------------------------------------------------- torchrun, 2 gloo processes


def torchrun(jobs: list[dict], tmp_path: Path, name: str, timeout: int = 100) -> subprocess.CompletedProcess:
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "ddp_run.py"), str(spec)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def overrides(cfg) -> list[str]:
    """A config as overrides of its preset (what ddp_run.py applies)."""
    from dlcv.config import to_dict

    out = []
    for section in ("model", "data", "train"):
        for key, value in to_dict(getattr(cfg, section)).items():
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            out.append(f"--{section}.{key}={value}")
    out += [f"--method.{k}={v}" for k, v in cfg.method.items() if not isinstance(v, dict)]
    return out + [f"--name={cfg.name}"]


def test_two_ranks_match_one_process_every_family_finishes_and_rank_one_writes_nothing(tiny_digits, tiny_faces,
                                                                                        tmp_path):
    # a model without batch norm or dropout: 2 ranks x 4 images = 1 process x 8 images, step for step
    lenet = tiny("classifier_digits_lenet", tiny_digits, tiny_faces, tmp_path, "--train.batch_size=8",
                 "--train.steps=3", "--train.eval_every=3", "--train.amp=false", "--name=lenet_one")
    train(lenet, out=tmp_path / "one")
    families = {"classifier": "classifier_digits", "diffusion": "ddpm_digits", "gan": "acgan_digits",
                "vae": "vae_faces", "uda": "uda_vada"}
    jobs = [{"preset": "classifier_digits_lenet", "overrides": overrides(lenet)[:-1] + ["--name=lenet_two"],
             "out": str(tmp_path / "two"), "rank1_out_dir": str(tmp_path / "rank1")}]
    for family, preset in families.items():
        cfg = tiny(preset, tiny_digits, tiny_faces, tmp_path, "--train.sample_every=0",
                   f"--train.eval_every={1 if FAMILIES[family].evaluate else 0}")
        jobs.append({"preset": preset, "overrides": overrides(cfg), "out": str(tmp_path / f"ddp_{family}"),
                     "rank1_out_dir": str(tmp_path / "rank1")})
    result = torchrun(jobs, tmp_path, "all")
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(run_dir(lenet) / STATE_NAME, weights_only=True)["modules"]["model"]
    two = torch.load(tmp_path / "runs" / "lenet_two" / STATE_NAME, weights_only=True)["modules"]["model"]
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
    for family in families:
        checkpoint.load(tmp_path / f"ddp_{family}")
    assert not (tmp_path / "rank1").exists()  # rank 1 trained under its own out_dir and wrote nothing there


def test_a_killed_two_rank_run_ends_with_a_clear_message_and_resumes(tiny_digits, tiny_faces, tmp_path):
    cfg = tiny("acgan_digits", tiny_digits, tiny_faces, tmp_path, "--train.steps=4", "--train.save_every=2",
               "--train.log_every=1", "--train.sample_every=0")
    cut = {"preset": "acgan_digits", "overrides": overrides(cfg)[:-1] + ["--name=cut"], "out": str(tmp_path / "cut")}
    killed = torchrun([{**cut, "die_at_step": 3}], tmp_path, "killed")
    assert killed.returncode != 0 and "rank 1 of 2 failed at step 3: simulated crash in step 3" in killed.stderr
    assert torch.load(tmp_path / "runs" / "cut" / STATE_NAME, weights_only=True)["step"] == 2
    resumed = torchrun([cut], tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(tmp_path / "runs" / "cut" / STATE_NAME, weights_only=True)["step"] == 4
    checkpoint.load(tmp_path / "cut")
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_batch_size_is_global_and_must_split_over_the_ranks(tiny_run_cfg):
    from dlcv.training.classifier import Classifier
    from dlcv.training.engine import check_train_fields

    with pytest.raises(ValueError, match="global batch and must split evenly over the 2 processes"):
        check_train_fields(apply_overrides(tiny_run_cfg, ["--train.batch_size=5"]), Classifier, world=2)
    check_train_fields(tiny_run_cfg, Classifier, world=2)
    assert TrainConfig().eval_every == 0 and TrainConfig().sample_every == 0  # off unless a family can do them


# ---------------------------------------------------------------- precision: train.amp / train.channels_last = auto


@pytest.fixture
def probe_log(monkeypatch, tmp_path):
    """A private precision cache; records each probe's timed options; `fastest` fakes which option wins."""
    from dlcv import precision

    monkeypatch.setenv("DLCV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "native")  # so bf16 is an option on any CPU
    timed, real = [], precision.time_options
    state = {"fastest": precision.Choice(True, True)}

    def time_options(options, run, device, repeats=3, warmup=2):
        real(options, run, device, repeats=1)  # the real updates run, so the test sees that they leave no trace
        timed.append(list(options))
        return {o: (0.5 if o == state["fastest"] else 1.0) for o in options}

    monkeypatch.setattr(precision, "time_options", time_options)
    return timed, state


def auto_gan(tiny_digits, tiny_faces, tmp_path, *extra):
    return tiny("dcgan_faces", tiny_digits, tiny_faces, tmp_path, "--train.deterministic=false",
                "--train.amp=auto", "--train.channels_last=auto", "--train.sample_every=0", *extra)


def test_auto_precision_is_probed_once_logged_cached_and_recorded(probe_log, tiny_digits, tiny_faces, tmp_path,
                                                                  caplog):
    timed, _ = probe_log
    cfg = auto_gan(tiny_digits, tiny_faces, tmp_path)
    with caplog.at_level("INFO"):
        _, meta = checkpoint.load(train(cfg, out=tmp_path / "a"))
    assert len(timed) == 1 and len(timed[0]) == 4  # fp32 / bf16 x default / channels_last
    assert meta["run"]["train"]["amp"] == "bf16" and meta["run"]["train"]["channels_last"] == "true"
    said = [r.getMessage() for r in caplog.records if "trains in" in r.getMessage()]
    assert len(said) == 1 and "bf16 + channels_last: 2.00x fp32" in said[0]
    assert cfg.train.amp == "auto"  # the caller's config is left as given
    # another run of the same model and batch reads the cache and times nothing
    train(auto_gan(tiny_digits, tiny_faces, tmp_path, "--name=again"), out=tmp_path / "b")
    assert len(timed) == 1


def test_the_probe_changes_no_weight(probe_log, tiny_digits, tiny_faces, tmp_path):
    """The probe trains a throwaway copy: a run that probed (and picked fp32) ends with the weights of one pinned to
    fp32 from the start."""
    from dlcv.precision import FP32

    timed, state = probe_log
    state["fastest"] = FP32
    probed, _ = checkpoint.load(train(auto_gan(tiny_digits, tiny_faces, tmp_path), out=tmp_path / "a"))
    pinned, _ = checkpoint.load(train(auto_gan(tiny_digits, tiny_faces, tmp_path, "--train.amp=fp32",
                                               "--train.channels_last=false", "--name=pinned"), out=tmp_path / "b"))
    assert len(timed) == 1
    for (name, a), b in zip(probed.state_dict().items(), pinned.state_dict().values()):
        assert torch.equal(a, b), name


def test_explicit_precision_wins_deterministic_is_fp32_and_a_resume_keeps_its_choice(probe_log, tiny_digits,
                                                                                     tiny_faces, tmp_path,
                                                                                     monkeypatch):
    from dlcv import precision
    from dlcv.precision import FP32

    timed, state = probe_log
    _, meta = checkpoint.load(train(auto_gan(tiny_digits, tiny_faces, tmp_path, "--train.amp=fp32",
                                             "--train.channels_last=true"), out=tmp_path / "a"))
    assert timed == [] and (meta["run"]["train"]["amp"], meta["run"]["train"]["channels_last"]) == ("fp32", "true")
    _, meta = checkpoint.load(train(tiny("dcgan_faces", tiny_digits, tiny_faces, tmp_path, "--name=det",
                                         "--train.sample_every=0"),
                                    out=tmp_path / "b"))  # tiny() runs deterministic, amp and layout left on auto
    assert timed == [] and (meta["run"]["train"]["amp"], meta["run"]["train"]["channels_last"]) == ("fp32", "false")

    cfg = auto_gan(tiny_digits, tiny_faces, tmp_path, "--name=resumed", "--train.max_minutes=0")
    train(cfg, out=tmp_path / "c")  # 2 steps in bf16 + channels_last
    state["fastest"] = FP32  # what a new probe would now say; the resumed run must not ask
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "emulated")  # nor drop bf16 on a CPU that emulates it
    _, meta = checkpoint.load(train(apply_overrides(cfg, ["--train.steps=3"]), out=tmp_path / "c"))
    assert len(timed) == 1 and meta["trained_steps"] == 3
    assert (meta["run"]["train"]["amp"], meta["run"]["train"]["channels_last"]) == ("bf16", "true")
