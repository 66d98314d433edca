#!/usr/bin/env bash
# The course's hw2 problem 3 command: bash hw2_3.sh <test_dir> <out_csv> predicts every image in <test_dir> and
# writes image_name,label to <out_csv>. As in the course, the target domain is the one named in the path
# (e.g. hw2_data/digits/usps/data -> usps, .../mnistm/data -> mnistm); the model is the best shipped
# checkpoints/uda_<method>_<source>_to_<target> for it. No checkpoint ships for SVHN as a target (a folder named
# svhn stops with that message): train one with `python -m dlcv train uda_dann --data.target_domain=svhn ...`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/grading/_env.sh"
exec "$PYTHON" -m grading.course hw2_3 "$@"
