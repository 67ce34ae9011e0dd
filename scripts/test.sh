#!/usr/bin/env bash
# Set up (if needed) and run the full test suite (slow tests included). Extra arguments go to pytest, as one run:
#   bash scripts/test.sh -m "not slow"      bash scripts/test.sh tests/rl -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# a native crash (even after the last test, in interpreter shutdown) prints every thread's Python stack
export PYTHONFAULTHANDLER=1
PYTEST=("${WINDWARD_VENV:-$ROOT/.venv}/bin/python" -m pytest -q -ra)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" --durations=15 "$@"
fi
# No arguments (CI): the fast tests in two processes, then the slow ones one at a time. The fast tests wait about
# half their time (timeouts, sleeps, subprocesses): two processes take 2.8 min where one took 5. Each slow test
# keeps both cores busy: two at a time took as long in all (27 min) and ran past a transport's timeout.
rc=0
"${PYTEST[@]}" -m "not slow" -n 2 --dist worksteal --durations=10 || rc=$?
"${PYTEST[@]}" -m slow --durations=15 || rc=$?
exit "$rc"
