#!/usr/bin/env bash
# One GPU machine (one or more GPUs): one process drives every listed GPU; no jax.distributed.
#
# Usage: launch/gpu_single.sh --config FILE --workdir DIR --gpus LIST [options] [-- extra flags]
#
# Settings (flag, or environment variable):
#   --config   VRFT_CONFIG    e.g. configs/demo.py                                  (required)
#   --workdir  VRFT_WORKDIR   run folder: config.json, logs, checkpoints            (required)
#   --gpus     VRFT_GPUS      GPUs to use, e.g. 0 or 0,1,2,3 or all                 (required)
#   --venv     VRFT_VENV      virtualenv to run in; omit to use the python on PATH
#   --install                 first create --venv and install "jax[cuda12]" and this package
#   --dry-run                 print every command instead of running it
# Flags after -- go to vrft_jax.main unchanged, e.g. -- --config.total_steps=10
#
# The python process replaces this shell (exec), so a SIGTERM from a scheduler reaches it: the run
# finishes its step, saves a checkpoint and exits 0. Running the same command again resumes.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

config="${VRFT_CONFIG:-}"
workdir="${VRFT_WORKDIR:-}"
gpus="${VRFT_GPUS:-}"
venv="${VRFT_VENV:-}"
install=0
extra=()

while (($#)); do
  case "$1" in
    -h | --help) print_header "${BASH_SOURCE[0]}"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --install) install=1 ;;
    --config) need_value "$1" "$#"; config="$2"; shift ;;
    --workdir) need_value "$1" "$#"; workdir="$2"; shift ;;
    --gpus) need_value "$1" "$#"; gpus="$2"; shift ;;
    --venv) need_value "$1" "$#"; venv="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1. See --help." ;;
  esac
  shift
done

require "$config" --config VRFT_CONFIG
require "$workdir" --workdir VRFT_WORKDIR
require "$gpus" --gpus VRFT_GPUS
[[ "$gpus" == all || "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
  die "--gpus must be 'all' or a comma list of GPU numbers like 0,1 (got '$gpus')."
((install == 0)) || [[ -n "$venv" ]] || die "--install needs --venv DIR (where to install)."

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=python3
if [[ -n "$venv" ]]; then
  python="$venv/bin/python"
  if ((install)); then
    run python3 -m venv "$venv"
    run "$python" -m pip install -U pip
    run "$python" -m pip install "jax[cuda12]"
    run "$python" -m pip install -e "$repo_root"
  elif [[ ! -x "$python" ]] && ((DRY_RUN == 0)); then
    die "--venv $venv has no bin/python; create it or add --install."
  fi
fi

cd "$repo_root"
cmd=("$python" -m vrft_jax.main --config "$config" --workdir "$workdir" ${extra[@]+"${extra[@]}"})
if [[ "$gpus" == all ]]; then
  run_exec "${cmd[@]}"
else
  run_exec env CUDA_VISIBLE_DEVICES="$gpus" "${cmd[@]}"
fi
