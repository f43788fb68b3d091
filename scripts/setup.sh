#!/usr/bin/env bash
# Create .venv (if needed) and install segany with the given extras, e.g. `scripts/setup.sh test,ray`.
#
# torch is installed first and pinned: on the CPU machines this project targets, `torch==2.13.0` is a
# local CPU wheel, while an unpinned `torch` would pull several GB of CUDA packages. GPU users install
# the CUDA build they want first (see README) or set SEGANY_TORCH, and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip install "${SEGANY_TORCH:-torch==2.13.0}"
fi
if [ -n "$extras" ]; then
  pip install -e ".[${extras}]"
else
  pip install -e .
fi
