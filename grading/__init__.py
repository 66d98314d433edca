"""Grading harness (issue 6): hw_run.sh writes homework-style outputs from checkpoints/, score.py grades them."""
