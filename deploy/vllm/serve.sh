#!/usr/bin/env bash
# Start a vLLM CPU server on a Hugging Face model directory with LoRA hot-loading enabled.
# Usage: deploy/vllm/serve.sh VENV MODEL_DIR PORT [extra vLLM args...]
set -euo pipefail
venv=$1 model=$2 port=$3
shift 3
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
# a model step on an oversubscribed CPU (other jobs on the cores) can exceed vLLM's 300 s default, which kills the engine
export VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS=${VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS:-1800}
export HF_HUB_OFFLINE=1
# bfloat16 only where the CPU computes it natively (AVX512-BF16 or AMX); on AVX2-only CPUs (these machines) vLLM's
# CPU kernels ran bfloat16 ~4x slower than float32 (generation 12-18 vs 50-65 tokens/s with ~30 requests in flight)
if [ -z "${VLLM_DTYPE:-}" ]; then
  if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo; then VLLM_DTYPE=bfloat16; else VLLM_DTYPE=float32; fi
fi
exec "$venv/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$model" --served-model-name smollm2 \
  --host 127.0.0.1 --port "$port" \
  --dtype "$VLLM_DTYPE" --max-model-len 2048 \
  --enable-lora --max-lora-rank 64 --max-loras 4 \
  --scheduling-policy priority \
  "$@"
