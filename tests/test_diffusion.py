"""Noise schedule, DDPM/DDIM steps, classifier-free guidance, diffusion training and the course's sample files."""

import json

import pytest
import torch
from PIL import Image

from dlcv import checkpoint, service
from dlcv.cli import main
from dlcv.config import apply_overrides
from dlcv.diffusion import (NoiseSchedule, ScheduleConfig, ddim_step, ddim_timesteps, ddpm_step, guided_eps,
                            predict_x0, q_sample)
from dlcv.models.unet import UNet, UNetConfig
from dlcv.presets import get_preset
from dlcv.sampling import predict_eps, sample_diffusion
from dlcv.training import train
from dlcv.viz import digit_names

TINY_UNET = UNetConfig(base_width=8, channel_mults=(1, 2), attention_levels=(1,), image_size=8, dropout=0.0)


def tiny_model() -> UNet:
    torch.manual_seed(0)
    model = UNet(TINY_UNET).eval()
    for p in model.parameters():  # zero-initialised output layers would make every eps 0
        p.data.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_strictly_decreases(kind):
    s = NoiseSchedule(ScheduleConfig(kind=kind, num_timesteps=1000))
    ab = s.alpha_bar
    assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < ab[0] < 1
    assert ab[-1] < 1e-3  # x_T is nearly pure noise


def test_q_sample_statistics():
    s = NoiseSchedule(ScheduleConfig())
    t = 300
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    x_t = q_sample(s, x0, torch.full((20000,), t), torch.randn(20000, 1, 1, 1, generator=torch.Generator().manual_seed(0)))
    ab = s.alpha_bar[t].item()
    assert abs(x_t.mean().item() - ab**0.5 * 0.5) < 0.02
    assert abs(x_t.std().item() - (1 - ab) ** 0.5) < 0.02


def test_ddim_with_the_true_noise_recovers_x0():
    """With an oracle eps, every DDIM step lands on the same x0: the sampler's algebra is right."""
    s = NoiseSchedule(ScheduleConfig())
    x0 = torch.rand(4, 3, 8, 8) * 1.6 - 0.8
    x = q_sample(s, x0, torch.full((4,), 999), torch.randn(4, 3, 8, 8))
    steps = ddim_timesteps(1000, 10)
    for i, t in enumerate(steps):
        ab = s.alpha_bar[t].float()
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = ddim_step(s, x, t, steps[i + 1] if i + 1 < len(steps) else -1, eps, eta=0.0, noise=None)
    assert torch.allclose(x, x0, atol=1e-4)


def test_ddpm_last_step_is_the_posterior_mean_without_noise():
    s = NoiseSchedule(ScheduleConfig())
    x0 = torch.rand(2, 3, 8, 8) - 0.5
    eps = torch.randn(2, 3, 8, 8)
    x1 = q_sample(s, x0, torch.zeros(2, dtype=torch.long), eps)
    out = ddpm_step(s, x1, 0, eps, noise=torch.randn(2, 3, 8, 8) * 100)
    assert torch.allclose(out, predict_x0(s, x1, torch.zeros(2, dtype=torch.long), eps).clamp(-1, 1), atol=1e-5)


def test_guidance_formula_and_w0_is_conditional():
    c, u = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    assert torch.allclose(guided_eps(c, u, 2.0), 3 * c - 2 * u)
    model = tiny_model()
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        cond = model(x, torch.full((3,), 50), y)
    assert torch.equal(predict_eps(model, x, 50, y, guidance=0.0), cond)
    assert not torch.allclose(predict_eps(model, x, 50, y, guidance=1.0), cond)


def test_ddim_eta0_is_deterministic_and_batch_independent():
    model, s = tiny_model(), NoiseSchedule(ScheduleConfig(num_timesteps=50))
    labels = torch.tensor([0, 1, 2, 3, 4])
    a, _ = sample_diffusion(model, s, labels, seed=7, steps=5, guidance=1.0, batch_size=5, amp=False)
    b, _ = sample_diffusion(model, s, labels, seed=7, steps=5, guidance=1.0, batch_size=2, amp=False)
    c, _ = sample_diffusion(model, s, labels, seed=8, steps=5, guidance=1.0, batch_size=5, amp=False)
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c)
    d, kept = sample_diffusion(model, s, labels, seed=7, sampler="ddpm", guidance=0.0, keep=(49, 10), amp=False)
    assert d.shape == a.shape and set(kept) == {49, 10} and kept[49].shape == a.shape


def test_uncond_every_reuses_the_unconditional_eps():
    model, s = tiny_model(), NoiseSchedule(ScheduleConfig(num_timesteps=50))
    labels = torch.tensor([0, 1, 2])
    calls: list[int] = []  # batch sizes through the network
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    exact, _ = sample_diffusion(model, s, labels, seed=3, steps=6, guidance=2.0, amp=False, channels_last=False)
    assert calls == [6] * 6  # conditional + unconditional on every step
    calls.clear()
    reused, _ = sample_diffusion(model, s, labels, seed=3, steps=6, guidance=2.0, amp=False, channels_last=False, uncond_every=2)
    assert calls == [6, 3] * 3  # the unconditional half runs on steps 0, 2, 4 only
    assert reused.shape == exact.shape and not torch.allclose(reused, exact)
    again, _ = sample_diffusion(model, s, labels, seed=3, steps=6, guidance=2.0, amp=False, channels_last=False, uncond_every=1)
    assert torch.equal(again, exact)
    with pytest.raises(ValueError, match="uncond_every=0 must be >= 1"):
        sample_diffusion(model, s, labels, uncond_every=0)


def test_unknown_sampler_and_bad_steps():
    model, s = tiny_model(), NoiseSchedule(ScheduleConfig(num_timesteps=50))
    with pytest.raises(ValueError, match=r"choose from \['ddpm', 'ddim', 'dpm\+\+2m'\]"):
        sample_diffusion(model, s, torch.tensor([0]), sampler="euler")
    with pytest.raises(ValueError, match="does not work with sampler dpm"):
        sample_diffusion(model, s, torch.tensor([0]), sampler="dpm++2m", uncond_every=2)
    with pytest.raises(ValueError, match="between 1 and"):
        ddim_timesteps(50, 51)


@pytest.fixture
def tiny_ddpm_cfg(tiny_digits, tmp_path):
    return apply_overrides(get_preset("ddpm_digits"), [
        f"--data.root={tiny_digits}", f"--train.out_dir={tmp_path / 'runs'}", "--train.steps=2",
        "--train.batch_size=4", "--model.base_width=8", "--model.channel_mults=1,2", "--model.attention_levels=1",
        "--train.sample_every=2", "--train.save_every=1", "--train.progress=false", "--train.deterministic=true",
        "--method.schedule.num_timesteps=30"])


def test_train_diffusion_writes_ema_checkpoint_with_schedule(tiny_ddpm_cfg, tmp_path):
    out = train(tiny_ddpm_cfg, out=tmp_path / "ckpt")
    model, meta = checkpoint.load(out)
    assert meta["schedule"]["num_timesteps"] == 30 and meta["sampling"]["sampler"] == "ddim"
    assert (tmp_path / "runs" / "ddpm_digits" / "samples" / "step_000002.png").is_file()
    eps = model(torch.randn(2, 3, 28, 28), torch.tensor([0, 29]), torch.tensor([3, 10]))
    assert eps.shape == (2, 3, 28, 28) and torch.isfinite(eps).all()
    resumed = apply_overrides(tiny_ddpm_cfg, ["--train.steps=3"])
    train(resumed, out=tmp_path / "ckpt2")
    steps = [json.loads(line)["step"] for line in (tmp_path / "runs/ddpm_digits/metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # log points only (log_every=100): the last step of each run; nothing redone


def test_sample_cli_writes_exactly_the_course_files(tiny_ddpm_cfg, tmp_path, capsys):
    ckpt = train(tiny_ddpm_cfg, out=tmp_path / "ckpt")
    out = tmp_path / "samples"
    args = ["sample", str(ckpt), "--per-class", "3", "--out", str(out), "--seed", "5", "--steps", "4"]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(digit_names(3)) and names[0] == "0_001.png" and names[-1] == "9_003.png"
    with Image.open(out / "7_002.png") as img:
        assert img.size == (28, 28) and img.mode == "RGB"
    first = (out / "3_001.png").read_bytes()
    assert main(args) == 2 and "already holds images" in capsys.readouterr().err  # never mixes two sample sets
    assert main(args + ["--force"]) == 0
    assert (out / "3_001.png").read_bytes() == first  # same seed, same bytes
    assert main(args[:3] + ["0"] + args[4:]) == 2 and "--per-class must be at least 1, got 0" in capsys.readouterr().err
    assert main(args[:5] + [str(out / "3_001.png"), "--force"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and (out / "3_001.png").read_bytes() == first


def test_service_rejects_non_diffusion_checkpoints(tmp_ckpt, tmp_path):
    with pytest.raises(ValueError, match="does not generate images"):
        service.sample_to_folder(tmp_ckpt, tmp_path / "x", per_class=1)


def test_guidance_interval_outside_every_step_equals_no_guidance():
    # layout pinned: "auto" times both layouts per call, and the two may differ in the last bit
    model, s = tiny_model(), NoiseSchedule(ScheduleConfig(num_timesteps=50))
    labels = torch.tensor([1, 2])
    plain, _ = sample_diffusion(model, s, labels, steps=5, guidance=0.0, amp=False, channels_last=False)
    empty, _ = sample_diffusion(model, s, labels, steps=5, guidance=3.0, guidance_interval=(100, 200), amp=False, channels_last=False)
    full, _ = sample_diffusion(model, s, labels, steps=5, guidance=3.0, guidance_interval=(0, 49), amp=False, channels_last=False)
    everywhere, _ = sample_diffusion(model, s, labels, steps=5, guidance=3.0, amp=False, channels_last=False)
    assert torch.equal(plain, empty) and torch.equal(full, everywhere) and not torch.equal(plain, full)


def test_dpm_solver_first_order_step_is_ddim():
    """DPM-Solver++(1) (Lu et al. 2022 eq. 9, the 2M step without a previous x0) equals DDIM with eta = 0."""
    from dlcv.diffusion import dpm_solver_2m_step

    schedule = NoiseSchedule(ScheduleConfig())
    torch.manual_seed(0)
    x_t, x0 = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1
    ab = schedule.alpha_bar[700].float()
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # the eps that implies this x0
    ddim = ddim_step(schedule, x_t, 700, 400, eps, eta=0.0, noise=None, clip=False)
    dpm = dpm_solver_2m_step(schedule, x_t, 700, 400, x0, None, None)
    assert torch.allclose(dpm, ddim, atol=1e-4)
    assert torch.equal(dpm_solver_2m_step(schedule, x_t, 5, -1, x0, x0, 10), x0)  # to x0: first order


def test_dpm_solver_2m_converges_to_the_ddim_solution():
    """Both solve the same probability-flow ODE: with more steps DPM-Solver++(2M) approaches a fine DDIM run, and at
    few steps it is closer to it than DDIM with the same number of network calls."""
    model, labels = tiny_model(), torch.tensor([1, 2])
    schedule = NoiseSchedule(ScheduleConfig(num_timesteps=200))
    run = lambda sampler, steps: sample_diffusion(model, schedule, labels, seed=3, sampler=sampler, steps=steps,
                                                   guidance=1.0, amp=False)[0]
    reference = run("ddim", 200)
    error = {(s, n): (run(s, n) - reference).abs().mean().item() for s in ("ddim", "dpm++2m") for n in (5, 40)}
    assert error[("dpm++2m", 40)] < error[("dpm++2m", 5)]
    assert error[("dpm++2m", 5)] < error[("ddim", 5)]
    assert error[("dpm++2m", 40)] < 0.02
    again = run("dpm++2m", 5)
    assert torch.equal(again, run("dpm++2m", 5))  # deterministic


@pytest.mark.parametrize("T, steps", [(1000, 8), (1000, 15), (1000, 200), (50, 5), (50, 49)])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpm_timesteps_are_even_in_log_snr_distinct_and_start_at_x_T(T, steps, kind):
    from dlcv.diffusion import dpm_timesteps, half_log_snr

    s = NoiseSchedule(ScheduleConfig(num_timesteps=T, kind=kind))
    ts = dpm_timesteps(s, steps)
    assert len(ts) == steps and ts[0] == T - 1 and ts[-1] >= 1
    assert all(a > b for a, b in zip(ts, ts[1:]))  # strictly decreasing: no network call repeated
    # where no rounding collides (linear betas, few steps), each lambda step is (lambda_0 - lambda_{T-1}) / steps
    if steps <= 15 and kind == "linear":
        lam = [half_log_snr(s, t) for t in ts] + [half_log_snr(s, 0)]
        gaps = [b - a for a, b in zip(lam, lam[1:])]
        assert max(gaps) - min(gaps) < 0.35 * (lam[-1] - lam[0]) / steps
    with pytest.raises(ValueError, match="between 1 and"):
        dpm_timesteps(s, T)
