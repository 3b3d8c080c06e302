"""Logical axis names -> mesh shardings for the model's parameters.

Each parameter carries logical names (docs/ARCHITECTURE.md). Rules map a logical name to a mesh axis
(or a tuple of axes, or None). A dimension stays replicated when its rule names no axis present in
the mesh, when the axis is already used by another dimension, or when the size does not divide
evenly.
"""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vrft_jax.sharding import DEFAULT_RULES  # one rule table for the model and the trainer


def logical_to_mesh_spec(names, shape, mesh, rules=DEFAULT_RULES) -> PartitionSpec:
    """PartitionSpec for one array with logical `names` (None entries = replicated)."""
    table = dict(rules)
    used, spec = set(), []
    for name, size in zip(names or (None,) * len(shape), shape):
        target = table.get(name)
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used)
        n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size % n:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def logical_to_mesh_sharding(state, mesh, rules=DEFAULT_RULES):
    """An nnx.State of NamedShardings matching `state` (a model's nnx.state, abstract or
    concrete)."""
    flat = []
    for path, var in nnx.to_flat_state(state):
        names = var.get_metadata().get("out_sharding")
        spec = logical_to_mesh_spec(names, var.shape, mesh, rules)
        flat.append((path, var.replace(value=NamedSharding(mesh, spec))))
    return nnx.from_flat_state(flat)


def path_sharding_fn(mesh, rules=DEFAULT_RULES):
    """fn(names, shape) -> NamedSharding, the form hf.load_qwen2_vl accepts as `sharding`."""
    return lambda names, shape: NamedSharding(mesh, logical_to_mesh_spec(names, shape, mesh, rules))


def shard_model(model, mesh, rules=DEFAULT_RULES):
    """Moves a model's parameters onto `mesh` in place, following the logical rules."""
    state = nnx.state(model)
    shardings = logical_to_mesh_sharding(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
