"""The forward under 8-device meshes (fsdp x tensor, data x fsdp x tensor) equals one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_hf
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vrft_jax.models import random_qwen2_vl
from vrft_jax.models.partitioning import logical_to_mesh_sharding


@nnx.jit
def _forward(model, ids, mask, pv, grid):
    return model.forward(ids, mask, pv, grid)


@pytest.fixture(scope="module")
def setup():
    model = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=2), seed=2)
    rng = np.random.default_rng(0)
    grids = [(1, 4, 6), (1, 6, 4), (1, 4, 4), (1, 8, 4)]
    rows = [tiny_hf.image_prompt(rng, 2 + i, grids[i : i + 1], 3) for i in range(4)]
    ids, mask = tiny_hf.left_pad(rows)
    pv, grid = tiny_hf.random_pixels(rng, grids)
    pv = np.concatenate([pv, np.zeros((256 - len(pv), 1176), np.float32)])
    ref = np.asarray(_forward(model, ids, mask, pv, grid.astype(np.int32)))
    return model, (ids, mask, pv, grid.astype(np.int32)), ref


def test_logical_partition_specs():
    model = random_qwen2_vl("tiny", seed=0)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    flat = {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(specs)}
    assert flat["language_model/layers/q_kernel"] == PartitionSpec(
        "layers", "embed", "heads", "head_dim"
    )
    assert flat["visual/patch_embed"] == PartitionSpec("patch", "vision_embed")
    assert all(isinstance(s, PartitionSpec) for s in flat.values())


@pytest.mark.parametrize(
    "axes", [{"fsdp": 4, "tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}], ids=["f4t2", "d2f2t2"]
)
def test_sharded_forward_matches_single_device(setup, axes):
    model, (ids, mask, pv, grid), ref = setup
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(tuple(axes.values())), tuple(axes))
    graphdef, state = nnx.split(model)
    shardings = logical_to_mesh_sharding(state, mesh)
    sharded = nnx.merge(graphdef, jax.device_put(state, shardings))
    q = sharded.language_model.layers.q_kernel[...]
    assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert not q.sharding.is_fully_replicated
    batch_axes = tuple(a for a in ("data", "fsdp") if a in axes)
    row = NamedSharding(mesh, PartitionSpec(batch_axes))
    rep = NamedSharding(mesh, PartitionSpec())
    out = _forward(
        sharded,
        jax.device_put(ids, row),
        jax.device_put(mask, row),
        jax.device_put(pv, rep),
        jax.device_put(grid, rep),
    )
    err = np.abs(np.asarray(out) - ref)[mask > 0].max() / np.abs(ref[mask > 0]).max()
    print(f"mesh {axes} rel err {err:.2e}")
    assert err <= 1e-5
    assert jnp.asarray(out).shape == ref.shape
