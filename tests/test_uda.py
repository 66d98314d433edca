"""Domain adaptation: gradient reversal, every UDA method for 2 steps on tiny fake domains, checkpoint round
trip, the predict CSV for a UDA checkpoint, grey -> 3-channel handling and bad image folders."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv import checkpoint
from dlcv.cli import main
from dlcv.config import apply_overrides
from dlcv.models.blocks import GradientReversal, grad_reverse
from dlcv.models.uda import SOURCE, TARGET, UDANet, UDANetConfig
from dlcv.presets import get_preset
from dlcv.training import train
from dlcv.training.uda import UDA_METHODS, _setup, annealed_lr, augment, dann_lambda, export_final

from conftest import load_script, write_digits_domain

TINY = ["--train.steps=2", "--train.batch_size=4", "--model.width=4", "--train.eval_every=1",
        "--train.progress=false", "--train.device=cpu", "--train.amp=false", "--train.deterministic=true"]


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_negates_and_scales(lambd):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = GradientReversal(lambd)(x)
    assert torch.equal(y, x)  # identity forward
    y.backward(upstream)
    assert torch.allclose(x.grad, -lambd * upstream)
    x2 = torch.randn(4, requires_grad=True)
    (grad_reverse(x2, lambd) * 2).sum().backward()
    assert torch.allclose(x2.grad, torch.full((4,), -2.0 * lambd))


def test_schedules_follow_ganin():
    assert dann_lambda(0.0) == 0.0 and abs(dann_lambda(1.0) - 0.99991) < 1e-4
    assert annealed_lr(0.0) == 1.0 and abs(annealed_lr(1.0) - 11 ** -0.75) < 1e-9


def uda_cfg(method, root, tmp_path, *extra):
    return apply_overrides(get_preset(f"uda_{method}"), [
        f"--data.root={root}", "--data.domain=mnistm", "--data.target_domain=usps",
        f"--train.out_dir={tmp_path / 'runs'}", f"--name=uda_{method}_test", *TINY, *extra])


@pytest.mark.parametrize("method", sorted(UDA_METHODS))
def test_each_method_trains_two_steps_and_round_trips(method, tiny_digits, tmp_path):
    init = []
    if method == "refine":  # refines a trained run of the same pair and network
        init = [f"--method.init={train(uda_cfg('dann', tiny_digits, tmp_path), out=tmp_path / 'dann')}"]
    out = train(uda_cfg(method, tiny_digits, tmp_path, *init), out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    metrics = meta["metrics"]
    assert metrics["selected_by"] == ("last" if method == "refine" else "labelled_val") and metrics["steps"] == 2
    for key in ("target_test_acc", "oracle_target_test_acc", "oracle_target_val_acc", "labelled_val_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert model.features(x).shape == (3, model.feature_dim)
    again, _ = checkpoint.load(out)
    assert torch.equal(again(x), logits)  # save -> load gives identical outputs
    lines = (tmp_path / "runs" / f"uda_{method}_test" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


@pytest.mark.parametrize("method", ["dann", "vada"])
def test_ganin_arch_trains_and_round_trips(method, tiny_digits, tmp_path):
    out = train(uda_cfg(method, tiny_digits, tmp_path, "--model.arch=ganin", "--model.width=32"), out=tmp_path / "ckpt")
    model, _ = checkpoint.load(out)
    assert model.config.arch == "ganin" and model.feature_dim == 48 * 4 * 4  # the paper's 32, 48 channels
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    assert model(x).shape == (3, 10) and model.features(x).shape == (3, 768)
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["arch"] == "ganin"
    with pytest.raises(ValueError, match="model.arch"):
        UDANetConfig(arch="lenet")


def test_svhn_arch_embeds_through_its_fc_layer_and_round_trips(tiny_digits, tmp_path):
    """Haeusser et al.'s network: nine convs in three pooled blocks, then the 2w-d FC embedding the walks use."""
    out = train(uda_cfg("assoc", tiny_digits, tmp_path, "--model.arch=svhn", "--model.width=16"), out=tmp_path / "ckpt")
    model, _ = checkpoint.load(out)
    assert model.config.arch == "svhn" and len(model.convs) == 9 and model.feature_dim == 32
    assert [conv.out_channels for conv in model.convs] == [8] * 3 + [16] * 3 + [32] * 3
    x = torch.rand(3, 3, 28, 28) * 2 - 1
    model.eval()
    features = model.features(x)
    assert features.shape == (3, 32) and (features >= -1).all()  # ELU's floor: the embedding is the FC's output
    assert torch.allclose(model(x), model.head(features))
    again, _ = checkpoint.load(out)
    assert torch.equal(again.eval()(x), model(x))


def test_a_config_without_arch_loads_as_dirtt(uda_checkpoint, tmp_path):
    """Checkpoints shipped before model.arch existed carry no such key and must still load."""
    copy = tmp_path / "old"
    shutil.copytree(uda_checkpoint, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"].pop("arch", None)
    (copy / "config.json").write_text(json.dumps(config))
    model, _ = checkpoint.load(copy)
    assert model.config.arch == "dirtt"


def test_export_final_ships_the_last_weights_measured_afresh(tiny_digits, tmp_path):
    cfg = uda_cfg("dann", tiny_digits, tmp_path)
    trained = checkpoint.read_config(train(cfg, out=tmp_path / "ckpt"))["metrics"]
    out = export_final(cfg, tmp_path / "final")
    meta = checkpoint.read_config(out)
    assert meta["run"]["method"]["select"] == "last" and meta["metrics"]["selected_by"] == "last"
    assert meta["metrics"]["selected_step"] == 2
    assert meta["metrics"]["target_test_acc"] == trained["last_step_target_test_acc"]
    assert meta["metrics"]["oracle_target_test_acc"] == trained["oracle_target_test_acc"]
    checkpoint.load(out)
    longer = apply_overrides(cfg, ["--train.steps=4"])  # a run cut short: its final weights are not final yet
    with pytest.raises(RuntimeError, match="stopped at step 2 of 4"):
        export_final(longer, tmp_path / "nope")


def test_refine_starts_from_its_checkpoint_and_refuses_a_foreign_one(tiny_digits, tmp_path):
    dann = train(uda_cfg("dann", tiny_digits, tmp_path), out=tmp_path / "dann")
    trained, _ = checkpoint.load(dann)
    cfg = uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={dann}")
    method = _setup(cfg)[3]
    for net in (method.model, method.average.module):  # student and mean teacher both start from the DANN weights
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
    checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    first = json.loads((tmp_path / "runs" / "uda_refine_test" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["teacher_loss"] >= 0 and "vat_tgt" not in first and "ent_loss" in first
    with pytest.raises(ValueError, match="--method.init"):
        _setup(uda_cfg("refine", tiny_digits, tmp_path))
    with pytest.raises(ValueError, match="different network.*width"):
        _setup(uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={dann}", "--model.width=8"))
    other = train(uda_cfg("dann", tiny_digits, tmp_path, "--data.domain=usps", "--data.target_domain=mnistm",
                          "--model.input_norm=instance", "--name=other"), out=tmp_path / "other")
    with pytest.raises(ValueError, match="usps -> mnistm.*same pair"):
        _setup(uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={other}", "--model.input_norm=instance"))


def test_refine_peer_vetoes_the_teachers_labels(tiny_digits, tmp_path):
    dann = train(uda_cfg("dann", tiny_digits, tmp_path), out=tmp_path / "dann")
    peer = train(uda_cfg("dann", tiny_digits, tmp_path, "--model.width=8", "--name=peer"), out=tmp_path / "peer")
    method = _setup(uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={dann}", f"--method.peer={peer}"))[3]
    x = torch.rand(6, 3, 28, 28) * 2 - 1
    peer_labels = method.peer(x).argmax(1)
    assert not any(p.requires_grad for p in method.peer.parameters()) and not method.peer.training
    assert method.pseudo_label_mask(x, peer_labels).tolist() == [1.0] * 6
    assert method.pseudo_label_mask(x, (peer_labels + 1) % 10).tolist() == [0.0] * 6
    assert "peer" not in "".join(method.state_modules())  # frozen and reloaded from its path, not resumed
    checkpoint.load(train(uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={dann}", f"--method.peer={peer}"),
                   out=tmp_path / "ckpt"))
    other = train(uda_cfg("dann", tiny_digits, tmp_path, "--data.domain=usps", "--data.target_domain=mnistm",
                          "--model.input_norm=instance", "--name=other"), out=tmp_path / "other")
    with pytest.raises(ValueError, match="--method.peer.*same pair"):
        _setup(uda_cfg("refine", tiny_digits, tmp_path, f"--method.init={dann}", f"--method.peer={other}"))


def test_vada_parts_switch_off(tiny_digits, tmp_path):
    cfg = uda_cfg("vada", tiny_digits, tmp_path, "--method.teacher=false", "--method.vat_src_weight=0",
                  "--method.vat_tgt_weight=0", "--method.augment=false")
    checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    line = json.loads((tmp_path / "runs" / "uda_vada_test" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "vat_src" not in line and "teacher_loss" not in line and "d_loss" in line
    with pytest.raises(KeyError, match="unknown method option"):
        train(uda_cfg("dann", tiny_digits, tmp_path, "--method.nope=1"))


@pytest.mark.parametrize("method, source, target, expected", [
    ("source_only", "usps", "mnistm", "grey"),  # grey labels, colour target: colour-blind
    ("dann", "mnistm", "usps", "instance"),  # colour labels: keep colour
    ("target_only", "usps", "mnistm", "instance"),  # labels from the colour target itself
    ("target_only", "mnistm", "usps", "grey"),  # grey labels, colour source (equal to instance on grey images)
])
def test_auto_input_norm_follows_the_labelled_domain(method, source, target, expected, tiny_digits, tmp_path):
    cfg = uda_cfg(method, tiny_digits, tmp_path, f"--data.domain={source}", f"--data.target_domain={target}")
    assert cfg.model.input_norm == "auto"
    _, meta = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    assert meta["config"]["input_norm"] == meta["run"]["model"]["input_norm"] == expected
    with pytest.raises(ValueError, match="resolved by the UDA training loop"):
        UDANet(cfg.model)


def test_dann_ema_ships_the_weight_average(tiny_digits, tmp_path):
    cfg = uda_cfg("dann", tiny_digits, tmp_path, "--method.ema_decay=0.5")
    method = UDA_METHODS["dann"](UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance")),
                                 {"ema_decay": 0.5}, cfg.train)
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    for _ in range(2):  # the first update copies the student, later ones average
        method.update(x, torch.arange(4), x.flip(0))
    assert method.eval_model is method.average.module and not method.eval_model.training
    student, average = method.model.state_dict(), method.eval_model.state_dict()
    assert not torch.equal(student["head.weight"], average["head.weight"])  # an average, not the student
    _, meta = checkpoint.load(train(cfg, out=tmp_path / "ckpt"))
    assert meta["run"]["method"]["ema_decay"] == 0.5


@pytest.mark.parametrize("method", ["dann", "vada"])
def test_interrupted_run_resumes_to_the_same_weights(method, tiny_digits, tmp_path, monkeypatch):
    """Killed during step 4 of 5 with state saved every 2 steps, a rerun resumes at step 3 and ends with the weights,
    selection and metrics of an uninterrupted run (the batches, lambda_p, lr, weight average and best-so-far resume)."""
    extra = ["--train.steps=5", "--train.save_every=2", "--train.log_every=1"]
    whole = train(uda_cfg(method, tiny_digits, tmp_path, *extra, "--name=whole"), out=tmp_path / "whole")
    cfg = uda_cfg(method, tiny_digits, tmp_path, *extra, "--name=cut")
    update, calls = UDA_METHODS[method].update, []

    def dies_in_step_four(self, *batch):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return update(self, *batch)

    with monkeypatch.context() as patch:
        patch.setattr(UDA_METHODS[method], "update", dies_in_step_four)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out=tmp_path / "cut")
    resumed = train(cfg, out=tmp_path / "cut")
    assert checkpoint.weights_sha256(resumed) == checkpoint.weights_sha256(whole)
    drop = ("steps_per_s", "train_seconds")
    metrics = [{k: v for k, v in checkpoint.load(path)[1]["metrics"].items() if k not in drop} for path in (whole, resumed)]
    assert metrics[0] == metrics[1]
    lines = (tmp_path / "runs" / "cut" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3, 4, 5]  # step 3's line, written before the kill, was dropped on resume and written again
    assert checkpoint.weights_sha256(train(cfg, out=tmp_path / "again")) == checkpoint.weights_sha256(whole)  # finished: no retrain


def test_uda_needs_a_distinct_target(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match="target_domain"):
        train(uda_cfg("dann", tiny_digits, tmp_path, "--data.target_domain=mnistm"))


def test_grey_input_is_replicated_and_domains_differ():
    model = UDANet(UDANetConfig(width=4, input_norm="domain")).eval()
    model.set_input_stats(SOURCE, torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.5, 0.5]))
    grey = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(model(grey), model(grey.expand(-1, 3, -1, -1)))
    assert not torch.equal(model(grey, domain=SOURCE), model(grey, domain=TARGET))  # per-domain normalisation
    assert model(grey).shape == (2, 10) and model(grey, domain=TARGET).shape == (2, 10)


def test_grey_input_norm_is_colour_blind():
    """input_norm=grey sees the luminance only: permuting RGB changes nothing, a grey image equals its replication."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 28, 28) * 2 - 1
    grey = UDANet(UDANetConfig(width=4, input_norm="grey")).eval()
    assert torch.allclose(grey(x), grey(x[:, [2, 0, 1]]), atol=1e-6)
    assert torch.allclose(grey(x.mean(1, keepdim=True)), grey(x), atol=1e-6)
    colour = UDANet(UDANetConfig(width=4, input_norm="instance")).eval()
    assert not torch.allclose(colour(x), colour(x[:, [2, 0, 1]]), atol=1e-6)
    with pytest.raises(ValueError, match="input_norm"):
        UDANetConfig(input_norm="gray")


def test_augment_keeps_shape_and_range():
    x = torch.rand(4, 3, 28, 28) * 2 - 1
    y = augment(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.abs().max() < 1.5


@pytest.fixture
def uda_checkpoint(tiny_digits, tmp_path):
    return train(uda_cfg("dann", tiny_digits, tmp_path), out=tmp_path / "uda_ckpt")


def test_predict_csv_for_a_uda_checkpoint(uda_checkpoint, tmp_path, capsys):
    folder, out = tmp_path / "images", tmp_path / "pred.csv"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = ["b.png", "a.png", "10.png", "2.png"]
    for name in names[:3]:
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / "2.png")  # grey: 1 channel
    assert main(["predict", str(uda_checkpoint), "--images", str(folder), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "image_name,label" and len(lines) == 1 + len(names)
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(names)
    assert all(r[1].isdigit() and 0 <= int(r[1]) <= 9 for r in rows)


@pytest.mark.parametrize("bad", ["notes.txt", "corrupt.png"])
def test_predict_bad_folder_names_the_file(bad, uda_checkpoint, tmp_path, capsys):
    folder, out = tmp_path / "images", tmp_path / "pred.csv"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "ok.png")
    (folder / bad).write_bytes(b"\x89PNG\r\n\x1a\n truncated" if bad.endswith(".png") else b"not an image")
    assert main(["predict", str(uda_checkpoint), "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and not out.exists()


def test_plot_tsne_writes_a_png(tmp_path):
    from dlcv.viz import plot_tsne

    features = torch.cat([torch.randn(15, 8), torch.randn(15, 8) + 4])
    labels = torch.tensor([0] * 15 + [1] * 15)
    path = plot_tsne(features, labels, tmp_path / "t.png", "by domain", label_names=["source", "target"])
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


def test_figures_command_draws_a_uda_checkpoints_t_sne(tiny_digits, tmp_path, capsys):
    net = UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance"))
    named = checkpoint.save(net, tmp_path / "uda_dann_mnistm_to_usps")  # no run recorded: the name gives the pair
    assert main(["figures", str(named), "--out", str(tmp_path / "figs"), "--data", str(tiny_digits)]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["uda_dann_mnistm_to_usps_tsne_class.png",
                                                                     "uda_dann_mnistm_to_usps_tsne_domain.png"]
    assert main(["figures", str(named), "--out", str(tmp_path / "none")]) == 0  # no --data: skipped, not failed
    assert not (tmp_path / "none").exists()
    unnamed = checkpoint.save(net, tmp_path / "mine")
    capsys.readouterr()
    assert main(["figures", str(unnamed), "--out", str(tmp_path / "figs2"), "--data", str(tiny_digits)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rename the folder" in err[0]


def _uda_table():
    from dlcv import uda_table

    return uda_table


def test_uda_table_steps_per_method_and_bad_items():
    table = _uda_table()
    assert table.parse_steps("3000") == {"*": 3000}
    assert table.parse_steps("dann=3000,vada=1000,*=500") == {"dann": 3000, "vada": 1000, "*": 500}
    with pytest.raises(SystemExit, match="unknown method 'danm'"):
        table.parse_steps("danm=3000")
    with pytest.raises(SystemExit, match="must be N or method=N"):
        table.parse_steps("dann=many")


def test_uda_table_resumes_a_run_cut_short_only_with_its_own_config(tiny_digits, tmp_path):
    import argparse

    table = _uda_table()
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tiny_digits), device="cpu",
                              steps={"dann": 2}, set=TINY[1:])  # TINY without its --train.steps
    run = table.plan(argparse.Namespace(pairs="mnistm:usps", methods="dann", seeds="0", ablation="", data=""))[0]
    assert not table.resumable(run, args)  # nothing saved yet
    cfg = apply_overrides(get_preset(run["preset"]), table.train_overrides(run, args))
    train(cfg, out=tmp_path / "ckpt")  # leaves runs/<name>/state.pt
    assert table.resumable(run, args)
    assert not table.resumable(run, argparse.Namespace(**{**vars(args), "steps": {"dann": 3}}))  # another schedule
    assert not table.resumable(run, argparse.Namespace(**{**vars(args), "set": [*args.set, "--method.ema_decay=0"]}))


def test_uda_table_streams_each_runs_output_into_its_log(tiny_digits, tmp_path, capsys):
    """A table run's progress bar and errors land in <out>/logs/<name>.log as it trains, appended across tries; a
    failed run names its last line and the log, and leaves no results/<name>.json (so the next call retries it)."""
    import argparse

    table = _uda_table()
    progress_shown = [t for t in TINY if t != "--train.progress=false"]
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tmp_path / "missing"), device="cpu",
                              steps={"dann": 2}, set=progress_shown[1:], threads=1)
    run = table.plan(argparse.Namespace(pairs="mnistm:usps", methods="dann", seeds="0", ablation="", data=""))[0]
    log = tmp_path / "table" / "logs" / f"{run['name']}.log"
    failed = table.run_one(run, args)
    assert failed["returncode"] != 0 and failed["log"] == str(log)
    assert "missing" in failed["error"] and not (tmp_path / "table" / "results" / f"{run['name']}.json").exists()
    assert f"output in {log}" in capsys.readouterr().out

    done = table.run_one(run, argparse.Namespace(**{**vars(args), "data": str(tiny_digits)}))
    assert done["returncode"] == 0, done.get("error")
    text = log.read_text()
    assert text.count("$ ") == 2 and "missing" in text  # both tries, the first one's error kept
    assert "2/2" in text  # the run's progress bar, to its last step
    assert (tmp_path / "table" / "results" / f"{run['name']}.json").is_file()


def test_uda_table_refines_each_dann_runs_final_weights(tiny_digits, tmp_path):
    """Stage 2 of the table: a refine run starts from the exported final weights of its pair and seed's DANN run."""
    import argparse

    table = _uda_table()
    init = str(tmp_path / "table/final/dann_{source}_to_{target}_s{seed}")
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tiny_digits), device="cpu", steps={"*": 2},
                              set=TINY[1:], final=True, init=init)
    dann, refine = (table.plan(argparse.Namespace(pairs="mnistm:usps", methods=m, seeds="1", ablation="", data=""))[0]
                    for m in ("dann", "refine"))
    ckpt = train(apply_overrides(get_preset(dann["preset"]), table.train_overrides(dann, args)))
    from dlcv import metadata  # as `python -m dlcv train` records it

    command = metadata.train_command(dann["preset"], table.train_overrides(dann, args), str(ckpt))
    checkpoint.update_document(ckpt, lambda d: {**d, "rebuild": [command]})
    (tmp_path / "table" / "results").mkdir(parents=True)
    (tmp_path / "table" / "results" / f"{dann['name']}.json").write_text(
        json.dumps({**dann, "returncode": 0, "metrics": checkpoint.read_config(ckpt)["metrics"], "checkpoint": str(ckpt)}))
    # --final --report exports them, from the config each run recorded: no need to repeat --steps and --set
    table.report(argparse.Namespace(**{**vars(args), "steps": {}, "set": []}, pairs="", methods="dann"))
    exported = str(tmp_path / "table" / "final" / dann["name"])
    assert checkpoint.read_config(exported)["run"]["method"]["select"] == "last"
    # its rebuild list trains the same run with select=last into the exported folder, so a refinement can chain it
    final = checkpoint.read_config(exported)
    assert final["rebuild"][-1].endswith(f"--method.select=last --out {exported}")
    assert metadata.check_rebuild(final) == [] and metadata.commands_that_write(exported) == final["rebuild"]
    assert table.final_checkpoint(dann, args)["checkpoint"] == exported
    overrides = table.train_overrides(refine, args)
    assert f"--method.init={exported}" in overrides and exported.endswith("final/dann_mnistm_to_usps_s1")
    meta = checkpoint.read_config(train(apply_overrides(get_preset(refine["preset"]), overrides)))
    assert meta["run"]["method"]["init"] == exported and meta["metrics"]["method"] == "refine"


def test_uda_table_reuses_target_only_across_sources(tmp_path):
    import argparse

    table = _uda_table()
    results = tmp_path / "results"
    results.mkdir()
    done = {"name": "target_only_mnistm_to_usps_s0", "source": "mnistm", "target": "usps", "seed": 0,
            "method": "target_only", "variant": None, "overrides": [], "returncode": 0,
            "command": "python -m dlcv train uda_target_only --train.steps=3000", "metrics": {"steps": 3000}}
    (results / f"{done['name']}.json").write_text(json.dumps(done))
    run = {**done, "name": "target_only_mnist_to_usps_s0", "source": "mnist"}
    args = argparse.Namespace(out=str(tmp_path), steps={"*": 3000}, set=[])
    assert table.reuse_target_only(run, args)
    copied = json.loads((results / "target_only_mnist_to_usps_s0.json").read_text())
    assert copied["source"] == "mnist" and copied["reused_from"] == "target_only_mnistm_to_usps_s0"
    # other steps, another seed or another method: trained, not reused
    assert not table.reuse_target_only(run | {"name": "x_s0"}, argparse.Namespace(**{**vars(args), "steps": {"*": 99}}))
    assert not table.reuse_target_only(run | {"seed": 1, "name": "target_only_mnist_to_usps_s1"}, args)
    no_steps = argparse.Namespace(**{**vars(args), "steps": {}})  # the preset's 5000 steps, not the record's 3000
    assert not table.reuse_target_only(run | {"name": "y_s0"}, no_steps)
    assert not table.reuse_target_only(run | {"method": "dann", "name": "dann_mnist_to_usps_s0"}, args)


def test_uda_speed_benchmark_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """benchmarks/uda_speed.py on fake MNIST-M -> USPS big enough for one batch of 64: it builds both loops from the
    uda_dann preset (whose input_norm=auto the reference must resolve) and prints the ratio."""
    root = tmp_path / "data"
    write_digits_domain(root, "mnistm", {"train": 64, "val": 8, "test": 8}, channels=3)
    write_digits_domain(root, "usps", {"train": 64, "val": 8, "test": 8}, channels=1, seed=1)
    module = load_script("benchmarks/uda_speed.py")
    monkeypatch.setattr("sys.argv", ["uda_speed.py", "--data", str(root), "--steps", "2", "--ref-steps", "1",
                                     "--width", "4", "--out", str(tmp_path / "runs")])
    module.main()
    assert "speed ratio dlcv / reference:" in capsys.readouterr().out


def test_predict_refuses_a_checkpoint_that_does_not_classify(tmp_path, capsys):
    from dlcv.models.gan import Generator, GeneratorConfig

    ckpt = checkpoint.save(Generator(GeneratorConfig(z_dim=4, image_size=28, channels=3, width=4)), tmp_path / "gan")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "ok.png")
    assert main(["predict", str(ckpt), "--images", str(folder), "--out", str(tmp_path / "pred.csv")]) == 2
    err = capsys.readouterr().err
    assert "is a generator checkpoint, which does not classify" in err and "Traceback" not in err


def test_adabn_script_replaces_batch_norm_statistics_by_the_target_images_average():
    adabn = load_script("benchmarks/adabn.py")
    model = UDANet(UDANetConfig(width=4, domain_bn=False, input_norm="instance"))
    images = torch.randint(0, 256, (10, 3, 28, 28), dtype=torch.uint8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    adabn.adapt_batch_norm(model, images, batch=5)
    in_halves = norms[0].running_mean.clone()
    adabn.adapt_batch_norm(model, images, batch=10)
    # the first layer's input does not depend on the batches, so two equal halves average to the mean over all images
    torch.testing.assert_close(in_halves, norms[0].running_mean)
    assert norms[0].running_mean.abs().sum() > 0 and not model.training and not norms[0].training


@pytest.mark.parametrize("rule", ["target_snd", "dev"])
def test_a_label_free_rule_selects_and_every_rule_is_logged(rule, tiny_digits, tmp_path):
    """Each evaluation logs every validator and the target test accuracy; the shipped weights are the evaluation with
    the best score of method.select, and the checkpoint names that rule."""
    from dlcv.validators import RULES, picks

    cfg = uda_cfg("dann", tiny_digits, tmp_path, "--train.steps=3", f"--method.select={rule}")
    meta = checkpoint.read_config(train(cfg, out=tmp_path / "ckpt"))
    rows = [json.loads(line) for line in (tmp_path / "runs" / "uda_dann_test" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert all(key in row for key in RULES.values()) and 0 <= row["oracle/target_test_acc"] <= 1
    key = f"validator/{rule}"
    best = max(rows, key=lambda row: (row[key], row["step"]))
    assert meta["metrics"]["selected_by"] == rule and meta["metrics"]["selected_step"] == best["step"]
    chosen = picks(rows)
    assert chosen["last"][0] == 3 and chosen["oracle"][1] == max(row["oracle/target_test_acc"] for row in rows)


def test_target_only_refuses_a_label_free_rule(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match="select=labelled_val"):
        _setup(uda_cfg("target_only", tiny_digits, tmp_path, "--method.select=target_bnm"))


def test_uda_table_validator_report(tiny_digits, tmp_path):
    """--validators reads each table run's log and writes one row per run, with each rule's gap to the oracle."""
    import argparse

    table = _uda_table()
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tiny_digits), device="cpu", steps={"*": 3},
                              set=TINY[1:], final=False)
    run = table.plan(argparse.Namespace(pairs="mnistm:usps", methods="dann", seeds="0", ablation="", data=""))[0]
    ckpt = train(apply_overrides(get_preset(run["preset"]), table.train_overrides(run, args)))
    (tmp_path / "table" / "results").mkdir(parents=True)
    (tmp_path / "table" / "results" / f"{run['name']}.json").write_text(
        json.dumps({**run, "returncode": 0, "metrics": checkpoint.read_config(ckpt)["metrics"], "checkpoint": str(ckpt)}))
    text = table.validator_report(args)
    rows = [line for line in text.splitlines() if line.startswith("| mnistm → usps | DANN | 0 |")]
    assert len(rows) == 1 and rows[0].count("|") == 1 + 3 + 7 + 1  # 3 run cells, 6 rules + last, the oracle
    assert "mean gap to the oracle" in text and (tmp_path / "table" / "RESULTS_validators.md").is_file()


def test_uda_table_tsne_over_training_draws_each_snapshot(tiny_digits, tmp_path):
    import argparse

    table = _uda_table()
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tiny_digits), device="cpu", steps={"*": 3},
                              set=[*TINY[1:], "--train.snapshot_every=1"], final=False)
    run = table.plan(argparse.Namespace(pairs="mnistm:usps", methods="dann", seeds="0", ablation="", data=""))[0]
    train(apply_overrides(get_preset(run["preset"]), table.train_overrides(run, args)))
    table.tsne_over_training(argparse.Namespace(**vars(args), tsne_over_training=run["name"], tsne_columns=2,
                                                tsne_per_domain=12))
    assert (tmp_path / "table" / "tsne" / f"{run['name']}_over_training.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="snapshot_every"):
        table.tsne_over_training(argparse.Namespace(**vars(args), tsne_over_training="nope", tsne_columns=2,
                                                    tsne_per_domain=12))


def test_uda_table_ships_only_the_methods_asked_for(tiny_digits, tmp_path):
    import argparse

    table = _uda_table()
    args = argparse.Namespace(out=str(tmp_path / "table"), data=str(tiny_digits), device="cpu", steps={"*": 2},
                              set=TINY[1:], final=False, pairs="", ship=str(tmp_path / "ship"))
    run = table.plan(argparse.Namespace(pairs="mnistm:usps", methods="dann", seeds="0", ablation="", data=""))[0]
    ckpt = train(apply_overrides(get_preset(run["preset"]), table.train_overrides(run, args)))
    (tmp_path / "table" / "results").mkdir(parents=True)
    (tmp_path / "table" / "results" / f"{run['name']}.json").write_text(
        json.dumps({**run, "returncode": 0, "metrics": checkpoint.read_config(ckpt)["metrics"], "checkpoint": str(ckpt)}))
    table.write_summary(args)
    table.ship(argparse.Namespace(**vars(args), ship_methods="assoc"))
    assert not (tmp_path / "ship").exists()  # no associative-DA run: nothing to ship
    table.ship(argparse.Namespace(**vars(args), ship_methods="dann"))
    assert (tmp_path / "ship" / "uda_dann_mnistm_to_usps" / "config.json").is_file()
    with pytest.raises(SystemExit, match="target_only"):
        table.ship(argparse.Namespace(**vars(args), ship_methods="target_only"))


@pytest.mark.parametrize("method", ["assoc", "gta"])
@pytest.mark.parametrize("source, target", [("svhn", "mnistm"), ("mnistm", "svhn"), ("usps", "svhn")])
def test_svhn_pairs_train_on_a_stand_in(method, source, target, tiny_digits, tmp_path):
    """SVHN is not in the data here: a colour stand-in in the prepared layout (28x28, as `dlcv data prepare` writes
    SVHN) checks that the new methods' presets run on its pairs."""
    write_digits_domain(tiny_digits, "svhn", {"train": 40, "val": 20, "test": 20}, channels=3, seed=2)
    cfg = uda_cfg(method, tiny_digits, tmp_path, f"--data.domain={source}", f"--data.target_domain={target}",
                  "--train.sample_every=0")
    metrics = checkpoint.read_config(train(cfg, out=tmp_path / "ckpt"))["metrics"]
    assert (metrics["source"], metrics["target"], metrics["steps"]) == (source, target, 2)
    assert 0 <= metrics["target_test_acc"] <= 1


def test_uda_table_writes_a_table_between_its_markers_only(tmp_path):
    table = _uda_table()
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# R\n\nbefore\n<!-- uda_table:validators -->\nold table\n<!-- /uda_table:validators -->\nafter\n")
    table.write_into(str(doc), "validators", "| new |\n")
    assert doc.read_text() == ("# R\n\nbefore\n<!-- uda_table:validators -->\n| new |\n"
                               "<!-- /uda_table:validators -->\nafter\n")
    with pytest.raises(SystemExit, match="uda_table:report"):  # no markers: the file is left alone
        table.write_into(str(doc), "report", "| x |\n")
    assert "| new |" in doc.read_text()


def test_uda_table_report_says_how_each_cell_was_trained(tmp_path):
    """--report reads each run's overrides back from its recorded command (written as run_one writes it, paths with
    spaces included): runs of one cell trained differently get a row each, so the table never hides a setting, and a
    refine run's --init, which names its own pair and seed, does not split the cell."""
    import argparse
    import shlex

    table = _uda_table()
    out = tmp_path / "my runs"
    (out / "results").mkdir(parents=True)
    init = str(out / "final" / "dann_{source}_to_{target}_s{seed}")
    for method, seeds, extra in (("gta", "0,1", ["--method.augment=true"]), ("gta", "2", []),
                                 ("refine", "0,1,2", [])):
        args = argparse.Namespace(out=str(out), data=str(tmp_path / "my data"), device="cpu", steps={"*": 1500},
                                  set=["--train.eval_every=250", *extra], init=init)
        for run in table.plan(argparse.Namespace(pairs="usps:mnist", methods=method, seeds=seeds, ablation="")):
            record = {**run, "returncode": 0, "command": shlex.join(table.train_argv(run, args)),
                      "metrics": {"steps": 1500, "steps_per_s": 1.0, "target_test_acc": 0.9,
                                  "oracle_target_test_acc": 0.91, "selected_by": "labelled_val"}}
            (out / "results" / f"{run['name']}.json").write_text(json.dumps(record))
    text = table.report(argparse.Namespace(out=str(out), final=False))
    assert "| usps → mnist | GTA | 1500 | `--train.eval_every=250` `--method.augment=true` | 0, 1 |" in text
    assert "| usps → mnist | GTA | 1500 | `--train.eval_every=250` | 2 |" in text
    refine = [line for line in text.splitlines() if "| usps → mnist | DANN + refinement" in line]
    assert len(refine) == 1 and refine[0].endswith("| 0, 1, 2 |") and "dann_{pair}_s{seed}" in refine[0]
    assert "my data" not in text and "checkpoints" not in text  # place and output paths are not settings
    assert table.run_settings({"command": "not a dlcv command"}) == "?"
    assert table.run_settings({"command": None}) == "?"


def test_uda_table_ships_the_seed_its_selection_rule_ranks_best(tmp_path):
    """Runs whose steps a label-free validator picked are ranked among seeds by that validator's score at the picked
    step (from their logs), not by source val; source-val runs keep source val."""
    table = _uda_table()

    def run(seed: int, rule: str, val: float, score: float) -> dict:
        name = f"gta_mnistm_to_usps_s{seed}"
        log = tmp_path / "runs" / name / "metrics.jsonl"
        log.parent.mkdir(parents=True)
        log.write_text("\n".join(json.dumps({"step": step, "validator/target_bnm": score - (step != 2000)})
                                 for step in (1000, 2000)) + "\n")
        return {"name": name, "seed": seed, "metrics": {"selected_by": rule, "selected_step": 2000,
                                                        "labelled_val_acc": val}}

    by_bnm = [run(0, "target_bnm", 0.951, 0.09), run(1, "target_bnm", 0.955, 0.08)]
    assert max(by_bnm, key=lambda r: table.selection_score(r, str(tmp_path)))["seed"] == 0
    assert table.selection_score({**by_bnm[1], "metrics": {**by_bnm[1]["metrics"], "selected_by": "labelled_val"}},
                                 str(tmp_path)) == 0.955
    with pytest.raises(SystemExit, match="no target_bnm score at step 1500"):
        table.selection_score({**by_bnm[0], "metrics": {**by_bnm[0]["metrics"], "selected_step": 1500}}, str(tmp_path))
    recorded = {**by_bnm[1], "name": "trained_elsewhere", "metrics": {**by_bnm[1]["metrics"], "selected_score": 0.5}}
    assert table.selection_score(recorded, str(tmp_path)) == 0.5  # the result's own score: no log needed


def test_uda_table_refuses_to_rank_seeds_selected_by_different_rules(tmp_path):
    import argparse

    table = _uda_table()
    runs = [{"name": f"gta_mnistm_to_usps_s{seed}", "seed": seed, "method": "gta", "source": "mnistm",
             "target": "usps", "variant": None, "returncode": 0,
             "metrics": {"selected_by": rule, "selected_step": 10, "selected_score": 0.1, "labelled_val_acc": 0.9}}
            for seed, rule in ((0, "target_bnm"), (1, "labelled_val"))]
    (tmp_path / "summary.json").write_text(json.dumps(runs))
    with pytest.raises(SystemExit, match=r"selected by different rules \(labelled_val, target_bnm\)"):
        table.ship(argparse.Namespace(out=str(tmp_path), pairs="", final=False, ship=str(tmp_path / "ship"),
                                      ship_methods="gta"))
    assert not (tmp_path / "ship").exists()
    assert table.selection_phrase(runs, ["gta"]) == "each run's own rule (see its overrides) (no target labels)"
    assert table.selection_phrase(runs[:1], ["gta"]) == ("weights picked by batch nuclear norm (BNM) on target val "
                                                         "(no target labels)")
