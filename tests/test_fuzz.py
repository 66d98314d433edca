"""Bounded fuzzing: random bytes, truncated files and wrong JSON types thrown at the data readers, the
scorer and checkpoint loading. Each case must end in the reader's one-line error (or a report), never another
exception, within a time bound, and write nothing outside its output folder."""

from __future__ import annotations

import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CASES = 24  # per target; the whole file runs in a few seconds
SECONDS_PER_TARGET = 30


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null", "list", "dict"] if depth < 3 else ["int", "str", "null"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 7, 2**40, -2**63])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, 3.0])
    if kind == "str":
        return rng.choice(["", "ok", "x" * 50, "٣", "\u0000", "../../etc/passwd"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["output", "status", "details", "candidates", "entries", "parts", "config", "width",
                        "format", "architecture", "message", "seconds", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Truncate, flip bytes, or replace by noise."""
    choice = rng.randrange(3)
    if choice == 0 and data:
        return data[:rng.randrange(len(data))]
    if choice == 1 and data:
        out = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def snapshot(root: Path, skip: Path) -> dict[str, int]:
    """Every path under `root` outside `skip`, with its size (folders: -1)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirs[:] = []
            continue
        for name in dirs:
            out[os.path.join(dirpath, name)] = -1
        for name in files:
            path = os.path.join(dirpath, name)
            out[path] = os.lstat(path).st_size
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """cwd and $DLCV_CACHE inside tmp_path; yields the output folder; afterwards nothing else under tmp_path
    may have changed."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("DLCV_CACHE", str(tmp_path / "cwd" / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path, out)
    yield out
    after = snapshot(tmp_path, out)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]


def png_bytes(size: int = 28, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def one_line(err: BaseException) -> None:
    text = str(err)
    assert text and "\n" not in text.strip() and "Traceback" not in text, text


def test_fuzz_data_readers(sandbox):
    from dlcv.data.images import DataError, read_csv, read_image
    from dlcv.data.prepare import _npz

    rng = random.Random(0)
    start = time.perf_counter()
    good_npz = io.BytesIO()
    np.savez(good_npz, x_train=np.zeros((4, 28, 28, 1), np.uint8), y_train=np.arange(4),
             x_test=np.zeros((2, 28, 28, 1), np.uint8), y_test=np.arange(2))
    seeds = {"csv": "image_name,label\na.png,1\nb.png,2\n".encode(), "png": png_bytes(), "npz": good_npz.getvalue()}
    for i in range(CASES):
        for kind, seed in seeds.items():
            path = sandbox / f"{i}.{kind}"
            path.write_bytes(mutate(seed, rng))
            try:
                if kind == "csv":
                    read_csv(path, required=("image_name", "label"))
                elif kind == "png":
                    read_image(path, size=28, channels=3)
                else:
                    _npz(path)
            except DataError as err:
                one_line(err)
    for i in range(CASES):  # well-formed npz files with arrays of the wrong shapes, dtypes and lengths
        arrays = {k: rng.choice([np.zeros((3, 28, 28), np.uint8), np.ones((3, 28, 28, 1), np.float32),
                                 np.full(3, 12), np.arange(2), np.zeros((3, 28, 28, 5), np.uint8), np.array("x")])
                  for k in ("x_train", "y_train", "x_test", "y_test")}
        np.savez(sandbox / f"typed{i}.npz", **arrays)
        try:
            _npz(sandbox / f"typed{i}.npz")
        except DataError as err:
            one_line(err)
    assert time.perf_counter() - start < SECONDS_PER_TARGET


def test_fuzz_checkpoint_loading(sandbox):
    from dlcv import checkpoint
    from dlcv.models import build_model
    from dlcv.models.classifier import ClassifierConfig

    rng = random.Random(1)
    start = time.perf_counter()
    good = checkpoint.save(build_model("classifier", ClassifierConfig(width=4)), sandbox / "good")
    config, weights = (good / "config.json").read_bytes(), (good / "model.safetensors").read_bytes()
    document = json.loads(config)
    for i in range(CASES):
        folder = sandbox / f"c{i}"
        folder.mkdir()
        which = i % 3
        if which == 0:  # wrong JSON types in config.json
            broken = dict(document)
            broken[rng.choice(["config", "architecture", "format"])] = random_json(rng)
            if rng.random() < 0.5:
                broken["config"] = {**document["config"], rng.choice(list(document["config"])): random_json(rng)}
            (folder / "config.json").write_text(json.dumps(broken))
            (folder / "model.safetensors").write_bytes(weights)
        elif which == 1:  # garbage or truncated weights
            (folder / "config.json").write_bytes(config)
            (folder / "model.safetensors").write_bytes(mutate(weights, rng))
        else:  # garbage config.json
            (folder / "config.json").write_bytes(mutate(config, rng))
            (folder / "model.safetensors").write_bytes(weights)
        try:
            checkpoint.load(folder)
        except checkpoint.CheckpointError as err:
            one_line(err)
        pth = sandbox / f"c{i}.pth"
        buffer = io.BytesIO()
        torch.save({"state_dict": {"fc3.weight": torch.zeros(2)}}, buffer)
        pth.write_bytes(mutate(buffer.getvalue(), rng))
        try:
            checkpoint.load_course_classifier(pth)
        except checkpoint.CheckpointError as err:
            one_line(err)
    assert time.perf_counter() - start < SECONDS_PER_TARGET


def test_fuzz_scorer(sandbox, monkeypatch, capsys):
    from grading import score

    monkeypatch.setattr(score, "N_IMAGES", 10)
    rng = random.Random(2)
    start = time.perf_counter()
    data = sandbox / "data"  # labels for one adaptation target
    (data / "digits" / "usps" / "data").mkdir(parents=True)
    (data / "digits" / "usps" / "test.csv").write_text("image_name,label\na.png,1\nb.png,2\n")
    for i in range(CASES // 2):
        out = sandbox / f"s{i}"
        for part, folder, size in (("digits", "acgan", 28), ("faces", "gan_a", 64)):
            target = out / part / folder
            target.mkdir(parents=True)
            for d in range(10):
                blob = png_bytes(size) if rng.random() < 0.7 else mutate(png_bytes(size), rng)
                (target / f"{d}_001.png").write_bytes(blob)
        (out / "adaptation").mkdir()
        (out / "adaptation" / "mnistm_to_usps.csv").write_bytes(
            mutate(b"image_name,label\na.png,1\nb.png,2\n", rng) if i % 2 else b"image_name,label\na.png,1\n")
        manifest = random_json(rng) if i % 3 else {"parts": {"adaptation": {"entries": [random_json(rng)]}}}
        (out / "manifest.json").write_text(json.dumps(manifest))
        assert score.main([str(out), "--data", str(data), "--classifier", str(sandbox / "none.pth"),
                           "--no-fid"]) == 0
        assert (out / "report.md").is_file() and json.loads((out / "score.json").read_text())
    assert "Traceback" not in capsys.readouterr().err
    assert time.perf_counter() - start < SECONDS_PER_TARGET * 2
