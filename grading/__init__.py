"""Grading harness: hw_run.sh writes homework-style outputs from checkpoints/, score.py grades them."""
