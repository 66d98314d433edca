#!/usr/bin/env bash
# Install into .venv (created if missing) and run the fast test suite. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh --runslow`). Real-data tests run when ../shared/data exists, else they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@"
