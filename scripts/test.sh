#!/usr/bin/env bash
# Set up (if needed) and run the full test suite (slow tests included). Extra arguments go to pytest:
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/rl -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# a native crash (even after the last test, in interpreter shutdown) prints every thread's Python stack
export PYTHONFAULTHANDLER=1
exec "${WINDWARD_VENV:-$ROOT/.venv}/bin/python" -m pytest -q -ra --durations=15 "$@"
