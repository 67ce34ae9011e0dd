#!/usr/bin/env bash
# The device check of the GPU path (scripts/gpu_check.py): one command, under 8 minutes on one GPU, nothing
# installed, no download. On the GPU machine: bash scripts/gpu_check.sh [--out results.json]
# Here (no GPU) it runs the CPU twin and says SKIP for the GPU-only parts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
cd "$ROOT"
exec timeout 480 "$PY" -u scripts/gpu_check.py "$@"
