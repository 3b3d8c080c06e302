#!/usr/bin/env bash
# Cloud TPU VMs (one host or a multi-host slice): create, copy the code, set up, run, logs, delete.
#
# Usage: launch/tpu_vm.sh SUBCOMMAND [options] [-- extra flags for vrft_jax.main]
# Order for a new slice: create -> copy -> setup -> run -> logs ... -> (stop) -> delete.
# stop sends SIGTERM to the runs (they save a checkpoint and exit 0), as a preemption would.
# Every gcloud call names --project and --zone explicitly: nothing comes from gcloud's own config.
#
# Settings (flag, or environment variable):
#   --project          VRFT_PROJECT            Google Cloud project                    (all)
#   --zone             VRFT_ZONE               e.g. us-central2-b                      (all)
#   --name             VRFT_TPU_NAME           TPU VM / slice name                     (all)
#   --accelerator-type VRFT_ACCELERATOR_TYPE   e.g. v4-8, v5litepod-16, v6e-8         (create)
#   --runtime-version  VRFT_RUNTIME_VERSION    e.g. tpu-ubuntu2204-base, v2-alpha-tpuv6e (create)
#   --spot                                     create a Spot (preemptible) VM          (create)
#   --git-url URL [--git-ref REF]              clone instead of copying the local tree (copy)
#   --config           VRFT_CONFIG             e.g. configs/demo.py                    (run)
#   --workdir          VRFT_WORKDIR            gs://BUCKET/run1 (multi-host slices need a
#                                              shared location for checkpoints)        (run)
#   --remote-dir       VRFT_REMOTE_DIR         code folder on the workers, default: vrft_jax
#                                              (relative to the worker's home)
#   --venv             VRFT_VENV               virtualenv on the workers, default: vrft_venv
#   --log-file         VRFT_LOG_FILE           log on each worker, default: vrft_run.log
#   --worker           which worker `logs` tails: a number or all, default: 0
#   --dry-run          print every command instead of running it
#
# `run` starts `python -m vrft_jax.main --config ... --workdir ... --config.distributed=True` on
# all workers at once (gcloud ... ssh --worker=all) under nohup, so it survives the ssh session;
# jax.distributed.initialize() finds the slice's workers by itself on Cloud TPU.
# On preemption the VM gets SIGTERM: the run saves a checkpoint and exits 0; `run` again resumes.
set -euo pipefail

# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"


project="${VRFT_PROJECT:-}"
zone="${VRFT_ZONE:-}"
name="${VRFT_TPU_NAME:-}"
accelerator_type="${VRFT_ACCELERATOR_TYPE:-}"
runtime_version="${VRFT_RUNTIME_VERSION:-}"
config="${VRFT_CONFIG:-}"
workdir="${VRFT_WORKDIR:-}"
remote_dir="${VRFT_REMOTE_DIR:-vrft_jax}"
venv="${VRFT_VENV:-vrft_venv}"
log_file="${VRFT_LOG_FILE:-vrft_run.log}"
worker="0"
spot=0
git_url=""
git_ref=""
subcommand=""
extra=()

while (($#)); do
  case "$1" in
    -h | --help) print_header "${BASH_SOURCE[0]}"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) spot=1 ;;
    --project) need_value "$1" "$#"; project="$2"; shift ;;
    --zone) need_value "$1" "$#"; zone="$2"; shift ;;
    --name) need_value "$1" "$#"; name="$2"; shift ;;
    --accelerator-type) need_value "$1" "$#"; accelerator_type="$2"; shift ;;
    --runtime-version) need_value "$1" "$#"; runtime_version="$2"; shift ;;
    --config) need_value "$1" "$#"; config="$2"; shift ;;
    --workdir) need_value "$1" "$#"; workdir="$2"; shift ;;
    --remote-dir) need_value "$1" "$#"; remote_dir="$2"; shift ;;
    --venv) need_value "$1" "$#"; venv="$2"; shift ;;
    --log-file) need_value "$1" "$#"; log_file="$2"; shift ;;
    --worker) need_value "$1" "$#"; worker="$2"; shift ;;
    --git-url) need_value "$1" "$#"; git_url="$2"; shift ;;
    --git-ref) need_value "$1" "$#"; git_ref="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1. See --help." ;;
    *)
      [[ -z "$subcommand" ]] || die "one subcommand at a time (got '$subcommand' and '$1')."
      subcommand="$1"
      ;;
  esac
  shift
done

[[ -n "$subcommand" ]] || die "missing subcommand: create, copy, setup, run, logs, stop or delete. See --help."
require "$project" --project VRFT_PROJECT
require "$zone" --zone VRFT_ZONE
require "$name" --name VRFT_TPU_NAME

where=(--zone="$zone" --project="$project")

# Worker-side paths: relative ones live in the worker's home ($HOME expands on the worker).
in_home() {
  case "$1" in
    /*) echo "$1" ;;
    *) echo "\$HOME/$1" ;;
  esac
}
r_dir="$(in_home "$remote_dir")"
r_venv="$(in_home "$venv")"
r_log="$(in_home "$log_file")"

# Runs one shell command line on the chosen workers.
on_workers() {
  local which="$1" command="$2"
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker="$which" --command="$command"
}

case "$subcommand" in
  create)
    require "$accelerator_type" --accelerator-type VRFT_ACCELERATOR_TYPE
    require "$runtime_version" --runtime-version VRFT_RUNTIME_VERSION
    flags=(--accelerator-type="$accelerator_type" --version="$runtime_version")
    if ((spot)); then
      flags+=(--spot)
    fi
    run gcloud compute tpus tpu-vm create "$name" "${where[@]}" "${flags[@]}"
    ;;
  copy)
    if [[ -n "$git_url" ]]; then
      clone="rm -rf $r_dir && git clone $(quote_cmd "$git_url") $r_dir"
      [[ -z "$git_ref" ]] || clone+=" && git -C $r_dir checkout $(quote_cmd "$git_ref")"
      on_workers all "$clone"
    else
      repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
      tarball="${TMPDIR:-/tmp}/vrft_jax_code.tar.gz"
      run tar -czf "$tarball" --exclude=.git --exclude=__pycache__ -C "$repo_root" .
      run gcloud compute tpus tpu-vm scp "$tarball" "$name:vrft_jax_code.tar.gz" "${where[@]}" \
        --worker=all
      on_workers all "rm -rf $r_dir && mkdir -p $r_dir && tar -xzf vrft_jax_code.tar.gz -C $r_dir"
    fi
    ;;
  setup)
    # gcsfs lets checkpoints and logs live in gs:// buckets.
    on_workers all "set -e; python3 -m venv $r_venv; $r_venv/bin/pip install -U pip; \
$r_venv/bin/pip install \"jax[tpu]\"; $r_venv/bin/pip install -e $r_dir gcsfs; \
$r_venv/bin/python -c \"import jax; print(jax.device_count(), jax.devices()[0].device_kind)\""
    ;;
  run)
    require "$config" --config VRFT_CONFIG
    require "$workdir" --workdir VRFT_WORKDIR
    if [[ "$workdir" != gs://* ]]; then
      echo "warning: --workdir $workdir is not a gs:// bucket; on a multi-host slice every" \
        "worker must see the same checkpoint folder." >&2
    fi
    main=(python -m vrft_jax.main --config "$config" --workdir "$workdir" --config.distributed=True)
    main+=(${extra[@]+"${extra[@]}"})
    on_workers all "source $r_venv/bin/activate && cd $r_dir && \
nohup $(quote_cmd "${main[@]}") > $r_log 2>&1 < /dev/null &"
    ;;
  logs)
    on_workers "$worker" "tail -n 200 -F $r_log"
    ;;
  stop)
    # SIGTERM, as a preemption would: each worker finishes its step, saves, exits 0.
    # [v] keeps pkill from matching this very command line.
    on_workers all "pkill -TERM -f \"[v]rft_jax.main\" || echo \"no run on this worker\""
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet
    ;;
  *)
    die "unknown subcommand '$subcommand': use create, copy, setup, run, logs, stop or delete."
    ;;
esac
