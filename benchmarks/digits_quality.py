"""A wrapper of `python -m dlcv evaluate CHECKPOINT --data DATA [--sampling.guidance=W] [--record]`."""
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing dlcv
from dlcv.cli import main  # noqa: E402
from dlcv.evaluate import course_classifier_path, reference_digits, to_uint8  # noqa: F401  (speed scripts use them)

COURSE_CLASSIFIER = course_classifier_path()

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
