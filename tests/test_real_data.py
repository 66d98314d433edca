"""Integration with the real files in ../shared/data (skipped when absent): prepare, then the course classifier."""

import pytest

from conftest import SHARED_DATA
from dlcv.cli import main
from dlcv.data.digits import read_digits
from dlcv.checkpoint import load_course_classifier
from dlcv.metrics import accuracy, predict_logits

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "digits" / "mnistm.npz").is_file(),
                                reason=f"no real data at {SHARED_DATA}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["data", "prepare", "--source", str(SHARED_DATA), "--out", str(out), "--only", "mnistm", "usps"]) == 0
    return out


def test_counts_and_sizes(prepared):
    for domain, n_test, channels in (("mnistm", 6001, 3), ("usps", 1007, 1)):
        split = read_digits(prepared, domain, "test")
        assert len(split) == n_test and split.images.shape[1:] == (channels, 28, 28)
    train, val = read_digits(prepared, "mnistm", "train"), read_digits(prepared, "mnistm", "val")
    assert (len(train), len(val)) == (7200, 800)
    assert set(train.names).isdisjoint(val.names)


def test_course_classifier_agrees_with_the_centre_crop(prepared):
    """The course's grader scores 0.951 on centre crops of the real MNIST-M test images (0.928 on resizes)."""
    model = load_course_classifier(SHARED_DATA / "weights" / "dlcv_digit_classifier.pth")
    test = read_digits(prepared, "mnistm", "test")
    acc = accuracy(predict_logits(model, test.images).argmax(1), test.labels)
    assert acc > 0.945
