"""Small shared pieces: parameters with logical axis names, norms, attention, the layer scan."""

import jax
import jax.numpy as jnp
from flax import nnx


def param(key, shape, axes, dtype, init="normal", scale=0.02):
    """An nnx.Param with logical axis names (nnx.get_partition_spec gives them back)."""
    assert len(axes) == len(shape), (shape, axes)
    if init == "normal":
        value = (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = jnp.zeros(shape, dtype)
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def values(module, names):
    """{name: array} of a module's parameters (what the scanned layer body consumes)."""
    return {n: getattr(module, n)[...] for n in names}


def layer_norm(x, scale, bias, eps):
    """LayerNorm computed in float32, returned in x's dtype (torch does the same for bf16)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def rms_norm(x, scale, eps):
    """Qwen2 RMSNorm: normalise in float32, cast to x's dtype, then multiply by the weight."""
    xf = x.astype(jnp.float32)
    y = (xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + eps)).astype(x.dtype)
    return scale.astype(x.dtype) * y


def attention(q, k, v, mask, implementation):
    """Softmax attention through jax.nn.dot_product_attention (GQA handled there).

    q [B, T, H, D], k/v [B, S, K, D], mask bool broadcastable to [B, H, T, S].
    implementation: "xla", "cudnn" or "auto" (None: let JAX pick).
    """
    impl = None if implementation == "auto" else implementation
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def remat_policy(name):
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return None


def scan_layers(body, carry, xs, *, scan: bool, remat: str):
    """Runs body(carry, xs_l) -> (carry, ys_l) over the leading `layers` axis of xs.

    scan=True compiles one layer (lax.scan); scan=False unrolls a Python loop over the same stacked
    parameters. remat "full"/"dots" wraps the body in jax.checkpoint.
    """
    if remat != "none":
        body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=not scan)
    if scan:
        return jax.lax.scan(body, carry, xs)
    num = jax.tree.leaves(xs)[0].shape[0]
    ys = []
    for i in range(num):
        carry, y = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
        ys.append(y)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ys) if ys and ys[0] is not None else None
    return carry, stacked
