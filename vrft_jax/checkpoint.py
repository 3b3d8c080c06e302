"""Checkpoints: Orbax saves of the train state, automatic resume, and where a run starts from.

Layout: `WORKDIR/checkpoints/<step>/{state,extra}`. `state` is the train state, a plain pytree
`{"params", "opt_state", "step"}` of (possibly sharded) jax arrays, saved with Orbax's
standard handler. `extra` is a JSON dict: the data position (iterator state) and metadata such as
the model config. The frozen GRPO reference model is not saved; it is rebuilt from the initial
weights.

Resume precedence (`resolve_init_source`), first match wins:
  1. "workdir": WORKDIR/checkpoints holds a finished step -> restore the latest one. A preempted or
     killed run restarted with the same command therefore continues where it stopped.
  2. "resume": `config.resume` names an Orbax checkpoint (a `checkpoints` folder or one step of it)
     -> restore it (a fine-tune that starts from another run's state).
  3. "hf": `config.model_init` names a Hugging Face Qwen2-VL folder -> the trainer loads the weights
     and builds a fresh optimizer state.
  4. "random": random init from `config.model.preset`.

Restoring takes the abstract target state: `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`
leaves carrying the *current* mesh's shardings, so a checkpoint saved on 8 devices restores onto 4
or 1 (Orbax reads each device's slice from the saved chunks). Leaves without a sharding are
restored replicated on every device.

Use in a training loop (`PreemptionGuard` is in `vrft_jax.preemption`):

    check_workdir(workdir)  # unwritable or full disk: fail now, naming the path
    ckpt = Checkpointer(workdir, every=config.ckpt.every, keep=config.ckpt.keep,
                        async_save=config.ckpt.async_save)
    source, path = resolve_init_source(workdir, config)
    if source == "workdir":
        state, extra = ckpt.restore(abstract_state)
    elif source == "resume":
        state, extra = restore_checkpoint(path, abstract_state)
    # "hf": load the weights from `path`; "random": init from config.model.preset.
    with PreemptionGuard() as guard:
        for step in range(int(state["step"]), total):
            state = train_step(state, batch)
            extra = {"data": iterator_state, "model": model_config_dict}
            ckpt.save(step + 1, state, extra)  # writes only every `every` steps
            if guard.should_stop(step + 1):  # SIGTERM: save now, exit 0
                ckpt.save(step + 1, state, extra, force=True)
                ckpt.close()
                print(guard.stop_message(step + 1, str(ckpt.directory)))
                return
    ckpt.save(total, state, extra, force=True)
    ckpt.close()
"""

from __future__ import annotations

import os
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CHECKPOINT_SUBDIR = "checkpoints"
DEFAULT_MIN_FREE_BYTES = 64 * 2**20  # refuse to start a run with less free disk than this


# Train-state entries that older checkpoints hold and the train state no longer has: read (as this
# abstract value) and dropped, so those checkpoints still restore.
RETIRED_ENTRIES = {"rng": lambda: jax.eval_shape(lambda: jax.random.key(0))}  # unused PRNG key


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read or does not fit the model."""


# ---- Workdir checks -----------------------------------------------------------------------------


def check_workdir(workdir, *, min_free_bytes: int = DEFAULT_MIN_FREE_BYTES) -> epath.Path:
    """Creates `workdir` if needed and proves it is writable by writing and deleting a probe file.

    Fails at start rather than hours later at the first save. Raises OSError naming the path for an
    unwritable folder, a full disk, or (local disks) less than `min_free_bytes` free. Remote
    workdirs (gs://...) get the probe write only.
    """
    path = _abs(workdir)
    probe = path / f".write_probe_{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if _is_remote(path):
            probe.write_bytes(b"probe")
        else:
            _write_and_sync(str(probe), b"\0" * 4096)
    except OSError as e:
        raise OSError(
            e.errno,
            f"workdir {str(path)!r} is not writable ({e.strerror or e}; probe file "
            f"{probe.name}). Free some space or choose another --workdir.",
        ) from e
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    if not _is_remote(path):
        st = os.statvfs(str(path))
        free = st.f_bavail * st.f_frsize
        if free < min_free_bytes:
            raise OSError(
                28,  # ENOSPC
                f"workdir {str(path)!r} has only {free / 2**20:.1f} MiB free "
                f"(need at least {min_free_bytes / 2**20:.1f} MiB for checkpoints).",
            )
    return path


def _write_and_sync(filename: str, data: bytes) -> None:
    """Writes through to the disk (fsync) so a full disk shows up now, not at close."""
    fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_remote(path) -> bool:
    return "://" in str(path)


def _abs(path) -> epath.Path:
    """Absolute local path (Orbax wants one); remote URLs unchanged."""
    return epath.Path(path) if _is_remote(path) else epath.Path(os.path.abspath(path))


# ---- Where a run starts from --------------------------------------------------------------------


def resolve_init_source(workdir, config) -> tuple[str, str]:
    """Returns (source, path): ("workdir"|"resume"|"hf"|"random", folder or "").

    Reads `config.resume` and `config.model_init`; see the module docstring for the order. A named
    but missing `resume` or `model_init` folder is an error, never a silent fall-through to random.
    """
    ckpt_dir = epath.Path(workdir) / CHECKPOINT_SUBDIR
    if _finished_steps(ckpt_dir):
        return "workdir", str(ckpt_dir)
    if config.resume:
        resume = epath.Path(config.resume)
        if not resume.exists():
            raise FileNotFoundError(f"config.resume={config.resume!r} does not exist.")
        if not _finished_steps(resume) and not _is_step_dir(resume):
            raise CheckpointError(
                f"config.resume={config.resume!r} holds no finished Orbax checkpoint "
                "(expected numbered step folders, or one step folder with a 'state' item)."
            )
        return "resume", str(resume)
    if config.model_init:
        hf = epath.Path(config.model_init)
        if not (hf / "config.json").is_file():
            raise FileNotFoundError(
                f"config.model_init={config.model_init!r} is not a Hugging Face model folder "
                "(no config.json)."
            )
        return "hf", str(hf)
    return "random", ""


def latest_step(workdir) -> int | None:
    """The latest finished checkpoint step in WORKDIR/checkpoints (None if none), read from the
    folder names alone (no Orbax manager, nothing written)."""
    steps = _finished_steps(epath.Path(workdir) / CHECKPOINT_SUBDIR)
    return steps[-1] if steps else None


def _finished_steps(directory: epath.Path) -> list[int]:
    """Step numbers of finished checkpoints in `directory` (Orbax's temporary folders skipped)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and _is_step_dir(p))


def _is_step_dir(path: epath.Path) -> bool:
    """A finished step: locally Orbax renames a temporary folder when done; on GCS it writes a
    commit_success.txt marker last instead."""
    done = (path / "state").is_dir()
    return done and (not _is_remote(path) or (path / "commit_success.txt").exists())


# ---- Tree checks --------------------------------------------------------------------------------


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _flat(tree, is_leaf=None) -> dict:
    """{"params/layer/w": leaf}; namedtuples (optax states) and dicts give the same key names."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _stored_shape(leaf) -> tuple[int, ...]:
    """Shape as Orbax stores it: a typed PRNG key is stored as its raw uint32 key data."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
    return tuple(leaf.shape)


def check_tree_matches(abstract_state, stored_tree, source: str) -> None:
    """Raises CheckpointError naming the first key whose presence or shape differs.

    `stored_tree` is Orbax's metadata tree (leaves with `.shape`); `abstract_state` is the model's.
    """
    want = {k: _stored_shape(x) for k, x in _flat(abstract_state).items()}
    stored = _flat(stored_tree, is_leaf=lambda x: hasattr(x, "shape"))
    have = {k: tuple(x.shape) for k, x in stored.items()}
    # Parameters first: a wrong model size shows up there under the most telling name.
    for key in sorted(set(want) | set(have), key=lambda k: (not k.startswith("params/"), k)):
        if key not in have:
            raise CheckpointError(
                f"checkpoint {source} has no entry {key!r} that the model needs (shape "
                f"{want[key]}): it was saved from another model or trainer."
            )
        if key not in want:
            raise CheckpointError(
                f"checkpoint {source} has entry {key!r} (shape {have[key]}) that the model "
                "does not have: it was saved from another model or trainer."
            )
        if want[key] != have[key]:
            raise CheckpointError(
                f"checkpoint {source} does not fit the model: {key!r} has shape {have[key]} in "
                f"the checkpoint but {want[key]} in the model (another model size or preset?)."
            )


# ---- The checkpointer ---------------------------------------------------------------------------


def _manager(directory: epath.Path, *, keep: int | None, async_save: bool, read_only: bool):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class Checkpointer:
    """Saves every `every` steps into WORKDIR/checkpoints, keeps the last `keep`, restores any mesh.

    `every=0` saves only when forced (end of run, preemption). With `async_save` the arrays are
    copied to host memory before `save` returns and written in a background thread; `wait()` blocks
    until the last save is on disk.
    """

    def __init__(self, workdir, *, every: int, keep: int, async_save: bool = True):
        if every < 0 or keep < 1:
            raise ValueError(f"need every >= 0 and keep >= 1, got every={every}, keep={keep}")
        self.directory = _abs(workdir) / CHECKPOINT_SUBDIR
        self.every = every
        self._mgr = _manager(self.directory, keep=keep, async_save=async_save, read_only=False)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state, extra: dict | None = None, *, force: bool = False) -> bool:
        """Saves `state` and the JSON `extra` as `step` when due or forced; returns whether it did.

        A step already on disk is not written again (a forced save right after a periodic one).
        """
        if not (force or self.should_save(step)):
            return False
        if step in self._mgr.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))
        )
        return self._mgr.save(step, args=args, force=True)

    def restore(self, abstract_state, step: int | None = None):
        """Returns (state, extra) of `step` (default: latest), placed as `abstract_state` says."""
        return _restore(self._mgr, self.directory, abstract_state, step)

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()


def restore_checkpoint(path, abstract_state, step: int | None = None):
    """Restores (state, extra) from another run's checkpoint (`config.resume`), read-only.

    `path` is a `checkpoints` folder (its latest step, or `step`) or one numbered step folder.
    """
    path = _abs(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist.")
    if _is_step_dir(path) and path.name.isdigit() and not _finished_steps(path):
        path, step = path.parent, int(path.name)
    mgr = _manager(path, keep=None, async_save=False, read_only=True)
    try:
        return _restore(mgr, path, abstract_state, step)
    finally:
        mgr.close()


def _restore(mgr, directory: epath.Path, abstract_state, step: int | None):
    steps = mgr.all_steps()
    if step is None:
        step = mgr.latest_step()
        if step is None:
            raise FileNotFoundError(f"no finished checkpoint in {str(directory)!r}.")
    elif step not in steps:
        raise FileNotFoundError(
            f"checkpoint step {step} not in {str(directory)!r} (have {sorted(steps)})."
        )
    source = repr(str(directory / str(step)))
    try:
        metadata = mgr.item_metadata(step)["state"]
    except Exception as e:  # Orbax raises many types for truncated or corrupt files
        raise CheckpointError(f"checkpoint {source} is unreadable: {e}") from e
    if metadata is None:
        raise CheckpointError(f"checkpoint {source} has no readable 'state' item.")
    stored = getattr(metadata, "tree", metadata)
    retired = []
    if isinstance(abstract_state, dict) and hasattr(stored, "keys"):
        retired = [k for k in RETIRED_ENTRIES if k in stored and k not in abstract_state]
        abstract_state = dict(abstract_state, **{k: RETIRED_ENTRIES[k]() for k in retired})
    check_tree_matches(abstract_state, stored, source)
    abstract_state = _with_default_sharding(abstract_state)
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()
    )
    try:
        restored = mgr.restore(step, args=args)
    except Exception as e:
        raise CheckpointError(f"checkpoint {source} is unreadable: {e}") from e
    state = restored["state"]
    if retired:
        state = {k: v for k, v in state.items() if k not in retired}
    return state, dict(restored["extra"] or {})


def _with_default_sharding(abstract_state):
    """Leaves given without a sharding are restored replicated on every device.

    (Orbax would otherwise try the saved device ids, which fails on another topology.)
    """
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("all",)), PartitionSpec())

    def fill(x):
        if getattr(x, "sharding", None) is not None:
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)

    return jax.tree.map(fill, abstract_state)


def abstract_like(state, shardings=None):
    """ShapeDtypeStructs of `state` with its own shardings, or a matching pytree of `shardings`."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            state,
        )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def state_nbytes(state) -> int:
    """Bytes of all arrays in `state` (typed PRNG keys counted by their key data)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(state):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total
