#!/usr/bin/env bash
# Set up everything the tests need (from nothing) and run the whole suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,text,supervision,ray
# Browser tests drive Debian's Chromium (no browser download): install it when it is missing.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will skip"
fi
# The real Label Studio for its end-to-end test, in its own virtualenv (built once, then reused).
bash scripts/label_studio_venv.sh
exec .venv/bin/python -m pytest -q "$@"
