#!/usr/bin/env bash
# Build .venv-label-studio/ (once): the real Label Studio server for the end-to-end test of segany as its ML
# backend. It has its own virtualenv because Label Studio pins Django and friends that segany does not need.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-label-studio
if "$venv/bin/python" -c "import label_studio.server" 2>/dev/null; then
  exit 0
fi
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip --disable-pip-version-check -q install "label-studio>=1.20,<2"
