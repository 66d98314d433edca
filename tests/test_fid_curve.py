"""`python -m dlcv fid-curve`: every snapshot measured once (cached in fid_curve.jsonl), hours from metrics.jsonl
(interpolated between log points),
the figure written, and a reference without a recorded FID refused in one line."""

import json

import pytest

from dlcv import evaluate as evaluate_module
from dlcv.cli import main


@pytest.fixture
def run(tmp_path, monkeypatch):
    folder = tmp_path / "runs" / "toy_faces"
    for step in (100, 200):
        (folder / "snapshots" / f"step_{step:06d}").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time_s": s * 36.0}) + "\n"
                                                  for s in (100, 200)))
    measured = []

    def fake(path, data, options=None):
        measured.append(path.name)
        return {"fid": 50.0 - len(measured), "kid_mean": 0.01}

    monkeypatch.setattr(evaluate_module, "evaluate", fake)
    return folder, measured


def test_each_snapshot_is_measured_once_and_the_figure_written(run, tmp_path, capsys):
    folder, measured = run
    out = tmp_path / "curve.png"
    assert main(["fid-curve", str(folder), "--data", str(tmp_path), "--out", str(out), "--target", "24"]) == 0
    assert measured == ["step_000100", "step_000200"] and out.read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (folder / "fid_curve.jsonl").read_text().splitlines()]
    assert [(r["step"], r["fid"]) for r in records] == [(100, 49.0), (200, 48.0)]
    assert "step 100: FID 49.00 at 1.0 h" in capsys.readouterr().out
    (folder / "snapshots" / "step_000300").mkdir()
    (folder / "snapshots" / "step_000150").mkdir()  # between two log points: its hours are interpolated
    assert main(["fid-curve", str(folder), "--data", str(tmp_path), "--out", str(out)]) == 0
    assert measured == ["step_000100", "step_000200", "step_000150", "step_000300"]  # only the new ones
    printed = capsys.readouterr().out
    assert "step 150: FID 47.00 at 1.5 h" in printed and "step 300: FID 46.00 at None h" in printed


def test_a_reference_without_a_recorded_fid_is_refused_in_one_line(run, tmp_ckpt, tmp_path, capsys):
    folder, _ = run
    code = main(["fid-curve", str(folder), "--data", str(tmp_path), "--out", str(tmp_path / "c.png"),
                 "--reference", str(tmp_ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "records no FID" in err[0]


def test_the_power_law_fit_recovers_its_parameters_and_the_hours_to_a_target():
    from dlcv.evaluate import fit_fid_curve, hours_to

    records = [{"train_hours": h, "fid": 15.0 + 30.0 * h ** -0.5} for h in (0.25, 0.5, 1.0, 2.0, 4.0)]
    a, b, c = fit_fid_curve(records)
    assert abs(a - 15.0) < 0.05 and abs(b - 30.0) < 0.1 and abs(c - 0.5) < 0.01
    assert abs(hours_to((a, b, c), 24.0) - (30.0 / 9.0) ** 2) < 0.05  # 15 + 30 h^-0.5 = 24 at h = 11.1
    assert hours_to((a, b, c), 14.0) is None  # below the floor: never
    assert fit_fid_curve(records[:3]) is None  # three points cannot fix three parameters
    assert fit_fid_curve(records, floor=18.0)[0] >= 18.0  # the asymptote is kept at or above the floor
