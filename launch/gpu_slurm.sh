#!/usr/bin/env bash
# Several GPU nodes under SLURM: writes an sbatch job and submits it (or prints it with --dry-run).
#
# Usage: launch/gpu_slurm.sh --nodes N --gpus-per-node G --partition P --time T \
#          --config FILE --workdir DIR [options] [-- extra flags for vrft_jax.main]
#
# Settings (flag, or environment variable):
#   --nodes          VRFT_NODES          number of nodes                               (required)
#   --gpus-per-node  VRFT_GPUS_PER_NODE  GPUs on each node                             (required)
#   --partition      VRFT_PARTITION      SLURM partition                               (required)
#   --time           VRFT_TIME           time limit, e.g. 24:00:00                     (required)
#   --config         VRFT_CONFIG         e.g. configs/coco_fewshot.py                  (required)
#   --workdir        VRFT_WORKDIR        run folder on a filesystem all nodes share    (required)
#   --account        VRFT_ACCOUNT        SLURM account; omit if your cluster has none
#   --venv           VRFT_VENV           virtualenv (shared filesystem) activated on every node;
#                                        omit to use the python on PATH
#   --port           VRFT_COORDINATOR_PORT  coordinator port; omit for JAX's own choice:
#                                        61440 + SLURM_JOB_ID % 4096
#   --job-name       VRFT_JOB_NAME       default: vrft
#   --grace          VRFT_GRACE_SECONDS  SIGTERM this many seconds before the time limit so
#                                        the run saves a checkpoint; default: 300
#   --requeue                            let SLURM requeue the job after preemption (it resumes
#                                        from --workdir)
#   --dry-run                            print the job script and the sbatch command only
#
# The job runs one process per node; each drives all G GPUs of its node. The code runs from this
# repository's folder, which must be on the shared filesystem too. `--config.distributed=True`
# makes vrft_jax/main.py call jax.distributed.initialize() with no arguments, which reads:
#   JAX_COORDINATOR_ADDRESS  HOST:PORT of process 0 (the job's first node); set by the job script
#                            (JAX's own variable name)
#   JAX_LOCAL_DEVICE_IDS     0,1,...,G-1: the GPUs this process drives; set by the job script
#                            (JAX's own name; without it JAX would give each process only the GPU
#                            numbered SLURM_LOCALID)
#   SLURM_NTASKS             process count  } set by srun; JAX's SLURM detection reads them
#   SLURM_PROCID             process id     }
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nodes="${VRFT_NODES:-}"
gpus_per_node="${VRFT_GPUS_PER_NODE:-}"
partition="${VRFT_PARTITION:-}"
time_limit="${VRFT_TIME:-}"
config="${VRFT_CONFIG:-}"
workdir="${VRFT_WORKDIR:-}"
account="${VRFT_ACCOUNT:-}"
venv="${VRFT_VENV:-}"
port="${VRFT_COORDINATOR_PORT:-}"
job_name="${VRFT_JOB_NAME:-vrft}"
grace="${VRFT_GRACE_SECONDS:-300}"
requeue=0
extra=()

while (($#)); do
  case "$1" in
    -h | --help) print_header "${BASH_SOURCE[0]}"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --requeue) requeue=1 ;;
    --nodes) need_value "$1" "$#"; nodes="$2"; shift ;;
    --gpus-per-node) need_value "$1" "$#"; gpus_per_node="$2"; shift ;;
    --partition) need_value "$1" "$#"; partition="$2"; shift ;;
    --time) need_value "$1" "$#"; time_limit="$2"; shift ;;
    --config) need_value "$1" "$#"; config="$2"; shift ;;
    --workdir) need_value "$1" "$#"; workdir="$2"; shift ;;
    --account) need_value "$1" "$#"; account="$2"; shift ;;
    --venv) need_value "$1" "$#"; venv="$2"; shift ;;
    --port) need_value "$1" "$#"; port="$2"; shift ;;
    --job-name) need_value "$1" "$#"; job_name="$2"; shift ;;
    --grace) need_value "$1" "$#"; grace="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument $1. See --help." ;;
  esac
  shift
done

require "$nodes" --nodes VRFT_NODES
require "$gpus_per_node" --gpus-per-node VRFT_GPUS_PER_NODE
require "$partition" --partition VRFT_PARTITION
require "$time_limit" --time VRFT_TIME
require "$config" --config VRFT_CONFIG
require "$workdir" --workdir VRFT_WORKDIR
for pair in "--nodes:$nodes" "--gpus-per-node:$gpus_per_node" "--grace:$grace" "--port:${port:-1}"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "${pair%%:*} must be a positive whole number."
done

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
device_ids="$(seq -s, 0 $((gpus_per_node - 1)))"
main=(python -m vrft_jax.main --config "$config" --workdir "$workdir" --config.distributed=True)
main+=(${extra[@]+"${extra[@]}"})

sbatch_lines=(
  "--job-name=$job_name"
  "--nodes=$nodes"
  "--ntasks-per-node=1"
  "--gpus-per-node=$gpus_per_node"
  "--partition=$partition"
  "--time=$time_limit"
  "--signal=TERM@$grace"
)
[[ -z "$account" ]] || sbatch_lines+=("--account=$account")
((requeue == 0)) || sbatch_lines+=("--requeue")

job_script() {
  echo "#!/usr/bin/env bash"
  local line
  for line in "${sbatch_lines[@]}"; do
    echo "#SBATCH $line"
  done
  echo "set -euo pipefail"
  echo "head_node=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n 1)\""
  if [[ -n "$port" ]]; then
    echo "export JAX_COORDINATOR_ADDRESS=\"\$head_node:$port\""
  else
    echo "export JAX_COORDINATOR_ADDRESS=\"\$head_node:\$((61440 + SLURM_JOB_ID % 4096))\""
  fi
  echo "export JAX_LOCAL_DEVICE_IDS=$device_ids"
  [[ -z "$venv" ]] || echo "source $(quote_cmd "$venv/bin/activate")"
  echo "cd $(quote_cmd "$repo_root")"
  echo "echo \"coordinator \$JAX_COORDINATOR_ADDRESS, \$SLURM_JOB_NUM_NODES nodes\""
  echo "srun --ntasks-per-node=1 --kill-on-bad-exit=1 $(quote_cmd "${main[@]}")"
}

if ((DRY_RUN)); then
  echo "sbatch <<'JOB'"
  job_script
  echo "JOB"
else
  job_script | run sbatch
fi
