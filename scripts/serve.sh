#!/usr/bin/env bash
# Set up segany and start the server on 127.0.0.1:8000 (web page at /, API docs at /docs).
#
# Weights: the official SAM 2.1 tiny checkpoint from the Hugging Face cache or hub, or the file in
# SEGANY_CHECKPOINT. On an offline development machine with ../shared beside the checkout, a
# checkpoint with random weights (official layout) is written instead so the server can be tried:
# its masks are noise. The file is marked as random, so /readyz, /v1/info, the X-Segany-Weights
# header of every answer and the web page say "random". `segany weights fetch` (online) ends this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args=("$@")
if [ -z "${SEGANY_CHECKPOINT:-}" ]; then
  if ! .venv/bin/python -c "from segany.model.weights import resolve_checkpoint; from segany.model import get_variant; resolve_checkpoint(get_variant('sam2.1_hiera_tiny'))" 2>/dev/null \
     && [ -f ../shared/tools/random_sam2_checkpoint.py ]; then
    mkdir -p .cache
    if [ ! -f .cache/sam2.1_hiera_tiny-random.pt ] || ! .venv/bin/python -c "import sys; from segany.model.weights import is_random_checkpoint; sys.exit(not is_random_checkpoint('.cache/sam2.1_hiera_tiny-random.pt'))"; then
      .venv/bin/python ../shared/tools/random_sam2_checkpoint.py sam2.1_hiera_tiny .cache/sam2.1_hiera_tiny-random.pt >/dev/null
      .venv/bin/python -c "from segany.model.weights import mark_random_checkpoint; mark_random_checkpoint('.cache/sam2.1_hiera_tiny-random.pt')"
    fi
    echo "segany: official weights not cached and the hub unreachable; serving RANDOM weights from .cache/ (masks are noise). Leave this with: .venv/bin/segany weights fetch sam2.1_hiera_tiny (online), or SEGANY_CHECKPOINT=FILE" >&2
    export SEGANY_CHECKPOINT=.cache/sam2.1_hiera_tiny-random.pt
  fi
fi
exec .venv/bin/segany serve "${args[@]}"
