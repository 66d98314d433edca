# Sourced by the grading scripts: CPU only, no network, the repository importable from any working directory,
# and the project's .venv when there is one ($PYTHON overrides).
export CUDA_VISIBLE_DEVICES=""
export HF_HUB_OFFLINE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python || true)"; fi
fi
# A Python without the dependencies would stop with "No module named torch"; say how to install them instead.
if [[ -z "$PYTHON" ]] || ! "$PYTHON" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('torch', 'safetensors', 'PIL')))" 2>/dev/null; then
    echo "error: ${PYTHON:-no python3 found}: torch, safetensors or Pillow missing; install the dependencies with" \
         "\`${PYTHON:-python3} -m pip install -r $ROOT/requirements.txt\` or set PYTHON=/path/to/python" >&2
    exit 2
fi
