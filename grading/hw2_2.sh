#!/usr/bin/env bash
# The course's hw2 problem 2 command: bash hw2_2.sh $1 writes 1000 digits {d}_{001..100}.png into $1 with the
# diffusion model (checkpoints/ddpm_digits, its own sampling defaults, seed 0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/grading/_env.sh"
exec "$PYTHON" -m grading.course hw2_2 "$@"
