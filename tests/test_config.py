"""Typed configs: dict round trips, typed overrides, clear errors for unknown keys, presets are copies."""

import pytest

from dlcv.config import RunConfig, apply_overrides, flat_fields, from_dict, override_text, to_dict
from dlcv.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips(name):
    cfg = get_preset(name)
    assert to_dict(from_dict(RunConfig, to_dict(cfg))) == to_dict(cfg)


def test_overrides_cast_to_field_types():
    cfg = apply_overrides(get_preset("classifier_digits"), [
        "--train.lr=1e-4", "--train.steps=7", "--train.amp=false", "--train.betas=0.9,0.99",
        "--model.width=8", "--data.domain=usps", "--method.label_smoothing=0.1", "--name=mine"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 7 and cfg.train.amp == "fp32"  # "false" still reads, as fp32
    assert cfg.train.betas == (0.9, 0.99)
    assert cfg.model.width == 8 and cfg.data.domain == "usps" and cfg.name == "mine"
    assert cfg.method["label_smoothing"] == 0.1


def test_overrides_do_not_touch_the_preset():
    apply_overrides(get_preset("classifier_digits"), ["--train.steps=3"])
    assert get_preset("classifier_digits").train.steps == PRESETS["classifier_digits"].train.steps
    cfg = get_preset("classifier_digits")
    cfg.train.steps = 1
    assert PRESETS["classifier_digits"].train.steps != 1


@pytest.mark.parametrize("override, fragment", [
    ("--train.lrr=1", "unknown override key 'train.lrr'"),
    ("--nosuch.lr=1", "unknown override key"),
    ("--train.steps=ten", "not a valid int"),
    ("--train.amp=maybe", "train.amp='maybe' is not allowed; choose from ['auto', 'bf16', 'fp32']"),
    ("--data.dataset=cifar", "choose from"),
    ("--model.kind=resnet", "choose from"),
    ("--train.lr", "must look like --section.key=value"),
])
def test_bad_overrides_name_the_problem(override, fragment):
    with pytest.raises((KeyError, ValueError)) as info:
        apply_overrides(get_preset("classifier_digits"), [override])
    assert fragment in str(info.value)


def test_unknown_preset_lists_choices():
    with pytest.raises(KeyError, match="choose from"):
        get_preset("gan_of_doom")


def test_from_dict_rejects_unknown_keys():
    d = to_dict(get_preset("classifier_digits"))
    d["train"]["learning_rate"] = 1
    with pytest.raises(KeyError, match="learning_rate"):
        from_dict(RunConfig, d)


def test_data_root_comes_from_environment(monkeypatch):
    monkeypatch.setenv("DLCV_DATA", "/somewhere/data")
    from dlcv.config import DataConfig

    assert DataConfig().root == "/somewhere/data"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_flat_fields_and_override_text_rebuild_the_config(name):
    """flat_fields + override_text are apply_overrides' inverse: every field of a preset (its method with every option,
    as runs record it) written back as overrides turns a changed config into the preset again."""
    from dlcv.training.common import run_record

    cfg = get_preset(name)
    fields = flat_fields({k: v for k, v in run_record(cfg).items() if k not in ("family", "architecture", "name")})
    assert "train.steps" in fields and any(k.startswith("model.") for k in fields) and all("." in k for k in fields)
    changed = ["--train.steps=1", "--train.lr=0.5", "--train.betas=0.1,0.2", "--train.tensorboard=false"]
    changed += [f"--{k}=12345" for k, v in fields.items() if k.startswith("method.") and type(v) in (int, float)][:2]
    other = apply_overrides(get_preset(name), changed)
    rebuilt = apply_overrides(other, [f"--{k}={override_text(v)}" for k, v in fields.items()])
    assert run_record(rebuilt) == run_record(cfg)
    assert override_text(True) == "true" and override_text(None) == "none" and override_text((1, 2)) == "1,2"


@pytest.mark.parametrize("preset, section, key", [
    ("uda_assoc", "model", "arch"), ("uda_assoc", "model", "input_norm"), ("classifier_digits", "model", "kind"),
    ("classifier_digits", "data", "dataset"), ("dcgan_faces", "model", "conditioning"),
])
def test_a_config_file_with_an_unknown_choice_names_the_field(preset, section, key):
    # config.json is read through from_dict, not the CLI's parser: __post_init__ checks the Literal fields
    d = to_dict(get_preset(preset))
    d[section][key] = "nonsense"
    with pytest.raises(ValueError, match=rf"^{section}\.{key}='nonsense' is not allowed; choose from \["):
        from_dict(RunConfig, d)
