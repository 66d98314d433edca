"""A wrapper of `python -m dlcv evaluate CHECKPOINT --data DATA [--record]` (dlcv/evaluate.py)."""
import sys

from dlcv.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
