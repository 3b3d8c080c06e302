"""Small shared pieces: parameters with logical axis names, norms, attention, the layer scan."""

import jax
import jax.numpy as jnp
import numpy as np
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


def _attention_probs(logits, keep, head_dim: int, dtype):
    """The maths of jax.nn.dot_product_attention's "xla" path after the score dot: float32 logits
    scaled by 1/sqrt(D), masked with a large negative number, float32 softmax, cast to dtype."""
    logits = logits * jnp.float32(1.0 / np.sqrt(head_dim))
    logits = jnp.where(keep, logits, jnp.float32(-0.7 * np.finfo(np.float32).max))
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def cached_attention(q, k, v, mask, num_kv_heads: int):
    """Softmax attention over a KV cache read in its stored layout (no transposed copy of it).

    q [B, T, H, D]; k/v [B, S*K, D]: a cache layer [B, S, K, D] seen as (column, kv head) pairs (a
    free reshape); mask bool [B, 1, T, S]. Every query head scores all S*K pairs and the pairs of
    the other kv heads are masked out. That costs K times the (small) score flops but reads the
    cache once; the grouped form (kv heads next to batch) made XLA transpose-copy every cache layer
    each decode step. Same maths as jax.nn.dot_product_attention's "xla" path (_attention_probs).
    """
    h, d, kh = q.shape[2], q.shape[3], num_kv_heads
    logits = jnp.einsum("bthd,bcd->bhtc", q, k, preferred_element_type=jnp.float32)
    pairs = k.shape[1]
    own = (jnp.arange(pairs) % kh)[None, :] == (jnp.arange(h) // (h // kh))[:, None]  # [H, S*K]
    keep = jnp.repeat(mask, kh, axis=-1) & own[None, :, None, :]  # [B, H, T, S*K]
    probs = _attention_probs(logits, keep, d, v.dtype)
    return jnp.einsum("bhtc,bcd->bthd", probs, v)


def grouped_attention(q, k, v, mask):
    """Softmax attention over a cache layer stored kv-head major (decode's per-layer buffers).

    q [B, T, H, D]; k/v [B, K, S, D]; mask bool [B, 1, T, S]. Query head h reads kv head h // G
    (G = H/K), as in jax.nn.dot_product_attention. With (batch, kv head) the leading axes of k/v,
    both dots read the cache as it lies (no transposed copy, no extra score flops). Same maths as
    that function's "xla" path (_attention_probs).
    """
    b, t, h, d = q.shape
    kh = k.shape[1]
    qg = q.reshape(b, t, kh, h // kh, d)
    logits = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32)
    probs = _attention_probs(logits, mask[:, :, None], d, v.dtype)
    # probs as the left operand: the result is [B, K, G, T, D], heads before features, so the
    # output projection reads it as [B, T, H*D] (jnp.einsum swapped the operands and CPU XLA then
    # transposed the [H, D, E] output kernel every step instead of this small activation).
    dims = (((4,), (2,)), ((0, 1), (0, 1)))
    out = jax.lax.dot_general(probs, v, dims)  # [B, K, G, T, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def remat_policy(name):
    if name == "dots":
        return jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return None


def _has_adapters(xs) -> bool:
    from vrft_jax.lora import Adapted

    leaves = jax.tree.leaves(xs, is_leaf=lambda x: isinstance(x, Adapted))
    return any(isinstance(x, Adapted) and x.a is not None for x in leaves)


def scan_layers(body, carry, xs, *, scan: bool, remat: str):
    """Runs body(carry, xs_l) -> (carry, ys_l) over the leading `layers` axis of xs.

    scan=True compiles one layer (lax.scan); scan=False unrolls a Python loop over the same stacked
    parameters. remat "full"/"dots" wraps the body in jax.checkpoint.
    """
    if remat != "none":
        body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=not scan)
    elif _has_adapters(xs):
        # LoRA: save what remat "none" saves except each layer's effective weight (recomputed
        # from W, A, B in the backward), else all L merged weights would be kept.
        from vrft_jax.lora import EFFECTIVE_WEIGHT

        policy = jax.checkpoint_policies.save_anything_except_these_names(EFFECTIVE_WEIGHT)
        body = jax.checkpoint(body, policy=policy, prevent_cse=not scan)
    if scan:
        return jax.lax.scan(body, carry, xs)
    num = jax.tree.leaves(xs)[0].shape[0]
    ys = []
    for i in range(num):
        carry, y = body(carry, jax.tree.map(lambda a, i=i: a[i], xs))
        ys.append(y)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ys) if ys and ys[0] is not None else None
    return carry, stacked
