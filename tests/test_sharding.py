"""Mesh building, logical-axis rules on an NNX module, and global batches on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from vrft_jax import sharding

MESHES = {
    "data8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
    "fsdp8": (("data", 1), ("fsdp", -1), ("tensor", 1)),
    "fsdp4_tensor2": (("data", 1), ("fsdp", 4), ("tensor", 2)),
    "data2_fsdp2_tensor2": (("data", 2), ("fsdp", -1), ("tensor", 2)),
}


def _param(rngs, shape, names):
    init = nnx.with_partitioning(nnx.initializers.normal(0.5), names)
    return nnx.Param(init(rngs.params(), shape))


class Toy(nnx.Module):
    """V=16, E=8, M=16, H=4, K=2, D=2, patch 12, vision width 8: one of each logical name."""

    def __init__(self, rngs):
        self.embedding = _param(rngs, (16, 8), ("vocab", "embed"))
        self.patch = _param(rngs, (12, 8), ("patch", "vision_embed"))
        self.q = _param(rngs, (8, 4, 2), ("embed", "heads", "head_dim"))
        self.kv = _param(rngs, (8, 2, 2), ("embed", "kv_heads", "head_dim"))
        self.up = _param(rngs, (8, 16), ("embed", "mlp"))
        self.down = _param(rngs, (16, 8), ("mlp", "embed"))
        self.norm = _param(rngs, (8,), ("norm",))
        self.bias = nnx.Param(jnp.zeros(8))  # no metadata: replicated

    def __call__(self, tokens, patches):
        x = self.embedding[...][tokens] + (patches @ self.patch[...]).mean(1, keepdims=True)
        q = jnp.einsum("bte,ehd->bthd", x, self.q[...])
        k = jnp.einsum("bte,ekd->btkd", x, self.kv[...])
        x = x + jnp.einsum("bthd,btd->bth", q, k.mean(2)).sum(-1, keepdims=True)
        h = jax.nn.gelu(x @ self.up[...]) @ self.down[...]
        x = (x + h) * self.norm[...] + self.bias[...]
        return x @ self.embedding[...].T  # [B,T,V]


def _model():
    with nnx.use_eager_sharding(False):
        return Toy(nnx.Rngs(0))


def _loss(params, graphdef, tokens, patches):
    logits = nnx.merge(graphdef, params)(tokens, patches)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0] ** 2)


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(MESHES["data2_fsdp2_tensor2"])
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(sharding.make_mesh((("data", -1),)).shape) == {"data": 8}
    with pytest.raises(ValueError, match="do not divide the 8 devices"):
        sharding.make_mesh((("data", 3), ("fsdp", -1)))
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.make_mesh((("data", -1), ("fsdp", -1)))
    with pytest.raises(ValueError, match="multiply to 4"):
        sharding.make_mesh((("data", 2), ("fsdp", 2)))


def test_logical_rules_divisibility():
    mesh = sharding.make_mesh((("fsdp", 2), ("tensor", 4)))
    spec = sharding.logical_to_mesh_spec
    assert spec(P("embed", "kv_heads", "head_dim"), (8, 2, 2), mesh) == P("fsdp", None, None)
    assert spec(P("embed", "heads", "head_dim"), (8, 4, 2), mesh) == P("fsdp", "tensor", None)
    assert spec(P("embed", "mlp"), (7, 16), mesh) == P(None, "tensor")
    assert spec(P(), (3, 3), mesh) == P(None, None)
    rules = sharding.make_rules((("embed", ("fsdp", "tensor")), ("mlp", None)))
    assert spec(P("embed", "mlp"), (8, 16), mesh, rules) == P(("fsdp", "tensor"), None)


EXPECTED_SPECS = {  # param -> spec per mesh (order as in MESHES)
    "embedding": [P(None, None), P(None, "fsdp"), P("tensor", "fsdp"), P("tensor", "fsdp")],
    "kv": [
        P(None, None, None),
        P("fsdp", None, None),
        P("fsdp", "tensor", None),
        P("fsdp", "tensor", None),
    ],
    "up": [P(None, None), P("fsdp", None), P("fsdp", "tensor"), P("fsdp", "tensor")],
    "norm": [P(None), P(None), P(None), P(None)],
    "bias": [P(None), P(None), P(None), P(None)],
}


@pytest.fixture(scope="module")
def one_device_step():
    """Params, batch and the loss/gradients computed on one device."""
    graphdef, params = nnx.split(_model(), nnx.Param)
    rng = np.random.default_rng(0)
    batch = {"tokens": rng.integers(0, 16, (8, 3)), "patches": rng.normal(size=(8, 4, 12))}
    batch["patches"] = batch["patches"].astype(np.float32)
    loss, grads = jax.jit(jax.value_and_grad(_loss), static_argnums=1)(params, graphdef, **batch)
    abstract = nnx.eval_shape(lambda: nnx.split(_model(), nnx.Param)[1])
    return graphdef, params, abstract, batch, loss, grads


@pytest.mark.parametrize("index,name", list(enumerate(MESHES)))
def test_param_shardings_and_sharded_step_matches_one_device(index, name, one_device_step):
    graphdef, params, abstract, batch, want_loss, want_grads = one_device_step

    mesh = sharding.make_mesh(MESHES[name])
    shardings = sharding.param_shardings(abstract, mesh)
    for param, specs in EXPECTED_SPECS.items():
        assert shardings[param].get_value().spec == specs[index], (name, param)

    sharded_params = jax.device_put(params, shardings)
    global_batch = sharding.shard_batch(batch, mesh)
    assert global_batch["tokens"].sharding.spec == P(("data", "fsdp"))
    step = jax.jit(jax.value_and_grad(_loss), static_argnums=1, out_shardings=(None, shardings))
    loss, grads = step(sharded_params, graphdef, **global_batch)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert grads["up"][...].sharding.spec == EXPECTED_SPECS["up"][index]


def test_shard_batch_layout_and_errors():
    mesh = sharding.make_mesh(MESHES["data2_fsdp2_tensor2"])
    x = np.arange(24).reshape(8, 3)
    out = sharding.shard_batch({"x": x}, mesh)["x"]
    np.testing.assert_array_equal(out, x)
    assert {s.data.shape for s in out.addressable_shards} == {(2, 3)}
    with pytest.raises(ValueError, match=r"\['x'\] has shape \(6, 3\)"):
        sharding.shard_batch({"x": np.zeros((6, 3))}, mesh)
