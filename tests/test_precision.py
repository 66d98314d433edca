"""dlcv.precision: the probe picks the fastest combination, caches it per machine, logs one line, and an explicit
setting always wins; sampling and prediction go through it without changing what they produce beyond bf16 noise."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch

from dlcv import precision
from dlcv.precision import FP32, Choice

CPU_BF16 = precision.cpu_bf16


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DLCV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: "native")  # a CPU with bf16 instructions, whatever runs this


def sleeper(seconds: dict[Choice, float], calls: list[Choice]):
    """A fake step that takes a fixed time per combination and records what was timed."""
    def run(choice: Choice) -> None:
        calls.append(choice)
        time.sleep(seconds[choice])
    return run


SLOW_FP32 = {FP32: 0.02, Choice(False, True): 0.018, Choice(True, False): 0.012, Choice(True, True): 0.006}


def test_auto_picks_the_fastest_caches_it_and_logs_one_line(caplog):
    calls: list[Choice] = []
    with caplog.at_level(logging.INFO, logger="dlcv.precision"):
        choice = precision.choose("train", "toy", 8, sleeper(SLOW_FP32, calls), "cpu")
    assert choice == Choice(True, True)
    assert set(calls) == set(SLOW_FP32)  # every combination was timed
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "bf16 + channels_last" in lines[0] and "x fp32" in lines[0]
    cache = json.loads(precision.cache_path().read_text())
    (key, entry), = cache.items()
    assert "toy" in key and "batch 8" in key and torch.__version__ in key
    assert entry["bf16"] is True and entry["channels_last"] is True

    calls.clear()  # the second time, nothing is timed
    with caplog.at_level(logging.INFO, logger="dlcv.precision"):
        caplog.clear()
        assert precision.choose("train", "toy", 8, sleeper(SLOW_FP32, calls), "cpu") == Choice(True, True)
    assert calls == [] and "cached" in caplog.records[0].getMessage()
    # another batch size or model is another entry
    assert precision.choose("train", "toy", 16, sleeper(SLOW_FP32, calls), "cpu") == Choice(True, True)
    assert len(json.loads(precision.cache_path().read_text())) == 2 and calls


def test_fp32_stays_unless_another_is_clearly_faster(caplog):
    even = {FP32: 0.01, Choice(False, True): 0.0099, Choice(True, False): 0.03, Choice(True, True): 0.03}
    with caplog.at_level(logging.INFO, logger="dlcv.precision"):
        assert precision.choose("sample", "toy", 4, sleeper(even, []), "cpu") == FP32
    assert "fp32 + default layout" in caplog.records[0].getMessage()
    # pick() itself: within the 3 % margin the plain option is kept, beyond it the faster one wins
    assert precision.pick({FP32: 1.0, Choice(True, True): 0.98}) == FP32
    assert precision.pick({FP32: 1.0, Choice(True, True): 0.9}) == Choice(True, True)


@pytest.mark.parametrize("amp, layout, expected", [("fp32", "false", FP32), ("bf16", "true", Choice(True, True)),
                                                   (False, False, FP32), ("fp32", "true", Choice(False, True))])
def test_an_explicit_choice_always_wins_and_times_nothing(amp, layout, expected):
    calls: list[Choice] = []
    assert precision.choose("train", "toy", 8, sleeper(SLOW_FP32, calls), "cpu", amp, layout) == expected
    assert calls == [] and not precision.cache_path().exists()


def test_a_pinned_half_probes_only_the_other_half():
    calls: list[Choice] = []
    assert precision.choose("train", "toy", 8, sleeper(SLOW_FP32, calls), "cpu", amp="fp32") == Choice(False, True)
    assert set(calls) == {FP32, Choice(False, True)}


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"k": {"bf16": "yes"}}'])
def test_a_corrupt_cache_is_probed_again_and_rewritten(text):
    path = precision.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert precision.choose("train", "toy", 8, sleeper(SLOW_FP32, []), "cpu") == Choice(True, True)
    assert isinstance(json.loads(path.read_text()), dict)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"amp='fp16' is not allowed; choose from \['auto', 'bf16', 'fp32'\]"):
        precision.candidates("fp16", "auto", "cpu")
    with pytest.raises(ValueError, match="channels_last='maybe'"):
        precision.candidates("auto", "maybe", "cpu")
    assert precision.normalize_amp(True) == "auto" and precision.normalize_amp("false") == "fp32"
    assert precision.normalize_layout(True) == "true"


@pytest.mark.parametrize("flags, expected", [("fpu avx2 avx512f avx512_bf16", "native"), ("fpu amx_bf16", "native"),
                                             ("fp asimd bf16", "native"), ("fpu sse4_2 avx2 fma", "emulated"),
                                             ("", "unknown")])
def test_a_cpu_that_emulates_bf16_is_not_timed_in_it(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_bf16", CPU_BF16)  # the real one, reading the flags set here
    monkeypatch.setattr(precision, "cpu_info", lambda: ("test cpu", frozenset(flags.split())))
    assert precision.cpu_bf16() == expected
    calls: list[Choice] = []
    choice = precision.choose("train", "toy", 8, sleeper(SLOW_FP32, calls), "cpu")
    assert choice.bf16 == (expected != "emulated")
    assert {c.bf16 for c in calls} == ({False} if expected == "emulated" else {False, True})
    # bf16 still runs there (slowly), asked for or kept by a resumed run: the flags only narrow what auto times
    assert len(precision.candidates("auto", "auto", "cpu")) == 4
    assert precision.choose("train", "toy", 8, sleeper(SLOW_FP32, []), "cpu", "bf16", "false") == Choice(True, False)
    calls.clear()
    choice, line = precision.choose_explained("train", "toy2", 8, sleeper(SLOW_FP32, calls), "cpu", "auto", "false")
    if expected == "emulated":  # one option left: nothing timed, and the line says why
        assert (choice, line, calls) == (FP32, "fp32 + default layout (bf16 is emulated on this CPU)", [])
    else:
        assert choice == Choice(True, False) and line.startswith("bf16 + default layout: ") and calls


def test_cpuinfo_is_read_for_x86_and_arm():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert precision.parse_cpuinfo(x86) == ("AMD EPYC", frozenset({"fpu", "avx2", "avx512_bf16"}))
    assert precision.parse_cpuinfo(arm) == ("cpu", frozenset({"fp", "asimd", "sve", "bf16", "i8mm"}))
    assert precision.parse_cpuinfo("") == ("cpu", frozenset())


def test_the_probe_leaves_the_random_streams_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    precision.choose("train", "rng", 8, lambda c: torch.rand(100), "cpu")
    assert torch.equal(torch.rand(3), expected)


def test_sampling_goes_through_the_choice_and_bf16_stays_close(tmp_path):
    from dlcv.models.gan import Generator, GeneratorConfig
    from dlcv.sampling import sample_gan

    generator = Generator(GeneratorConfig(width=8)).eval()
    fp32 = sample_gan(generator, 6, seed=1, amp="fp32", channels_last="false")
    again = sample_gan(generator, 6, seed=1, amp="fp32", channels_last="false")
    bf16 = sample_gan(generator, 6, seed=1, amp="bf16", channels_last="true")
    auto = sample_gan(generator, 6, seed=1)
    assert torch.equal(fp32, again)
    assert (bf16 - fp32).abs().max() < 0.1  # bf16 keeps ~3 significant digits; images are in [-1, 1]
    assert (auto - fp32).abs().max() < 0.1
    assert precision.cache_path().is_file()  # auto probed and cached


def test_prediction_files_may_use_bf16_metrics_stay_fp32():
    from dlcv.metrics import predict_logits
    from dlcv.models.classifier import Classifier, ClassifierConfig

    model = Classifier(ClassifierConfig(kind="convnet", width=4)).eval()
    images = torch.randint(0, 256, (12, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = predict_logits(model, images)
    assert not precision.cache_path().exists()  # metrics: no probe, no bf16
    fast = predict_logits(model, images, amp="auto", channels_last="auto")
    assert precision.cache_path().is_file()
    assert torch.allclose(plain, fast, atol=0.05, rtol=0.05)


def test_the_environment_pins_what_a_command_left_on_auto(monkeypatch):
    calls: list[Choice] = []
    monkeypatch.setenv("DLCV_AMP", "fp32")
    assert precision.choose("sample", "toy", 4, sleeper(SLOW_FP32, calls), "cpu") == Choice(False, True)
    assert set(calls) == {FP32, Choice(False, True)}  # only the layout was left open
    monkeypatch.setenv("DLCV_CHANNELS_LAST", "false")
    assert precision.choose("sample", "toy2", 4, sleeper(SLOW_FP32, calls), "cpu") == FP32
    assert precision.choose("sample", "toy2", 4, sleeper(SLOW_FP32, calls), "cpu", amp="bf16") == Choice(True, False)
    monkeypatch.setenv("DLCV_AMP", "fp16")
    with pytest.raises(ValueError, match="choose from"):
        precision.candidates("auto", "auto", "cpu")
