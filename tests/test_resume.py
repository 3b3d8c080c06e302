"""Exact resume with the real GRPO trainer (`python -m vrft_jax.main`, tiny model, CPU, float32).

- A run killed with SIGKILL resumes from its last checkpoint; then SIGTERM stops the resumed run
  after its current step (the last) with a saved checkpoint and exit status 0. The per-step
  metrics and the final train state equal those of one uninterrupted run, bit for bit.
- A NaN injected into one step's loss skips that update (parameters unchanged, counted); enough in
  a row stop the run with a clear message.
- A workdir holding a checkpoint of another model shape fails naming the first mismatched key.

Run as a script (`python tests/test_resume.py <vrft_jax.main flags>`) this file is vrft_jax.main
with a test-only hook: VRFT_TEST_NAN_STEPS="2,4" makes the loss of those optimizer steps NaN.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 6  # optimizer steps of the resume runs
EVERY = 2  # checkpoint interval

# A demo-like GRPO run shrunk to seconds per step on CPU.
OVERRIDES = {
    "total_steps": TOTAL,
    "eval_at_start": False,
    "sft.warmup_steps": 0,
    "input.batch_size": 2,
    "grpo.G": 2,
    "grpo.micro_batch_size": 4,
    "grpo.beta": 0.04,  # a reference model, rebuilt from the initial weights on resume
    "sampler.max_new_tokens": 8,
    "data.num_workers": 1,
    "data.num_eval_examples": 2,
    "eval.max_new_tokens": 4,
    "eval.batch_size": 2,
    "ckpt.every": EVERY,
    "ckpt.keep": 2,
    "optim.lr": 1e-3,  # large enough that every step visibly moves the parameters
    # The random model earns no reward, so the policy gradient is zero; what moves the weights is
    # the KL term's gradient between the update's own forward and the reference's log-prob
    # program (float32 rounding apart; AdamW scales it to lr-sized steps). Deterministic, so
    # every resume comparison below is still exact. With exact values it would be exactly zero.
    "grpo.exact_logprob_values": False,
}
# Metrics that measure time or compilation, not the computation: they may differ between runs.
TIMING_KEYS = ("step_time", "tokens_per_s", "compile_count")


def _argv(workdir, **overrides):
    flags = {**OVERRIDES, **overrides}
    return ["--config", os.path.join(REPO, "configs", "demo.py"), "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in flags.items()
    ]


def run_env(**extra):
    """Environment of the training subprocesses: CPU, a 2-device fsdp mesh, and a persistent
    compilation cache shared by all runs (the first run compiles the rollout and update programs,
    the others load them: minutes of CPU compile time saved)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "vrft_jax_test_jit")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env.update(extra)
    return env


def _start(workdir, script=False, env_extra=None, **overrides):
    env = run_env(**(env_extra or {}))
    entry = [os.path.abspath(__file__)] if script else ["-m", "vrft_jax.main"]
    return subprocess.Popen(
        [sys.executable, *entry, *_argv(workdir, **overrides)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged_steps(workdir) -> list[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def _wait_for_step(proc, workdir, step, *, after=0, timeout=300):
    """Waits until metrics.jsonl holds a line for `step` beyond its first `after` lines."""
    deadline = time.time() + timeout
    while step not in _logged_steps(workdir)[after:]:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}):\n{proc.stderr.read()}")
        assert time.time() < deadline, f"step {step} not logged in {timeout}s"
        time.sleep(0.05)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _rows(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _metrics_by_step(workdir) -> dict:
    """{step: metrics without timing} of the train rows."""
    rows = {}
    for row in _rows(workdir):
        if any(k.startswith("eval/") for k in row):
            continue
        rows[row.pop("step")] = {
            k: v for k, v in row.items() if k not in TIMING_KEYS and not k.startswith("time/")
        }
    return rows


def _read_state(workdir, step):
    """The saved train state of `step` as host numpy arrays (params, opt_state, step)."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    tree = checkpointer.metadata(path).item_metadata.tree
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(target, restore_args))


def _assert_trees_equal(a, b):
    import jax

    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


# ---- SIGKILL, SIGTERM, and exact resume ---------------------------------------------------------


@pytest.mark.slow
def test_killed_and_preempted_run_ends_like_an_uninterrupted_one(tmp_path):
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    # 1. SIGKILL right after step 3 is logged: the last checkpoint is step 2 (or still being
    #    written, then step 0 = a fresh start), so at most the steps since it are lost.
    proc = _start(run_dir)
    _wait_for_step(proc, run_dir, 1)
    reference = _start(ref_dir)  # alongside, once the programs are compiled (and cached)
    _wait_for_step(proc, run_dir, 3)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_after = max(_logged_steps(run_dir))

    # 2. Restart: resumes from the last checkpoint (metrics.jsonl drops the rows after it).
    #    SIGTERM once it logs step TOTAL - 1: it finishes the step in flight (normally the last
    #    one), saves it, says why it stopped and exits 0.
    saved = [p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    resumed_from = max((int(p.name) for p in saved if (p / "state").is_dir()), default=0)
    proc = _start(run_dir)
    _wait_for_step(proc, run_dir, TOTAL - 1, after=resumed_from)
    time.sleep(0.3)  # into the last step (about 1-2 s), so that no fourth start is needed
    proc.send_signal(signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 0, err[-4000:]
    assert "Stopped by SIGTERM after step" in out, out[-2000:]
    stopped_at = int(out.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    assert stopped_at in (TOTAL - 1, TOTAL)
    assert os.path.isdir(run_dir / "checkpoints" / str(stopped_at) / "state")
    lost = killed_after - resumed_from
    print(
        f"SIGKILL after step {killed_after}: resumed from {resumed_from}, lost {lost} steps; "
        f"SIGTERM stopped after step {stopped_at}"
    )
    assert 0 <= lost <= 2 * EVERY - 1
    if stopped_at < TOTAL:  # the signal came before the last step started: finish it
        rc, out, err = _finish(_start(run_dir))
        assert rc == 0, err[-4000:]
    rc, out, err = _finish(reference)
    assert rc == 0, err[-4000:]

    train_steps = [r["step"] for r in _rows(run_dir) if "loss" in r]
    assert train_steps == list(range(1, TOTAL + 1))  # each step once, despite the kill
    ref_metrics, run_metrics = _metrics_by_step(ref_dir), _metrics_by_step(run_dir)
    assert sorted(ref_metrics) == list(range(1, TOTAL + 1)) == sorted(run_metrics)
    for step in ref_metrics:
        assert run_metrics[step] == ref_metrics[step], f"step {step} metrics differ"
    assert len({m["loss"] for m in ref_metrics.values()}) > 1  # the metrics do change per step
    _assert_trees_equal(_read_state(run_dir, TOTAL), _read_state(ref_dir, TOTAL))


@pytest.mark.slow
def test_mu2_killed_run_resumes_bit_identical_with_the_schedule_over_all_updates(tmp_path):
    """grpo.mu = 2: total_steps counts rollout steps, each doing 2 optimizer updates. A run killed
    after rollout step 3 resumes from its last checkpoint at the right rollout (not at its update
    count) and ends identical to an uninterrupted run; the linear lr schedule spans all
    total_steps * mu updates (a schedule over total_steps updates would reach 0 half-way)."""
    total, lr = 4, 1e-3
    mu2 = {"grpo.mu": 2, "total_steps": total, "optim.schedule": "linear", "optim.lr": lr}
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    proc = _start(run_dir, **mu2)
    _wait_for_step(proc, run_dir, 1, timeout=900)  # the first run compiles (2 loaded cores)
    reference = _start(ref_dir, **mu2)
    _wait_for_step(proc, run_dir, 3)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The restart resumes from the last finished checkpoint (every 2 rollout steps; the directory
    # is named by the rollout step, not by the 2x as many optimizer updates).
    saved = [p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()]
    resumed_from = max((int(p.name) for p in saved if (p / "state").is_dir()), default=0)
    assert resumed_from in (0, 2), resumed_from
    # Generous timeouts: measured 5-6 min per run while the 2 cores ran other jobs too.
    rc, out, err = _finish(_start(run_dir, **mu2), timeout=900)
    assert rc == 0, err[-4000:]
    train_steps = [r["step"] for r in _rows(run_dir) if "loss" in r]
    assert train_steps == list(range(1, total + 1))  # each rollout step logged once
    rc, out, err = _finish(reference, timeout=900)
    assert rc == 0, err[-4000:]

    ref_metrics, run_metrics = _metrics_by_step(ref_dir), _metrics_by_step(run_dir)
    assert sorted(ref_metrics) == list(range(1, total + 1)) == sorted(run_metrics)
    for step in ref_metrics:
        assert run_metrics[step] == ref_metrics[step], f"step {step} metrics differ"
    ref_state = _read_state(ref_dir, total)
    _assert_trees_equal(_read_state(run_dir, total), ref_state)
    assert int(ref_state["step"]) == total * 2  # optimizer updates
    # Logged lr: the last update of rollout step s is update 2s - 1 (0-based) of 2 * total.
    want = [lr * (1 - (2 * s - 1) / (2 * total)) for s in range(1, total + 1)]
    np.testing.assert_allclose([ref_metrics[s]["lr"] for s in range(1, total + 1)], want, rtol=1e-6)


# ---- Non-finite guard ---------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_step_is_skipped_and_too_many_in_a_row_stop_the_run(tmp_path):
    # Step 2: NaN (skipped); step 3: fine; steps 4 and 5: NaN -> 2 in a row stops the run.
    proc = _start(
        tmp_path,
        script=True,
        env_extra={"VRFT_TEST_NAN_STEPS": "2,4,5"},
        **{"ckpt.every": 1, "ckpt.keep": 5, "optim.max_nonfinite_steps": 2},
    )
    rc, out, err = _finish(proc)
    assert rc != 0
    assert "2 optimizer steps in a row had a non-finite loss or gradient" in err, err[-3000:]
    assert "stopped at step 5" in err
    metrics = _metrics_by_step(tmp_path)
    assert [metrics[s]["nonfinite_in_row"] for s in (1, 2, 3, 4, 5)] == [0, 1, 0, 1, 2]
    assert [metrics[s]["nonfinite_total"] for s in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 3]
    states = {s: _read_state(tmp_path, s)["params"] for s in (1, 2, 3, 4)}
    _assert_trees_equal(states[2], states[1])  # the NaN step changed nothing
    _assert_trees_equal(states[4], states[3])
    embed = [states[s]["language_model"]["embed_tokens"] for s in (2, 3)]
    assert not np.array_equal(*embed)  # while a good step does
    assert np.isfinite(embed[1]).all()
    assert not os.path.isdir(tmp_path / "checkpoints" / "5")  # no save of the failing step


# ---- A checkpoint of another model ---------------------------------------------------------------


def test_checkpoint_of_another_model_shape_names_the_key(tmp_path):
    import jax.numpy as jnp
    from flax import nnx

    from vrft_jax import config_utils, hf, train
    from vrft_jax.checkpoint import Checkpointer, CheckpointError
    from vrft_jax.models import get_preset, random_qwen2_vl

    # The workdir holds a tiny model's checkpoint; the config's model has a wider MLP.
    params = nnx.to_pure_dict(nnx.state(random_qwen2_vl("tiny"), nnx.Param))
    ckpt = Checkpointer(tmp_path, every=1, keep=1, async_save=False)
    ckpt.save(1, {"params": params, "step": jnp.int32(1)})
    ckpt.close()
    wider = tmp_path / "wider_hf"
    hf.save_qwen2_vl(random_qwen2_vl(get_preset("tiny", intermediate_size=96)), str(wider))
    config = config_utils.load_config_file(os.path.join(REPO, "configs", "demo.py"))
    config.model_init = str(wider)
    with pytest.raises(CheckpointError) as failure:
        train.run(config, str(tmp_path))  # fails at the restore, before any training step
    message = str(failure.value)
    assert (
        "'params/language_model/layers/down_kernel' has shape (2, 128, 64) in the checkpoint "
        "but (2, 96, 64) in the model" in message
    ), message


# ---- Script mode: vrft_jax.main with a NaN-injection hook ---------------------------------------


def _install_nan_hook(nan_steps):
    """Makes the advantages, hence the loss, NaN on GRPO steps `nan_steps` (1-based).

    Done on the host batch, so the run uses the same compiled programs as the others.
    """
    from vrft_jax import steps

    original = steps.place_batch
    calls = []

    def place_batch(batch, mesh):
        if "advantages" in batch:  # a GRPO update batch (once per step when grpo.mu == 1)
            calls.append(None)
            if len(calls) in nan_steps:
                batch = dict(batch, advantages=np.full_like(batch["advantages"], np.nan))
        return original(batch, mesh)

    steps.place_batch = place_batch  # train.py calls steps.place_batch(...)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    nan_steps = os.environ.get("VRFT_TEST_NAN_STEPS", "")
    if nan_steps:
        _install_nan_hook([int(s) for s in nan_steps.split(",")])
    from vrft_jax import main

    sys.argv[0] = "vrft_jax.main"
    main.run()
