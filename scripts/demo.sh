#!/usr/bin/env bash
# Install into .venv (created if missing) and start the Streamlit demo on the shipped checkpoints/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/streamlit run app.py "$@"
