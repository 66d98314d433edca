#!/usr/bin/env bash
# The course's hw2 problem 1 command: bash hw2_1.sh $1 writes 1000 generated faces 0000.png ... 0999.png into $1.
# The course graded one folder per run, from the student's best model, so $1 gets GAN B (checkpoints/sngan_faces,
# the improved method); pass a second argument `a` for GAN A (checkpoints/dcgan_faces, the course's DCGAN).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/grading/_env.sh"
exec "$PYTHON" -m grading.course hw2_1 "$@"
