"""Checkpoints: sharded round trips across device counts, resume precedence, clear errors, and
preemption (SIGTERM saves and exits 0; SIGKILL resumes to the same final state).

Run as a script (`python tests/test_checkpoint.py WORKDIR TOTAL EVERY SLEEP`) this file is the toy
training loop the subprocess tests start and kill.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from vrft_jax import checkpoint as ckpt_lib
from vrft_jax.preemption import PreemptionGuard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- A deterministic toy training loop ----------------------------------------------------------


def toy_init(seed: int = 0):
    k = jax.random.key(seed)
    params = {"w": jnp.zeros((4, 8), jnp.float32), "b": jnp.zeros((8,), jnp.float32)}
    return {"params": params, "opt_state": {"m": jnp.zeros((4, 8))}, "step": jnp.int32(0), "rng": k}


@jax.jit
def toy_step(state):
    """One 'optimizer step': random-walk parameters driven by the state's own RNG."""
    rng, sub = jax.random.split(state["rng"])
    noise = jax.random.normal(sub, state["params"]["w"].shape)
    w = state["params"]["w"] * 0.9 + noise
    params = {"w": w, "b": state["params"]["b"] + w.mean(0)}
    m = state["opt_state"]["m"] * 0.5 + w
    return {"params": params, "opt_state": {"m": m}, "step": state["step"] + 1, "rng": rng}


def toy_reference(steps: int):
    state = toy_init()
    metrics = []
    for _ in range(steps):
        state = toy_step(state)
        metrics.append(float(state["params"]["b"].sum()))
    return state, metrics


def toy_main(workdir: str, total: int, every: int, sleep: float) -> int:
    """The loop the preemption tests run: resume, step, save every `every`, stop on SIGTERM.

    With TOY_COORDINATOR/TOY_PROCESS_ID set it is one of two processes joined by jax.distributed
    (gloo), holding the state replicated over both processes' devices.
    """
    if os.environ.get("TOY_COORDINATOR"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            os.environ["TOY_COORDINATOR"], 2, int(os.environ["TOY_PROCESS_ID"])
        )
    state = toy_init()
    if os.environ.get("TOY_COORDINATOR"):  # built in place: global arrays over both processes
        mesh = Mesh(np.array(jax.devices()), ("data",))
        state = jax.jit(toy_init, out_shardings=NamedSharding(mesh, P()))()
    ckpt_lib.check_workdir(workdir)
    ckpt = ckpt_lib.Checkpointer(workdir, every=every, keep=2, async_save=True)
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(ckpt_lib.abstract_like(state))
        assert extra["data_position"] == int(state["step"]), extra
        print(f"resumed from step {int(state['step'])}", flush=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    with PreemptionGuard() as guard:
        for step in range(int(state["step"]), total):
            state = toy_step(state)
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": step + 1, "b_sum": float(state["params"]["b"].sum())}))
                f.write("\n")
            extra = {"data_position": step + 1, "model": {"preset": "toy"}}
            ckpt.save(step + 1, state, extra)
            print(f"step {step + 1}", flush=True)
            if guard.should_stop(step + 1):
                ckpt.save(step + 1, state, extra, force=True)
                ckpt.close()
                print(guard.stop_message(step + 1, str(ckpt.directory)), flush=True)
                return 0
            time.sleep(sleep)
    ckpt.save(total, state, {"data_position": total}, force=True)
    ckpt.close()
    print("done", flush=True)
    return 0


def _start_toy(workdir, total, every, sleep, **env_extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="")
    env.update(env_extra)
    cmd = [sys.executable, os.path.abspath(__file__), str(workdir), str(total), str(every)]
    return subprocess.Popen(
        cmd + [str(sleep)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_line(proc, prefix, timeout=120):
    """Reads the child's stdout until a line starts with `prefix`; returns that line."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
        assert time.time() < deadline, f"no {prefix!r} line in time"
    raise AssertionError(f"child ended before {prefix!r}: {proc.stderr.read()[-3000:]}")


def _restore_toy(workdir):
    ckpt = ckpt_lib.Checkpointer(workdir, every=0, keep=2)
    state, extra = ckpt.restore(ckpt_lib.abstract_like(toy_init()))
    ckpt.close()
    return state, extra


def _assert_states_equal(a, b):
    a = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if _is_key(x) else x), a)
    b = jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if _is_key(x) else x), b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def _is_key(x):
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


# ---- Preemption: SIGTERM and SIGKILL ------------------------------------------------------------


def test_sigterm_finishes_step_saves_and_exits_zero(tmp_path):
    proc = _start_toy(tmp_path, total=100000, every=0, sleep=0.02)
    _wait_for_line(proc, "step 5")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "Stopped by SIGTERM after step" in out, out[-2000:]
    stopped_at = int(out.split("Stopped by SIGTERM after step ")[1].split(";")[0])
    state, extra = _restore_toy(tmp_path)
    assert int(state["step"]) == stopped_at == extra["data_position"]
    _assert_states_equal(state, toy_reference(stopped_at)[0])


def test_sigkill_resumes_to_the_same_final_state_and_metrics(tmp_path):
    total, every = 40, 5
    proc = _start_toy(tmp_path, total=total, every=every, sleep=0.05)
    killed_after = int(_wait_for_line(proc, "step 23").split()[1])
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    proc = _start_toy(tmp_path, total=total, every=every, sleep=0.0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    resumed = int(out.split("resumed from step ")[1].split()[0])
    # Loses at most the steps since the last finished save (one interval, plus one in flight).
    assert killed_after - 2 * every <= resumed <= killed_after, (killed_after, resumed)
    lost = killed_after - resumed
    print(f"killed after step {killed_after}, resumed from {resumed}: lost {lost} steps")
    ref_state, ref_metrics = toy_reference(total)
    state, _ = _restore_toy(tmp_path)
    _assert_states_equal(state, ref_state)
    # Per-step metrics: the last line written for each step matches the uninterrupted run.
    logged = {}
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        logged[row["step"]] = row["b_sum"]
    assert sorted(logged) == list(range(1, total + 1))
    np.testing.assert_array_equal([logged[s] for s in range(1, total + 1)], ref_metrics)
    assert ckpt_lib.Checkpointer(tmp_path, every=every, keep=2).all_steps() == [35, 40]


def test_sigterm_on_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    """Two processes joined by jax.distributed (gloo): JAX's preemption service spreads one
    host's SIGTERM so both stop, save together and exit 0 at the same step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = "--xla_force_host_platform_device_count=2"
    procs = [
        _start_toy(
            tmp_path,
            100000,
            0,
            0.02,
            XLA_FLAGS=flags,
            TOY_COORDINATOR=f"127.0.0.1:{port}",
            TOY_PROCESS_ID=str(i),
        )
        for i in range(2)
    ]
    _wait_for_line(procs[1], "step 3")
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    stopped = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        stopped.append(int(out.split("after step ")[1].split(";")[0]))
    assert stopped[0] == stopped[1]
    state, extra = _restore_toy(tmp_path)  # saved by 2 processes, restored by this one
    assert int(state["step"]) == stopped[0] == extra["data_position"]
    _assert_states_equal(state, toy_reference(stopped[0])[0])


# ---- Sharded round trip across device counts ----------------------------------------------------


def _sharded_state(mesh):
    """A train state with fsdp-sharded parameters, a real AdamW state and a typed PRNG key."""
    fsdp, rep = NamedSharding(mesh, P("fsdp", None)), NamedSharding(mesh, P())
    params = {
        "embed": jnp.arange(64 * 24, dtype=jnp.float32).reshape(64, 24) / 7.0,
        "layer": {"w": jnp.linspace(-1, 1, 32 * 16).reshape(32, 16), "norm": jnp.ones((16,))},
    }
    shardings = {"embed": fsdp, "layer": {"w": fsdp, "norm": rep}}
    params = jax.device_put(params, shardings)
    opt = optax.adamw(1e-2)
    grads = jax.tree.map(jnp.sin, params)
    _, opt_state = opt.update(grads, opt.init(params), params)
    rng = jax.random.key(3)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(7), "rng": rng}


def _target_shardings(state, mesh_or_device):
    if isinstance(mesh_or_device, Mesh):
        mesh = mesh_or_device
        return jax.tree.map(
            lambda x: NamedSharding(mesh, P("fsdp", None) if x.ndim == 2 else P()), state
        )
    return jax.tree.map(lambda x: SingleDeviceSharding(mesh_or_device), state)


@pytest.fixture(scope="module")
def saved_on_8(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sharded")
    mesh8 = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
    state = _sharded_state(mesh8)
    assert len(state["params"]["embed"].sharding.device_set) == 8
    ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep=2)
    assert ckpt.save(7, state, {"data_position": 7, "model": {"preset": "tiny", "width": 24}})
    ckpt.close()
    return workdir, state


@pytest.mark.parametrize("target", ["mesh4", "single"])
def test_restore_onto_fewer_devices(saved_on_8, target):
    workdir, state = saved_on_8
    if target == "mesh4":
        dest = Mesh(np.array(jax.devices()[:4]), ("fsdp",))
        n_devices = 4
    else:
        dest, n_devices = jax.devices()[0], 1
    abstract = ckpt_lib.abstract_like(state, _target_shardings(state, dest))
    ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep=2)
    restored, extra = ckpt.restore(abstract)
    ckpt.close()
    assert extra == {"data_position": 7, "model": {"preset": "tiny", "width": 24}}
    _assert_states_equal(restored, state)
    assert len(restored["params"]["embed"].sharding.device_set) == n_devices
    assert restored["params"]["embed"].sharding == abstract["params"]["embed"].sharding
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state["opt_state"])


def test_restore_checkpoint_from_resume_path(saved_on_8):
    workdir, state = saved_on_8
    abstract = ckpt_lib.abstract_like(state)
    for path in (workdir / "checkpoints", workdir / "checkpoints" / "7"):
        restored, extra = ckpt_lib.restore_checkpoint(path, abstract)
        _assert_states_equal(restored, state)
        assert extra["data_position"] == 7


def test_checkpoint_with_the_retired_rng_entry_restores_into_todays_state(saved_on_8):
    """Train states used to hold an unused "rng" key; their checkpoints still restore (the entry
    is read and dropped) into today's state without it."""
    workdir, state = saved_on_8  # saved with "rng"
    today = {k: v for k, v in state.items() if k != "rng"}
    restored, extra = ckpt_lib.restore_checkpoint(
        workdir / "checkpoints", ckpt_lib.abstract_like(today)
    )
    assert set(restored) == {"params", "opt_state", "step"} and extra["data_position"] == 7
    _assert_states_equal(restored, today)


def test_keeps_last_k_and_skips_undue_steps(tmp_path):
    ckpt = ckpt_lib.Checkpointer(tmp_path, every=2, keep=2, async_save=True)
    state = toy_init()
    saved = [s for s in range(1, 8) if ckpt.save(s, state, {"data_position": s})]
    assert not ckpt.save(6, state, force=True)  # already on disk
    assert ckpt.save(7, state, force=True)
    ckpt.wait()
    assert saved == [2, 4, 6]
    assert ckpt.all_steps() == [6, 7] and ckpt.latest_step() == 7
    ckpt.close()


def test_save_time_of_a_10mb_state(tmp_path):
    mesh8 = Mesh(np.array(jax.devices()[:8]), ("fsdp",))
    sharding = NamedSharding(mesh8, P("fsdp", None))
    params = {f"w{i}": jnp.full((1024, 640), float(i), jnp.float32) for i in range(4)}
    state = {"params": jax.device_put(params, sharding), "step": jnp.int32(1)}
    nbytes = ckpt_lib.state_nbytes(state)
    assert 10e6 <= nbytes <= 11e6
    ckpt = ckpt_lib.Checkpointer(tmp_path, every=1, keep=3, async_save=True)
    ckpt.save(1, state)  # first save pays one-off setup; time the next ones
    ckpt.wait()
    times = []
    for step in (2, 3):
        t0 = time.perf_counter()
        ckpt.save(step, state)
        blocking = time.perf_counter() - t0
        ckpt.wait()
        times.append((blocking, time.perf_counter() - t0))
    restored, _ = ckpt.restore(ckpt_lib.abstract_like(state))
    ckpt.close()
    _assert_states_equal(restored, state)
    blocking, total = min(times)
    mb, ms = nbytes / 1e6, 1e3
    print(f"save of {mb:.1f} MB: {blocking * ms:.0f} ms blocking, {total * ms:.0f} ms total")
    assert total < 30.0


# ---- Clear errors -------------------------------------------------------------------------------


def test_shape_mismatch_names_the_key_and_both_shapes(saved_on_8):
    workdir, state = saved_on_8
    abstract = ckpt_lib.abstract_like(state)
    abstract["params"]["layer"]["w"] = jax.ShapeDtypeStruct((32, 20), jnp.float32)
    ckpt = ckpt_lib.Checkpointer(workdir, every=1, keep=2)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"'params/layer/w'.*\(32, 16\).*\(32, 20\)"):
        ckpt.restore(abstract)
    abstract = ckpt_lib.abstract_like(state)
    abstract["params"]["extra_head"] = jax.ShapeDtypeStruct((4,), jnp.float32)
    with pytest.raises(ckpt_lib.CheckpointError, match="no entry 'params/extra_head'"):
        ckpt.restore(abstract)
    ckpt.close()


def test_missing_and_unreadable_checkpoints(tmp_path):
    abstract = ckpt_lib.abstract_like(toy_init())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt_lib.restore_checkpoint(tmp_path / "nope", abstract)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        ckpt_lib.restore_checkpoint(tmp_path / "empty", abstract)
    ckpt = ckpt_lib.Checkpointer(tmp_path / "run", every=1, keep=2)
    ckpt.save(1, toy_init())
    ckpt.close()
    with pytest.raises(FileNotFoundError, match="step 5 not in"):
        ckpt_lib.restore_checkpoint(tmp_path / "run" / "checkpoints", abstract, step=5)
    for f in (tmp_path / "run" / "checkpoints" / "1" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(ckpt_lib.CheckpointError, match="unreadable"):
        ckpt_lib.restore_checkpoint(tmp_path / "run" / "checkpoints", abstract)


def test_unwritable_or_full_workdir_fails_at_start(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="a_file/run"):
        ckpt_lib.check_workdir(blocker / "run")
    with pytest.raises(OSError, match=r"has only .* MiB free"):
        ckpt_lib.check_workdir(tmp_path / "ok", min_free_bytes=2**62)

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match=r"'.*full'.*No space left on device"):
        ckpt_lib.check_workdir(tmp_path / "full")
    monkeypatch.undo()
    assert ckpt_lib.check_workdir(tmp_path / "fine").is_dir()
    assert not any(p.name.startswith(".write_probe") for p in (tmp_path / "fine").iterdir())


# ---- Resume precedence --------------------------------------------------------------------------


def _config(resume="", model_init=""):
    return ml_collections.ConfigDict({"resume": resume, "model_init": model_init})


def test_resume_precedence(tmp_path):
    hf = tmp_path / "hf_model"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    other = tmp_path / "other_run"
    ckpt = ckpt_lib.Checkpointer(other, every=1, keep=1)
    ckpt.save(3, toy_init())
    ckpt.close()
    other_ckpts = str(other / "checkpoints")
    work = tmp_path / "work"

    assert ckpt_lib.resolve_init_source(work, _config()) == ("random", "")
    assert ckpt_lib.resolve_init_source(work, _config(model_init=str(hf))) == ("hf", str(hf))
    both = _config(resume=other_ckpts, model_init=str(hf))
    assert ckpt_lib.resolve_init_source(work, both) == ("resume", other_ckpts)
    step_dir = str(other / "checkpoints" / "3")
    assert ckpt_lib.resolve_init_source(work, _config(resume=step_dir)) == ("resume", step_dir)
    # An unfinished (temporary) save in the workdir does not count.
    (work / "checkpoints" / "5.orbax-checkpoint-tmp-123").mkdir(parents=True)
    assert ckpt_lib.resolve_init_source(work, both)[0] == "resume"
    ckpt = ckpt_lib.Checkpointer(work, every=1, keep=1)
    ckpt.save(1, toy_init())
    ckpt.close()
    assert ckpt_lib.resolve_init_source(work, both) == ("workdir", str(work / "checkpoints"))

    with pytest.raises(FileNotFoundError, match="config.resume='/nope'"):
        ckpt_lib.resolve_init_source(tmp_path / "w2", _config(resume="/nope"))
    with pytest.raises(ckpt_lib.CheckpointError, match="no finished Orbax checkpoint"):
        ckpt_lib.resolve_init_source(tmp_path / "w2", _config(resume=str(hf)))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ckpt_lib.resolve_init_source(tmp_path / "w2", _config(model_init=str(tmp_path)))


def test_guard_flag_without_signal_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop(1)
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before


if __name__ == "__main__":
    sys.exit(toy_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
