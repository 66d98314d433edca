#!/usr/bin/env bash
# Homework outputs from the shipped checkpoints, offline and on the CPU:
#   bash grading/hw_run.sh OUT_DIR [DATA_DIR] [--force]
# writes OUT_DIR/{faces,digits,adaptation}/ and OUT_DIR/manifest.json. Parts or pairs whose data is not in DATA_DIR
# are skipped ("skipped (no usps data)"); exit 1 only if something that could run failed, 2 on bad usage.
# DATA_DIR defaults to $DLCV_DATA, else the repository's data/. Grade with: python -m grading.score OUT_DIR --data DATA_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/grading/_env.sh"
export DLCV_DATA="${DLCV_DATA:-$ROOT/data}"
exec "$PYTHON" -m grading.run "$@"
