# Sourced by the grading scripts: CPU only, no network, the repository importable from any working directory,
# and the project's .venv when there is one ($PYTHON overrides).
export CUDA_VISIBLE_DEVICES=""
export HF_HUB_OFFLINE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python)"; fi
fi
