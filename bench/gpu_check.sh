#!/usr/bin/env bash
# Issue 4's GPU benchmark as ONE prepared run (about 5 minutes on an H100/H200 once started):
#   device tool: run(command="bash bench/gpu_check.sh", timeout_s=540)
#   here, to check the script itself on the CPU in a few minutes:  bash bench/gpu_check.sh --smoke
#
# 1. bench/rollout.py --preset 2b: our sampler and transformers' generate on the same random bf16
#    Qwen2-VL-2B weights and inputs (8 prompts x 8 samples, 448px images, 256 new tokens) in one
#    process: tokens/s of both, the ratio, ms per decode step, prefill and vision-tower time, and
#    the fraction of the HBM roofline.
# 2. the same, ours only, with attention="cudnn" (a GPU-only kernel).
# 3. bench/decode_cost.py: XLA's own cost analysis of one decode step, compiled for this GPU.
# Logs go to $OUT (the device tool brings them back) or /tmp/vrft_gpu_check.
# Needs jax, flax, transformers, torch and safetensors only (no ml_collections, pycocotools, tfds).
set -uo pipefail

preset=2b
if [[ "${1:-}" == "--smoke" ]]; then
  preset=cpu-small
elif [[ -n "${1:-}" ]]; then
  echo "usage: bash bench/gpu_check.sh [--smoke]" >&2
  exit 2
fi
cd "$(dirname "$0")/.." || exit 2
out=${OUT:-/tmp/vrft_gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# JAX and torch share the GPU in one process: leave torch room (JAX takes 75% by default).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, keep going
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  if ((rc != 0)); then
    echo "=== $name exited $rc" | tee -a "$out/$name.log"
    status=1
  fi
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python3 -c "import jax, flax, transformers, torch; print('jax', jax.__version__, 'flax',
flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__,
jax.devices())"
} 2>&1 | tee "$out/env.log"

step rollout 300 python3 bench/rollout.py --preset "$preset"
if [[ "$preset" == 2b ]]; then
  step rollout_cudnn 150 python3 bench/rollout.py --preset 2b --no-torch --attention cudnn
fi
if [[ -f bench/decode_cost.py ]]; then
  step decode_cost 120 python3 bench/decode_cost.py --preset "$preset" --both
fi
echo "=== done (status $status); logs in $out"
exit "$status"
