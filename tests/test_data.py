"""dlcv.data and `data prepare` / `predict` on tiny fake data built in tmp_path: readers of the course layout, the
.npy cache, prepare() from a fake ../shared/data or fake torchvision datasets, and bad inputs that must fail cleanly."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dlcv.data import images as images_module
from dlcv.data.digits import available_splits, read_digits, read_image_folder
from dlcv.data.faces import read_faces
from dlcv.data.images import DataError
from dlcv.data.prepare import MANIFEST, prepare

# the official CelebA attribute order, as in ../shared/data/faces/attributes.csv after has_attributes
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young").split()
DIGIT_COUNTS = [5 + c for c in range(10)]  # uneven class sizes, so "stratified" is a real claim
VAL_FRACTION = 0.2
N_FACES, N_ANNOTATED = 40, 30


# ---------------------------------------------------------------- helpers


def save_png(path: Path, pixels: np.ndarray) -> None:
    """(H, W) or (H, W, 1) grey, or (H, W, 3) RGB uint8 -> PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels).save(path)


def write_csv(path: Path, rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every folder and file under root (hidden ones too) with its bytes and mtime: 'disk unchanged' is equality."""
    snap: dict[str, tuple[bytes, int] | None] = {}
    if not root.exists():
        return snap
    for dirpath, _, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        snap[rel + "/"] = None
        for name in filenames:
            path = Path(dirpath) / name
            snap[os.path.join(rel, name)] = (path.read_bytes(), path.stat().st_mtime_ns)
    return snap


def digest(pixels: np.ndarray | torch.Tensor) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(pixels)).tobytes()).hexdigest()


def pngs(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".png"))


def make_course_hw2(root: Path, seed: int = 0) -> dict:
    """The course's hw2_data as shipped: digits/<domain>/data/*.png + train.csv/val.csv (no test.csv), and
    face/{train,val}/*.png with no CSV. Returns (domain, split) -> [(name, label, (H, W, C) pixels)]."""
    rng = np.random.default_rng(seed)
    truth: dict = {}
    for domain, channels in (("mnistm", 3), ("usps", 1)):
        data = root / "digits" / domain / "data"
        index = 0
        for split, n in (("train", 20), ("val", 10)):
            rows = []
            for _ in range(n):
                name, label = f"{index:05d}.png", int(rng.integers(10))
                pixels = rng.integers(0, 256, (28, 28, channels), dtype=np.uint8)
                save_png(data / name, pixels)
                rows.append((name, label, pixels))
                index += 1
            write_csv(data.parent / f"{split}.csv", [["image_name", "label"]] + [[n, lab] for n, lab, _ in rows])
            truth[(domain, split)] = rows
    for split, n in (("train", 12), ("val", 6)):
        rows = []
        for i in range(n):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            save_png(root / "face" / split / f"{i:05d}.png", pixels)
            rows.append((f"{i:05d}.png", None, pixels))
        truth[("face", split)] = rows
    return truth


@pytest.fixture
def hw2(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "hw2_data"
    return root, make_course_hw2(root)


def _labels(counts: list[int], rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(10), counts)).astype(np.uint8)


def make_shared_source(src: Path, seed: int = 0) -> dict:
    """A tiny stand-in for ../shared/data with the same file names, keys, dtypes and shapes (plus SVHN .mat files
    in torchvision's format). Returns the arrays written, for comparisons."""
    rng = np.random.default_rng(seed)
    truth: dict = {}
    (src / "digits").mkdir(parents=True)
    # MNIST-M: 32x32 RGB with idx_*; USPS: 16x16 grey; MNIST: 28x28 grey
    for name, shape in (("mnistm", (32, 32, 3)), ("usps", (16, 16, 1))):
        y_train, y_test = _labels(DIGIT_COUNTS, rng), _labels([2] * 10, rng)
        arrays = {"x_train": rng.integers(0, 256, (len(y_train), *shape), dtype=np.uint8), "y_train": y_train,
                  "x_test": rng.integers(0, 256, (len(y_test), *shape), dtype=np.uint8), "y_test": y_test}
        if name == "mnistm":
            arrays["idx_train"] = np.arange(len(y_train), dtype=np.int32)
            arrays["idx_test"] = np.arange(len(y_test), dtype=np.int32)
        np.savez(src / "digits" / f"{name}.npz", **arrays)
        truth[name] = arrays
    # MNIST digits are a white top half on black, so |patch - digit| of mnistm_synth can be checked exactly
    mnist = {}
    for split, n in (("train", 60), ("test", 10)):
        x = np.zeros((n, 28, 28, 1), np.uint8)
        x[:, :14] = 255
        mnist[f"x_{split}"], mnist[f"y_{split}"] = x, (np.arange(n) % 10).astype(np.uint8)
    np.savez(src / "digits" / "mnist.npz", **mnist)
    truth["mnist"] = mnist
    # SVHN (torchvision's *_32x32.mat): X (32, 32, 3, N), y (N, 1) in 1..10; each image is one grey level that
    # encodes its raw label (20 * y), so the label mapping can be checked after resizing
    (src / "svhn").mkdir()
    import scipy.io

    for split, n in (("train", 60), ("test", 10)):
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)
        x = np.broadcast_to((20 * y[:, 0])[None, None, None, :], (32, 32, 3, n)).astype(np.uint8)
        scipy.io.savemat(src / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y})
    # faces: a plain tar of 64x64 JPEGs + attributes.csv with the real header
    (src / "faces").mkdir()
    header = ["image_name", "celeba_file", "source", "has_attributes"] + CELEBA_ATTRIBUTES
    rows, faces = [header], {}
    with tarfile.open(src / "faces" / "celeba64.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(N_FACES):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
            name = f"{i:05d}.jpg"
            _add_bytes(tar, name, buf.getvalue())
            faces[name] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            annotated = i < N_ANNOTATED
            values = [str(int(v)) for v in rng.integers(0, 2, len(CELEBA_ATTRIBUTES))] if annotated else \
                [""] * len(CELEBA_ATTRIBUTES)
            rows.append([name, f"{i + 1:06d}.jpg", "karthik" if annotated else "nikhil", int(annotated)] + values)
    write_csv(src / "faces" / "attributes.csv", rows)
    truth["faces"], truth["attribute_rows"] = faces, rows
    # BSDS500: uniform-colour photos, so every 28x28 patch of one photo is that photo's colour
    (src / "bsds500").mkdir()
    colours = []
    with tarfile.open(src / "bsds500" / "bsds500_train_images.tar", "w") as tar:
        for k, colour in enumerate(((40, 90, 200), (220, 30, 120), (10, 200, 60))):
            buf = io.BytesIO()
            Image.new("RGB", (48, 36), colour).save(buf, "JPEG", quality=95)
            _add_bytes(tar, f"train/{k}.jpg", buf.getvalue())
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            assert (decoded == decoded[0, 0]).all()
            colours.append(tuple(int(v) for v in decoded[0, 0]))
    write_csv(src / "bsds500" / "train_orientation.csv",
              [["file", "stored_rotated", "np_rot90_k_to_restore"], ["0.jpg", 0, 1], ["1.jpg", 1, 1], ["2.jpg", 0, 1]])
    truth["colours"] = colours
    return truth


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shared(tmp_path: Path) -> tuple[Path, dict]:
    src = tmp_path / "shared_data"
    return src, make_shared_source(src)


@pytest.fixture(scope="module")
def prepared_all(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """One default prepare() of every dataset of the fake source (read-only for the tests that use it)."""
    base = tmp_path_factory.mktemp("prepared")
    src, out = base / "shared_data", base / "out"
    truth = make_shared_source(src)
    report = prepare(str(src), out, val_fraction=VAL_FRACTION, seed=0, progress=lambda msg: None)
    return src, out, truth, report


# ---------------------------------------------------------------- 1. readers on the course's hw2_data


def test_read_digits_course_layout_rgb(hw2):
    root, truth = hw2
    for split in ("train", "val"):
        data = read_digits(root, "mnistm", split)
        rows = truth[("mnistm", split)]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(rows), 3, 28, 28)
        assert data.names == [n for n, _, _ in rows]
        assert data.labels.dtype == torch.int64 and data.labels.tolist() == [lab for _, lab, _ in rows]
        expected = np.stack([p for _, _, p in rows]).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        assert np.array_equal(data.images.numpy(), expected)


def test_read_digits_grey_stays_grey_or_becomes_three_equal_channels(hw2):
    root, truth = hw2
    grey = read_digits(root, "usps", "train")
    assert grey.images.shape == (20, 1, 28, 28)
    assert np.array_equal(grey.images[:, 0].numpy(), np.stack([p[:, :, 0] for _, _, p in truth[("usps", "train")]]))
    rgb = read_digits(root, "usps", "train", channels=3)
    assert rgb.images.shape == (20, 3, 28, 28)
    assert all(torch.equal(rgb.images[:, c], grey.images[:, 0]) for c in range(3))


def test_read_faces_without_csv_has_no_attributes(hw2):
    root, truth = hw2
    faces = read_faces(root, "train")
    assert faces.images.shape == (12, 3, 64, 64) and faces.images.dtype == torch.uint8
    assert faces.names == sorted(n for n, _, _ in truth[("face", "train")])
    assert faces.attribute_names == [] and faces.attributes.shape == (12, 0)
    assert np.array_equal(faces.images[3].permute(1, 2, 0).numpy(), truth[("face", "train")][3][2])
    with pytest.raises(DataError, match="no attribute CSV"):
        faces.labels("Smiling")


def test_missing_split_names_the_file_and_the_available_splits(hw2):
    root, _ = hw2
    assert available_splits(root, "mnistm") == ["train", "val"]
    with pytest.raises(DataError) as err:
        read_digits(root, "mnistm", "test")
    assert str(root / "digits" / "mnistm" / "test.csv") in str(err.value) and "['train', 'val']" in str(err.value)
    with pytest.raises(DataError, match=r"found \['train', 'val'\]"):
        read_faces(root, "test")
    with pytest.raises(DataError, match=r"no digits domain 'svhn'.*\['mnistm', 'usps'\]"):
        read_digits(root, "svhn", "train")


# ---------------------------------------------------------------- 2. the .npy cache


def test_cache_serves_the_second_read(hw2, monkeypatch):
    root, _ = hw2
    first = read_digits(root, "mnistm", "train")
    cache = root / "digits" / "mnistm" / "data" / ".dlcv_cache"
    assert len(list(cache.glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is current")

    monkeypatch.setattr(images_module, "read_image", no_decoding)
    second = read_digits(root, "mnistm", "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_cache_is_invalidated_by_a_replaced_image(hw2):
    root, truth = hw2
    before = read_digits(root, "mnistm", "train")
    path = root / "digits" / "mnistm" / "data" / "00004.png"
    new = np.full((28, 28, 3), 7, np.uint8)
    save_png(path, new)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    after = read_digits(root, "mnistm", "train")
    assert np.array_equal(after.images[4].permute(1, 2, 0).numpy(), new)
    assert not torch.equal(after.images[4], before.images[4])
    assert torch.equal(after.images[5], before.images[5])
    # a touch alone (same bytes, new mtime) also re-reads, and gives the same content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    assert torch.equal(read_digits(root, "mnistm", "train").images, after.images)


# ---------------------------------------------------------------- 3. prepare() from a fake ../shared/data


def test_prepare_writes_the_course_layout_and_counts_match_disk(prepared_all):
    _, out, _, report = prepared_all
    assert set(report) == {"mnistm", "usps", "mnist", "svhn", "face"}
    assert all(entry["status"] == "written" for entry in report.values())
    for domain in ("mnistm", "usps", "mnist", "svhn"):
        folder = out / "digits" / domain
        assert sorted(p.name for p in folder.glob("*.csv")) == ["test.csv", "train.csv", "val.csv"]
        names = pngs(folder / "data")
        assert all(re.fullmatch(r"\d{5}\.png", n) for n in names)
        counts = report[domain]["counts"]
        assert len(names) == sum(row["total"] for row in counts.values())
        for split, row in counts.items():
            data = read_digits(out, domain, split)
            assert len(data) == row["total"]
            assert [row[str(c)] for c in range(10)] == torch.bincount(data.labels, minlength=10).tolist()
    face_counts = report["face"]["counts"]
    assert sum(row["total"] for row in face_counts.values()) == N_FACES
    for split in ("train", "val", "test"):
        assert (out / "face" / f"{split}.csv").is_file()
        assert len(pngs(out / "face" / split)) == face_counts[split]["total"] > 0


def test_prepare_mnistm_is_the_centre_crop_with_its_labels(prepared_all):
    _, out, truth, _ = prepared_all
    source = truth["mnistm"]
    crops = source["x_train"][:, 2:30, 2:30]
    label_of = {digest(c): int(y) for c, y in zip(crops, source["y_train"])}
    seen = []
    for split in ("train", "val"):
        data = read_digits(out, "mnistm", split)
        assert data.images.shape[1:] == (3, 28, 28)
        for img, label in zip(data.images.permute(0, 2, 3, 1).numpy(), data.labels.tolist()):
            assert label_of[digest(img)] == label  # KeyError would mean a pixel differs from x[:, 2:30, 2:30]
            seen.append(digest(img))
    assert sorted(seen) == sorted(label_of)  # train and val partition the source train split
    test = read_digits(out, "mnistm", "test")  # the test split keeps its order
    assert np.array_equal(test.images.permute(0, 2, 3, 1).numpy(), source["x_test"][:, 2:30, 2:30])
    assert test.labels.tolist() == source["y_test"].tolist()


def test_prepare_usps_is_resized_to_28_and_kept_grey(prepared_all):
    _, out, truth, _ = prepared_all
    folder = out / "digits" / "usps" / "data"
    with Image.open(folder / pngs(folder)[0]) as img:
        assert img.mode == "L" and img.size == (28, 28)
    test = read_digits(out, "usps", "test")
    expected = np.stack([np.asarray(Image.fromarray(x[:, :, 0]).resize((28, 28), Image.BILINEAR))
                         for x in truth["usps"]["x_test"]])
    assert test.images.shape == (20, 1, 28, 28)
    assert np.array_equal(test.images[:, 0].numpy(), expected)
    assert test.labels.tolist() == truth["usps"]["y_test"].tolist()


def test_prepare_val_is_stratified(prepared_all):
    _, out, _, _ = prepared_all
    for domain in ("mnistm", "usps"):
        train = torch.bincount(read_digits(out, domain, "train").labels, minlength=10).tolist()
        val = torch.bincount(read_digits(out, domain, "val").labels, minlength=10).tolist()
        assert [t + v for t, v in zip(train, val)] == DIGIT_COUNTS
        assert val == [int(round(n * VAL_FRACTION)) for n in DIGIT_COUNTS] and min(val) >= 1


def test_prepare_faces_keep_pixels_and_attributes(prepared_all):
    _, out, truth, _ = prepared_all
    rows = truth["attribute_rows"]
    source_rows = {digest(truth["faces"][r[0]]): r[4:] for r in rows[1:]}
    annotated = 0
    for split in ("train", "val", "test"):
        faces = read_faces(out, split)
        assert faces.attribute_names == CELEBA_ATTRIBUTES
        for img, attrs in zip(faces.images.permute(0, 2, 3, 1).numpy(), faces.attributes.tolist()):
            expected = [int(v) if v != "" else -1 for v in source_rows.pop(digest(img))]  # JPEG -> PNG is lossless
            assert attrs == expected
            annotated += min(attrs) >= 0
        assert faces.labels("Smiling").tolist() == faces.attributes[:, CELEBA_ATTRIBUTES.index("Smiling")].tolist()
    assert not source_rows and annotated == N_ANNOTATED


def test_prepare_twice_is_up_to_date_and_rewrites_nothing(shared, tmp_path):
    src, _ = shared
    out = tmp_path / "out"
    first = prepare(str(src), out, only=["usps", "face"], val_fraction=VAL_FRACTION, progress=lambda m: None)
    read_digits(out, "usps", "train")  # the reader's hidden cache must not make the output look different
    before = snapshot(out)
    second = prepare(str(src), out, only=["usps", "face"], val_fraction=VAL_FRACTION, progress=lambda m: None)
    assert {k: v["status"] for k, v in second.items()} == {"usps": "up to date", "face": "up to date"}
    assert {k: v["counts"] for k, v in second.items()} == {k: v["counts"] for k, v in first.items()}
    assert snapshot(out) == before


def test_prepare_svhn_maps_label_10_to_0(shared, tmp_path):
    src, _ = shared
    out = tmp_path / "out"
    prepare(str(src), out, only=["svhn"], val_fraction=VAL_FRACTION, progress=lambda m: None)
    folder = out / "digits" / "svhn" / "data"
    with Image.open(folder / pngs(folder)[0]) as img:
        assert img.mode == "RGB" and img.size == (28, 28)
    labels = []
    for split in ("train", "val", "test"):
        data = read_digits(out, "svhn", split)
        assert data.images.shape[1:] == (3, 28, 28)
        raw = data.images[:, 0, 14, 14].long() // 20  # the grey level encodes the .mat label 1..10
        assert torch.equal(data.labels, raw % 10)
        labels += data.labels.tolist()
    assert sorted(set(labels)) == list(range(10)) and labels.count(0) == 7  # the y=10 images (6 train + 1 test)


def test_prepare_synth_mnistm_blends_digits_over_bsds_patches(shared, tmp_path):
    src, truth = shared
    out = tmp_path / "out"
    report = prepare(str(src), out, only=["mnistm_synth"], synth_mnistm=20, val_fraction=VAL_FRACTION,
                     progress=lambda m: None)
    assert sum(row["total"] for row in report["mnistm_synth"]["counts"].values()) == 20
    folder = out / "digits" / "mnistm_synth"
    assert not (folder / "test.csv").exists() and not (out / "digits" / "mnistm").exists()
    with Image.open(folder / "data" / pngs(folder / "data")[0]) as img:
        assert img.mode == "RGB" and img.size == (28, 28)
    for split in ("train", "val"):
        data = read_digits(out, "mnistm_synth", split)
        for img in data.images.permute(0, 2, 3, 1).numpy().astype(int):
            colour = tuple(img[20, 5])
            assert colour in truth["colours"]  # digit 0 there: |patch - 0| is the photo's colour
            assert (img[14:] == colour).all() and (img[:14] == 255 - np.array(colour)).all()


# ---------------------------------------------------------------- 4. source='torchvision' without network


class FakeTorchvisionDataset:
    """Iterable of (PIL image, int) like torchvision.datasets.{MNIST,USPS,SVHN}; records how it was built."""

    mode, size, calls = "L", 28, []

    def __init__(self, root, train=True, split=None, download=False, **kwargs):
        train = train if split is None else split == "train"
        self.calls.append((type(self).__name__, root, train, download))
        rng = np.random.default_rng(int(train))
        n = 30 if train else 10  # 3 per class, so a 0.2 val split holds one of each
        shape = (self.size, self.size, 3) if self.mode == "RGB" else (self.size, self.size)
        self.items = [(Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), self.mode), i % 10)
                      for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class FakeMNIST(FakeTorchvisionDataset):
    mode, size = "L", 28


class FakeUSPS(FakeTorchvisionDataset):
    mode, size = "L", 16


class FakeSVHN(FakeTorchvisionDataset):
    mode, size = "RGB", 32


def test_prepare_from_torchvision_uses_the_datasets_and_no_network(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(FakeTorchvisionDataset, "calls", [])
    for name, fake in (("MNIST", FakeMNIST), ("USPS", FakeUSPS), ("SVHN", FakeSVHN)):
        monkeypatch.setattr(torchvision.datasets, name, fake)

    def no_network(*args, **kwargs):
        raise AssertionError("prepare tried to open a socket")

    monkeypatch.setattr(socket, "socket", no_network)
    out, downloads = tmp_path / "out", tmp_path / "downloads"
    report = prepare("torchvision", out, only=["mnist", "usps", "svhn"], val_fraction=VAL_FRACTION,
                     download_dir=downloads, progress=lambda m: None)
    assert {k: v["status"] for k, v in report.items()} == {"mnist": "written", "usps": "written", "svhn": "written"}
    assert sorted(c[0] for c in FakeTorchvisionDataset.calls) == ["FakeMNIST"] * 2 + ["FakeSVHN"] * 2 + ["FakeUSPS"] * 2
    assert all(root == str(downloads) and download for _, root, _, download in FakeTorchvisionDataset.calls)
    for domain, channels in (("mnist", 1), ("usps", 1), ("svhn", 3)):
        test = read_digits(out, domain, "test")
        assert test.images.shape == (10, channels, 28, 28)
        assert test.labels.tolist() == [i % 10 for i in range(10)]
        assert len(read_digits(out, domain, "train")) + len(read_digits(out, domain, "val")) == 30
    mnist_test = FakeMNIST(downloads, train=False)
    assert np.array_equal(read_digits(out, "mnist", "test").images[:, 0].numpy(),
                          np.stack([np.asarray(img) for img, _ in mnist_test.items]))
    with pytest.raises(DataError, match="mnistm cannot be prepared from --source torchvision"):
        prepare("torchvision", out, only=["mnistm"], download_dir=downloads, progress=lambda m: None)


# ---------------------------------------------------------------- 5. bad inputs: DataError, disk unchanged


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _replace_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    write_csv(path, edit(rows))


READER_CASES = {
    # name: (break the hw2 folder, read it, text the message must hold)
    "truncated png": (lambda r: _truncate(r / "digits/mnistm/data/00003.png"),
                      lambda r: read_digits(r, "mnistm", "train"), "00003.png"),
    "not an image": (lambda r: (r / "digits/mnistm/data/00002.png").write_bytes(b"not a png at all"),
                     lambda r: read_digits(r, "mnistm", "train"), "00002.png"),
    "notes.txt in a face folder": (lambda r: (r / "face/train/notes.txt").write_text("hello"),
                                   lambda r: read_faces(r, "train"), "notes.txt"),
    "csv missing column": (lambda r: _replace_csv(r / "digits/mnistm/train.csv", lambda rows: [x[:1] for x in rows]),
                           lambda r: read_digits(r, "mnistm", "train"), "train.csv"),
    "csv extra column": (lambda r: _replace_csv(r / "digits/mnistm/train.csv", lambda rows: [x + ["z"] for x in rows]),
                         lambda r: read_digits(r, "mnistm", "train"), "train.csv"),
    "csv duplicate name": (lambda r: _replace_csv(r / "digits/mnistm/train.csv", lambda rows: rows + [rows[1]]),
                           lambda r: read_digits(r, "mnistm", "train"), "train.csv"),
    "csv name without file": (lambda r: _replace_csv(r / "digits/mnistm/val.csv",
                                                     lambda rows: rows + [["99999.png", "3"]]),
                              lambda r: read_digits(r, "mnistm", "val"), "99999.png"),
    "csv ragged row": (lambda r: _replace_csv(r / "digits/mnistm/train.csv",
                                              lambda rows: rows[:3] + [rows[3] + ["7"]] + rows[4:]),
                       lambda r: read_digits(r, "mnistm", "train"), "train.csv line 4"),
    "csv label not a digit": (lambda r: _replace_csv(r / "digits/mnistm/train.csv",
                                                     lambda rows: rows[:2] + [[rows[2][0], "10"]] + rows[3:]),
                              lambda r: read_digits(r, "mnistm", "train"), "train.csv"),
    "wrong size": (lambda r: save_png(r / "digits/mnistm/data/00001.png", np.zeros((32, 32, 3), np.uint8)),
                   lambda r: read_digits(r, "mnistm", "train"), "00001.png is 32x32"),
    "mixed channels": (lambda r: save_png(r / "digits/usps/data/00005.png", np.zeros((28, 28, 3), np.uint8)),
                       lambda r: read_digits(r, "usps", "train"), "00005.png"),
    "transparent png": (lambda r: Image.new("RGBA", (28, 28), (1, 2, 3, 0)).save(r / "digits/mnistm/data/00006.png"),
                        lambda r: read_digits(r, "mnistm", "train"), "00006.png"),
    "palette with a transparent colour": (
        lambda r: Image.new("L", (28, 28), 0).convert("P").save(r / "digits/mnistm/data/00007.png", transparency=0),
        lambda r: read_digits(r, "mnistm", "train"), "00007.png has transparent pixels"),
    "32-bit pixels": (lambda r: Image.new("F", (28, 28), 0.5).save(r / "digits/usps/data/00008.png", "TIFF"),
                      lambda r: read_digits(r, "usps", "train"), "00008.png has 32-bit pixels"),
    "wrong face size": (lambda r: save_png(r / "face/val/00002.png", np.zeros((28, 28, 3), np.uint8)),
                        lambda r: read_faces(r, "val"), "00002.png"),
    "face csv bad value": (lambda r: write_csv(r / "face/val.csv", [["image_name", "Smiling"], ["00000.png", "2"]]),
                           lambda r: read_faces(r, "val"), "val.csv"),
    "face csv name without file": (lambda r: write_csv(r / "face/val.csv", [["image_name", "Smiling"], ["x.png", "1"]]),
                                   lambda r: read_faces(r, "val"), "x.png"),
}


@pytest.mark.parametrize("case", list(READER_CASES))
def test_reader_rejects_bad_input_and_changes_nothing(case, hw2):
    root, _ = hw2
    breaker, reader, fragment = READER_CASES[case]
    breaker(root)
    before = snapshot(root)
    with pytest.raises(DataError) as err:
        reader(root)
    assert isinstance(err.value, ValueError)
    assert fragment in str(err.value)
    assert snapshot(root) == before  # in particular no cache was written


def _write_npz_without(path: Path, key: str) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != key}
    np.savez(path, **arrays)


def _edit_npz(path: Path, **edits) -> None:
    with np.load(path) as data:
        arrays = {k: edits[k](data[k]) if k in edits else data[k] for k in data.files}
    np.savez(path, **arrays)


def _savemat(path: Path, arrays: dict) -> None:
    import scipy.io

    scipy.io.savemat(path, arrays)


def _corrupt_face_jpeg(tar_path: Path) -> None:
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            _add_bytes(tar, name, data[:len(data) // 3] if name == "00007.jpg" else data)


def _drop_csv_column(path: Path, column: str) -> None:
    def edit(rows):
        i = rows[0].index(column)
        return [r[:i] + r[i + 1:] for r in rows]

    _replace_csv(path, edit)


PREPARE_CASES = {
    # name: (break the source, datasets asked for (besides mnist), extra prepare kwargs, text the message must hold)
    "missing usps.npz": (lambda s: (s / "digits/usps.npz").unlink(), ["usps"], {}, "usps.npz"),
    "truncated mnistm.npz": (lambda s: _truncate(s / "digits/mnistm.npz"), ["mnistm"], {}, "mnistm.npz"),
    "garbage usps.npz": (lambda s: (s / "digits/usps.npz").write_bytes(b"PK\x03\x04 not a zip"), ["usps"], {},
                         "usps.npz"),
    "npz lacks y_test": (lambda s: _write_npz_without(s / "digits/usps.npz", "y_test"), ["usps"], {}, "usps.npz"),
    "truncated svhn mat": (lambda s: _truncate(s / "svhn/test_32x32.mat"), ["svhn"], {}, "test_32x32.mat"),
    "garbage svhn mat": (lambda s: (s / "svhn/train_32x32.mat").write_bytes(b"garbage" * 20), ["svhn"], {},
                         "train_32x32.mat"),
    "short garbage svhn mat": (lambda s: (s / "svhn/train_32x32.mat").write_bytes(b"garbage" * 10), ["svhn"], {},
                               "train_32x32.mat"),  # scipy raises IndexError on this one
    "svhn mat without y": (lambda s: _savemat(s / "svhn/train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)}),
                           ["svhn"], {}, "train_32x32.mat"),
    "corrupt face tar": (lambda s: (s / "faces/celeba64.tar").write_bytes(b"\x00garbage" * 100), ["face"], {},
                         "celeba64.tar"),
    "truncated face tar": (lambda s: _truncate(s / "faces/celeba64.tar"), ["face"], {}, "celeba64.tar"),
    "attributes.csv lacks has_attributes": (lambda s: _drop_csv_column(s / "faces/attributes.csv", "has_attributes"),
                                            ["face"], {}, "attributes.csv"),
    "attributes.csv lacks a face": (lambda s: _replace_csv(s / "faces/attributes.csv", lambda rows: rows[:-1]),
                                    ["face"], {}, "attributes.csv has no row for 00039.jpg"),
    "attributes.csv bad value": (lambda s: _replace_csv(s / "faces/attributes.csv",
                                                        lambda rows: rows[:1] + [rows[1][:4] + ["x"] + rows[1][5:]]
                                                        + rows[2:]), ["face"], {}, "attributes.csv"),
    "corrupt face jpeg": (lambda s: _corrupt_face_jpeg(s / "faces/celeba64.tar"), ["face"], {}, "00007.jpg"),
    "missing bsds tar": (lambda s: (s / "bsds500/bsds500_train_images.tar").unlink(), ["mnistm_synth"],
                         {"synth_mnistm": 10}, "bsds500_train_images.tar"),
    "corrupt bsds tar": (lambda s: (s / "bsds500/bsds500_train_images.tar").write_bytes(b"\x00garbage" * 100),
                         ["mnistm_synth"], {"synth_mnistm": 10}, "bsds500_train_images.tar"),
    "float images": (lambda s: _edit_npz(s / "digits/usps.npz", x_train=lambda x: x.astype(np.float32) / 255),
                     ["usps"], {}, "usps.npz x_train is float32"),
    "label 12": (lambda s: _edit_npz(s / "digits/usps.npz", y_train=lambda y: np.where(np.arange(len(y)) == 3, 12, y)),
                 ["usps"], {}, "usps.npz y_train[3] is 12"),
    "x/y length mismatch": (lambda s: _edit_npz(s / "digits/usps.npz", y_test=lambda y: y[:-1]), ["usps"], {},
                            "usps.npz y_test has shape"),
    "npz without channel axis": (lambda s: _edit_npz(s / "digits/mnistm.npz", x_test=lambda x: x[..., 0]),
                                 ["mnistm"], {}, "mnistm.npz x_test has shape"),
    "negative val fraction": (lambda s: None, ["usps"], {"val_fraction": -0.1}, "--val-fraction -0.1"),
    "val fraction 1": (lambda s: None, ["usps"], {"val_fraction": 1.0}, "--val-fraction 1.0"),
    "val fraction nan": (lambda s: None, ["usps"], {"val_fraction": float("nan")}, "--val-fraction nan"),
    "unknown dataset": (lambda s: None, ["cifar10"], {}, "cifar10"),
    "empty val split": (lambda s: None, ["usps"], {"val_fraction": 0.01}, "empty val split"),
    "mnistm_synth without a count": (lambda s: None, ["mnistm_synth"], {}, "mnistm_synth from"),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_rejects_bad_input_before_writing_anything(case, shared, tmp_path):
    src, _ = shared
    out = tmp_path / "out"
    prepare(str(src), out, only=["mnist"], val_fraction=VAL_FRACTION, progress=lambda m: None)
    breaker, only, kwargs, fragment = PREPARE_CASES[case]
    breaker(src)
    before = snapshot(out)
    # a new seed with --overwrite would rewrite mnist: everything must be read and checked before that happens
    kwargs = {"val_fraction": VAL_FRACTION, **kwargs}
    with pytest.raises(DataError) as err:
        prepare(str(src), out, only=["mnist"] + only, seed=1, overwrite=True, progress=lambda m: None, **kwargs)
    assert isinstance(err.value, ValueError)
    assert fragment in str(err.value)
    assert snapshot(out) == before
    assert not [p for p in out.rglob(".*") if ".tmp" in p.name or ".new-" in p.name or ".old-" in p.name]


def test_prepare_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        prepare(str(tmp_path / "nowhere"), tmp_path / "out", progress=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_prepare_will_not_mix_datasets_without_overwrite(shared, tmp_path):
    src, _ = shared
    out = tmp_path / "out"
    prepare(str(src), out, only=["usps"], val_fraction=VAL_FRACTION, seed=0, progress=lambda m: None)
    val_before = {digest(x) for x in read_digits(out, "usps", "val").images}
    before = snapshot(out)
    with pytest.raises(DataError) as err:
        prepare(str(src), out, only=["usps"], val_fraction=VAL_FRACTION, seed=1, progress=lambda m: None)
    assert "--overwrite" in str(err.value) and str(out / "digits" / "usps") in str(err.value)
    assert snapshot(out) == before
    report = prepare(str(src), out, only=["usps"], val_fraction=VAL_FRACTION, seed=1, overwrite=True,
                     progress=lambda m: None)
    assert report["usps"]["status"] == "written"
    assert not (out / "digits" / "usps" / "data" / ".dlcv_cache").exists()  # the old folder went away whole
    val_after = {digest(x) for x in read_digits(out, "usps", "val").images}
    assert val_after != val_before and len(val_after) == len(val_before)


def test_prepare_will_not_write_over_a_course_folder(shared, hw2, tmp_path):
    src, _ = shared
    root, _ = hw2  # the course's own mnistm folder has no manifest: never ours to replace silently
    before = snapshot(root)
    with pytest.raises(DataError, match="--overwrite"):
        prepare(str(src), root, only=["mnistm"], progress=lambda m: None)
    assert snapshot(root) == before
    assert not (root / "digits" / "mnistm" / MANIFEST).exists()


# ---------------------------------------------------------------- 6. CLI: data prepare and predict


def test_cli_data_prepare_prints_the_counts_table(shared, tmp_path, capsys):
    from dlcv.cli import main

    src, _ = shared
    out = tmp_path / "out"
    assert main(["data", "prepare", "--source", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    report = prepare(str(src), out, progress=lambda m: None)  # same defaults: now all up to date
    assert set(report) == {"mnistm", "usps", "mnist", "svhn", "face"}
    for name, entry in report.items():
        assert entry["status"] == "up to date"
        start = printed.index(f"{name}: written ({out / ('face' if name == 'face' else 'digits/' + name)})")
        header = printed[start + 1].split()
        columns = list(next(iter(entry["counts"].values())))
        assert header == ["split"] + columns
        for i, (split, row) in enumerate(entry["counts"].items()):
            assert printed[start + 2 + i].split() == [split] + [str(row[c]) for c in columns]


@pytest.mark.parametrize("extra, fragment", [
    ([], "nowhere"),  # no such source folder
    (["--only", "usps"], "usps.npz"),  # the folder lacks a file
    (["--only", "usps", "--val-fraction", "-0.1"], "--val-fraction"),  # would swap train and val
])
def test_cli_data_prepare_error_is_one_line(extra, fragment, shared, tmp_path, capsys):
    from dlcv.cli import main

    src, _ = shared
    if fragment == "usps.npz":
        (src / "digits" / "usps.npz").unlink()
    elif fragment == "nowhere":
        src = tmp_path / "nowhere"
    assert main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "out")] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def classifier_ckpt(tmp_path: Path) -> Path:
    from dlcv import checkpoint
    from dlcv.models.classifier import Classifier, ClassifierConfig

    return checkpoint.save(Classifier(ClassifierConfig(kind="convnet", width=4)), tmp_path / "classifier")


def _image_folder(folder: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        save_png(folder / name, rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))


def test_cli_predict_writes_sorted_names_and_integer_labels(classifier_ckpt, tmp_path, capsys):
    from dlcv import checkpoint
    from dlcv.cli import main
    from dlcv.metrics import predict_logits

    folder, out = tmp_path / "images", tmp_path / "pred.csv"
    names = ["7_003.png", "0_001.png", "b.png", "3_010.png", "a.png"]
    _image_folder(folder, names)
    save_png(folder / "a.png", np.full((28, 28), 128, np.uint8))  # one grey image: read as 3 equal channels
    assert main(["predict", str(classifier_ckpt), "--images", str(folder), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "image_name,label"
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(names)
    assert all(re.fullmatch(r"[0-9]", r[1]) for r in rows)
    model, _ = checkpoint.load(classifier_ckpt)
    images, _ = read_image_folder(folder)
    assert [int(r[1]) for r in rows] == predict_logits(model, images).argmax(1).tolist()
    assert "wrote 5 predictions" in capsys.readouterr().out


@pytest.mark.parametrize("bad, fragment", [
    ("corrupt", "02.png"),
    ("notes", "notes.txt"),
    ("size", "02.png is 32x32"),
])
def test_cli_predict_bad_folder_fails_without_writing(bad, fragment, classifier_ckpt, tmp_path, capsys):
    from dlcv.cli import main

    folder, out = tmp_path / "images", tmp_path / "pred.csv"
    _image_folder(folder, [f"{i:02d}.png" for i in range(5)])
    if bad == "corrupt":
        _truncate(folder / "02.png")
    elif bad == "notes":
        (folder / "notes.txt").write_text("not an image")
    else:
        save_png(folder / "02.png", np.zeros((32, 32, 3), np.uint8))
    before = snapshot(tmp_path)
    assert main(["predict", str(classifier_ckpt), "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not out.exists() and snapshot(tmp_path) == before
    if bad == "size":  # --resize accepts it
        assert main(["predict", str(classifier_ckpt), "--images", str(folder), "--out", str(out), "--resize"]) == 0
        assert len(out.read_text().splitlines()) == 6


# ---------------------------------------------------------------- loaders and atomic writes


def test_range_and_channel_conversions():
    from dlcv.data.loaders import to_channels, to_image_range, to_model_range

    x = torch.tensor([[[[0, 128, 255]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    model = to_model_range(x)
    assert model.min().item() == -1.0 and model.max().item() == 1.0
    assert torch.allclose(to_image_range(model), x.float() / 255)
    assert to_channels(x, 3).shape == (1, 3, 1, 3) and torch.equal(to_channels(x, 3)[:, 2], x[:, 0])
    with pytest.raises(ValueError, match="3-channel"):
        to_channels(torch.zeros(1, 3, 2, 2), 1)


def test_atomic_dir_keeps_the_old_folder_on_error(tmp_path):
    from dlcv.fileio import atomic_dir, atomic_write_text

    target = tmp_path / "target"
    atomic_write_text(target / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("killed half way")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["target"]  # no temporary folder left behind
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["target"]


def test_16_bit_grey_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    from dlcv.data.images import read_image

    grey = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256
    Image.fromarray((grey * 257).astype(np.uint16)).save(tmp_path / "a.png")  # mode I;16
    assert np.array_equal(read_image(tmp_path / "a.png", 28, 1)[..., 0], grey)  # Pillow's convert gives 255s
