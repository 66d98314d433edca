"""Hub push / pull against a local in-memory Hub (tests/hub_server.py) with the real huggingface_hub client:
one commit, a truthful model card, identical outputs after pull, offline reload, clear errors, no token leaks."""

import logging
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import constants

from dlcv import checkpoint, hub
from dlcv.cli import main
from dlcv.config import apply_overrides, to_dict
from dlcv.models.classifier import Classifier, ClassifierConfig
from dlcv.presets import get_preset
from dlcv.training.common import run_record

from hub_server import HubServer

SECRET = "hf_dlcvTestSecret0123456789abcdef"
WRONG = "hf_dlcvWrongToken9876543210fedcba"


@pytest.fixture
def hub_server(monkeypatch):
    """A fresh local Hub that accepts only SECRET; HF_TOKEN=SECRET, online mode."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import; patch the constant itself
    with HubServer(token=SECRET) as server:
        yield server


def go_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_uploads_three_files_in_one_commit(hub_server, tmp_ckpt):
    url = hub.push(tmp_ckpt, "org/tiny", endpoint=hub_server.url)
    repo = hub_server.repos["org/tiny"]
    assert url == f"{hub_server.url}/org/tiny/commit/{repo.main}"
    assert [paths for _, _, paths in repo.log] == [[".gitattributes"],  # the Hub's own first commit
                                                   ["README.md", "config.json", "model.safetensors"]]
    files = repo.commits[repo.main]
    assert files["config.json"] == (tmp_ckpt / "config.json").read_bytes()
    assert files["model.safetensors"] == (tmp_ckpt / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "dlcv" and meta["license"] == "other" and "classifier" in meta["tags"]
    assert "| val_accuracy | 0.5 |" in card  # tmp_ckpt's only metric
    assert "Not recorded" in card and "has no `run` entry" in card  # no run in tmp_ckpt: nothing invented
    assert hub_server.auth and set(hub_server.auth) == {f"Bearer {SECRET}"}  # HF_TOKEN was what authenticated


def test_model_card_states_data_metrics_and_a_command_that_rebuilds_the_run(tmp_path):
    run = apply_overrides(get_preset("classifier_digits"), ["--name=digits_small", "--model.width=4",
                                                            "--train.steps=7", "--data.domain=usps"])
    metrics = {"val_accuracy": 0.5, "test_accuracy": 0.25}
    folder = checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "ckpt",
                      {"run": run_record(run), "metrics": metrics})
    card = hub.model_card(folder, "org/digits_small")
    assert front_matter(card)["datasets"] == ["usps"]
    assert "| val_accuracy | 0.5 |" in card and "| test_accuracy | 0.25 |" in card
    assert "dataset `digits`, domain `usps`" in card and "steps 7" in card
    command = next(line for line in card.splitlines() if line.startswith("python -m dlcv train "))
    assert command == ("python -m dlcv train classifier_digits --name=digits_small --model.width=4 "
                       "--data.domain=usps --train.steps=7")
    preset, *overrides = shlex.split(command)[4:]
    assert to_dict(apply_overrides(get_preset(preset), overrides)) == to_dict(run)  # the command reproduces the run


def test_pull_fresh_cache_then_offline_from_cache(hub_server, tmp_ckpt, tiny_images, tmp_path, monkeypatch):
    from dlcv.data.loaders import to_model_range

    hub.push(tmp_ckpt, "org/tiny", endpoint=hub_server.url)
    cache = tmp_path / "fresh_cache"
    folder = hub.pull("org/tiny", cache_dir=cache, endpoint=hub_server.url)
    assert folder.is_relative_to(cache) and sorted(p.name for p in folder.iterdir()) == sorted(hub.HUB_FILES)
    pulled, meta = checkpoint.load(folder)
    local, _ = checkpoint.load(tmp_ckpt)
    assert pulled.state_dict().keys() == local.state_dict().keys() and meta["metrics"] == {"val_accuracy": 0.5}
    x = to_model_range(tiny_images)
    assert torch.equal(pulled(x), local(x))

    seen = len(hub_server.requests)
    go_offline(monkeypatch)
    assert hub.pull("org/tiny", cache_dir=cache, endpoint=hub_server.url) == folder
    assert torch.equal(checkpoint.load(folder)[0](x), local(x))
    assert len(hub_server.requests) == seen  # served from the cache: nothing reached the server


def test_pull_errors_name_the_repo_and_the_fix(hub_server, tmp_ckpt, tmp_path, monkeypatch):
    hub_server.add_repo("org/no-weights", {"config.json": (tmp_ckpt / "config.json").read_bytes()})
    hub_server.add_repo("org/no-config", {"model.safetensors": (tmp_ckpt / "model.safetensors").read_bytes()})
    hub.push(tmp_ckpt, "org/tiny", endpoint=hub_server.url)
    cases = [("org/missing", "no model repo org/missing"),
             ("org/no-weights", "org/no-weights has no model.safetensors"),
             ("org/no-config", "org/no-config has no config.json")]
    for repo_id, fragment in cases:
        with pytest.raises(hub.HubError, match=fragment) as err:
            hub.pull(repo_id, cache_dir=tmp_path / "cache", endpoint=hub_server.url)
        assert "\n" not in str(err.value)
    with pytest.raises(hub.HubError, match="org/tiny has no revision 'v9'"):
        hub.pull("org/tiny", revision="v9", cache_dir=tmp_path / "cache", endpoint=hub_server.url)

    seen = len(hub_server.requests)
    go_offline(monkeypatch)
    with pytest.raises(hub.HubError, match=r"org/tiny is not in the Hub cache .*empty.* HF_HUB_OFFLINE=1") as err:
        hub.pull("org/tiny", cache_dir=tmp_path / "empty", endpoint=hub_server.url)
    assert "\n" not in str(err.value) and len(hub_server.requests) == seen


def test_cli_push_pull_and_the_token_never_shows(hub_server, tmp_ckpt, tmp_path, capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub's most verbose request logging
    url = hub_server.url

    assert main(["-v", "hub", "push", str(tmp_ckpt), "--repo", "org/cli", "--endpoint", url]) == 0
    pushed = capfd.readouterr()
    assert f"to {url}/org/cli/commit/{hub_server.repos['org/cli'].main}" in pushed.out

    assert main(["hub", "pull", "org/cli", "--cache-dir", str(tmp_path / "cache"), "--endpoint", url]) == 0
    pulled = capfd.readouterr()
    folder = Path(pulled.out.strip())
    assert folder.is_relative_to(tmp_path / "cache") and (folder / "model.safetensors").is_file()

    monkeypatch.setenv("HF_TOKEN", WRONG)
    assert main(["-v", "hub", "push", str(tmp_ckpt), "--repo", "org/cli", "--endpoint", url]) == 2
    refused = capfd.readouterr()
    error = refused.err.strip().splitlines()[-1]  # main()'s one line, after huggingface_hub's debug log lines
    assert error.startswith("error: pushing") and "HTTP 401" in error and "HF_TOKEN" in error
    assert f"Bearer {WRONG}" in hub_server.auth  # the wrong token did reach the server, so it could have leaked

    shown = "".join([pushed.out, pushed.err, pulled.out, pulled.err, refused.out, refused.err, caplog.text,
                     *(str(r.args) for r in caplog.records)])
    assert caplog.records and SECRET not in shown and WRONG not in shown
