#!/usr/bin/env bash
# Downloads (here, where pip reaches PyPI) the wheels the GPU machine's image lacks for
# bench/train_step.py and bench/grpo_step.py: ml_collections (configs/) and grain (vrft_jax.data,
# which vrft_jax.rollout and vrft_jax.train import) with the two needs of grain the image also
# lacks. bench/gpu_check.sh installs them from .whl/ there when they are not importable. Then:
#   device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# About 4.5 MB; .whl/ is kept out of git through .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  ml_collections==1.1.0 grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
ls -la .whl
