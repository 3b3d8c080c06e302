"""Device mesh, logical-axis rules for parameters, and global batch arrays.

`config.mesh` names the mesh axes and their sizes, e.g. (("data", 1), ("fsdp", -1), ("tensor", 1));
-1 takes the remaining devices. Parameters carry logical axis names (flax NNX sharding metadata,
see docs/ARCHITECTURE.md) that the rules below map to mesh axes. A dimension is sharded only when
its size divides the product of its mesh axes, otherwise it is replicated (e.g. kv_heads = 2 on a
tensor axis of 4). The batch (leading axis) splits over ("data", "fsdp").
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# (logical axis, mesh axis or tuple of mesh axes or None). Anything not listed is replicated.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("mlp", "tensor"),
    ("vision_mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vision_heads", "tensor"),
    ("vocab", "tensor"),
)
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices):
    """(("data", 1), ("fsdp", -1), ...) -> {"data": 1, "fsdp": num_devices, ...}, checked."""
    names = [name for name, _ in mesh_config]
    sizes = [int(size) for _, size in mesh_config]
    if len(set(names)) != len(names):
        raise ValueError(f"config.mesh={mesh_config}: repeated axis name")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh={mesh_config}: sizes must be positive, with at most one -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if num_devices % fixed:
        raise ValueError(
            f"config.mesh={mesh_config}: axis sizes (product {fixed}) do not divide the "
            f"{num_devices} devices"
        )
    sizes = [num_devices // fixed if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh={mesh_config}: axis sizes multiply to {math.prod(sizes)}, but there are "
            f"{num_devices} devices (use -1 for one axis to take the rest)"
        )
    return dict(zip(names, sizes))


def make_mesh(mesh_config, devices=None):
    """config.mesh -> jax.sharding.Mesh over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    try:  # topology-aware device order on TPU/GPU
        grid = mesh_utils.create_device_mesh(tuple(shape.values()), devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
        grid = np.array(devices).reshape(tuple(shape.values()))
    return Mesh(grid, tuple(shape.keys()))


def make_rules(overrides=()):
    """DEFAULT_RULES updated with (logical, mesh axis | None) overrides -> dict."""
    rules = dict(DEFAULT_RULES)
    rules.update(dict(overrides))
    return rules


def logical_to_mesh_spec(logical_spec, shape, mesh, rules=DEFAULT_RULES):
    """Logical PartitionSpec, e.g. P("embed", "mlp"), of an array of `shape` -> mesh PartitionSpec.

    Mesh axes missing from the mesh or of size 1 are ignored; each mesh axis is used at most once.
    """
    rules = dict(rules)
    logical = tuple(logical_spec) + (None,) * (len(shape) - len(logical_spec))
    if len(logical) != len(shape):
        raise ValueError(f"sharding: logical spec {logical_spec} has more axes than shape {shape}")
    used, out = set(), []
    for dim, name in zip(shape, logical):
        names = () if name is None else (name,) if isinstance(name, str) else tuple(name)
        axes = []
        for n in names:
            target = rules.get(n)
            axes += [target] if isinstance(target, str) else list(target or ())
        axes = [a for a in axes if mesh.shape.get(a, 1) > 1 and a not in used]
        ways = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % ways:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*out)


def _is_spec(x):
    return isinstance(x, PartitionSpec)


def logical_to_named_sharding(logical_spec_tree, shapes, mesh, rules=DEFAULT_RULES):
    """Logical PartitionSpec tree + same tree of arrays / ShapeDtypeStructs -> NamedShardings."""
    return jax.tree.map(
        lambda spec, x: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh, rules)),
        logical_spec_tree,
        shapes,
        is_leaf=_is_spec,
    )


def param_shardings(state, mesh, rules=DEFAULT_RULES):
    """nnx.State (concrete or from nnx.eval_shape) -> same tree of NamedShardings.

    Logical names come from each Variable's sharding metadata (nnx.with_partitioning /
    sharding_names); Variables without any are replicated. Do not also set flax's own logical-axis
    rules context, or nnx.get_partition_spec would apply those first.
    """
    return logical_to_named_sharding(nnx.get_partition_spec(state), state, mesh, rules)


def batch_sharding(mesh):
    """Leading axis split over the ("data", "fsdp") axes the mesh has; other axes replicated."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_ways(mesh) -> int:
    """How many parts `batch_sharding` splits a batch into (data x fsdp)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(tree, mesh):
    """Host numpy batch (this process's rows) -> global jax.Arrays split along the leading axis.

    Every process passes its own slice of rows (the same count on each); single-process runs pass
    the whole batch. The global leading size must divide by data x fsdp.
    """
    sharding, ways = batch_sharding(mesh), batch_ways(mesh)

    def put(path, x):
        x = np.asarray(x)
        rows = x.shape[0] * jax.process_count() if x.ndim else 0
        if x.ndim == 0 or rows % ways:
            raise ValueError(
                f"shard_batch: {jax.tree_util.keystr(path)} has shape {x.shape}; its global "
                f"leading size {rows} must be a positive multiple of data x fsdp = {ways}"
            )
        return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))

    return jax.tree_util.tree_map_with_path(put, tree)


def to_host(tree):
    """A pytree of jax.Arrays (or numpy) -> the same tree of whole numpy arrays, on every process.

    np.asarray cannot read an array split over devices of several processes (the sampler's rows
    on a multi-host mesh): such an array is first gathered (a jitted all-gather to replicated). A
    collective: every process must call this on the same arrays, in the same order. Use it where
    the host needs every row (decoding, rewards, logging); keep device inputs on device.
    """

    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)  # local, or a full copy on this process's devices

    return jax.tree.map(one, tree)


def to_batch_sharding(x, mesh):
    """A device array of N rows -> the same rows split over the mesh's batch axes, on device
    (no host round trip; a no-op when already placed so)."""
    target = batch_sharding(mesh)
    if getattr(x, "sharding", None) == target:
        return x
    return jax.jit(_identity, out_shardings=target)(x)


def _identity(x):  # one function object, so the jitted reshard is traced once per shape
    return x
