"""Qwen2 / Qwen3 decoder with M-RoPE: RMSNorm, GQA, SwiGLU, scanned layers, KV cache.

Qwen2 (Qwen2-VL) has q/k/v biases; Qwen3 (Qwen3-VL, `config.is_qwen3`) has none, normalises each
head of q and k with its own RMSNorm before the rotary, and receives DeepStack features: the
decoder input may carry them as x [B, T, 1 + Ld, E] (slot 0 the token embeddings, slot 1 + i the
features added to the hidden states after layer i; zeros at non-image tokens).

The cache is a plain pytree {"k": [L, B, Tmax, K, D], "v": [L, B, Tmax, K, D]}. A call writes its T
new keys/values at columns cache_index .. cache_index+T-1 (the same columns for every row, since
prompts are left-padded) and attends causally by column, restricted by kv_mask (False = padding).
The sampler's decode loop uses a per-layer form instead: L buffers [B, K, Tmax, D] per k/v and the
layer weights split once (`Decoder.split_layers`), so a decode step reads every weight and cache
buffer in place (slicing stacked arrays inside the loop copies them every step).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vrft_jax.models import rope
from vrft_jax.models.config import QwenVLConfig
from vrft_jax.models.layers import (
    attention,
    cached_attention,
    grouped_attention,
    param,
    rms_norm,
    scan_layers,
    values,
)

LAYER_PARAMS = (
    "input_norm",
    "q_kernel",
    "q_bias",
    "k_kernel",
    "k_bias",
    "v_kernel",
    "v_bias",
    "o_kernel",
    "post_norm",
    "gate_kernel",
    "up_kernel",
    "down_kernel",
)
QWEN3_LAYER_PARAMS = tuple(n for n in LAYER_PARAMS if not n.endswith("_bias")) + (
    "q_norm",
    "k_norm",
)


def layer_param_names(config: QwenVLConfig):
    return QWEN3_LAYER_PARAMS if config.is_qwen3 else LAYER_PARAMS


class DecoderLayers(nnx.Module):
    """`num_hidden_layers` decoder layers stored with a leading `layers` axis."""

    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
        c, dt = config, config.jnp_param_dtype
        n, e, h, k, d, m = (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.intermediate_size,
        )
        L, E, D = "layers", "embed", "head_dim"
        self.input_norm = param(None, (n, e), (L, "norm"), dt, "ones")
        self.q_kernel = param(rngs.params(), (n, e, h, d), (L, E, "heads", D), dt)
        self.k_kernel = param(rngs.params(), (n, e, k, d), (L, E, "kv_heads", D), dt)
        self.v_kernel = param(rngs.params(), (n, e, k, d), (L, E, "kv_heads", D), dt)
        if c.is_qwen3:  # per-head RMSNorm weights of q and k, no biases
            self.q_norm = param(None, (n, d), (L, "norm"), dt, "ones")
            self.k_norm = param(None, (n, d), (L, "norm"), dt, "ones")
        else:
            self.q_bias = param(None, (n, h, d), (L, "heads", D), dt, "zeros")
            self.k_bias = param(None, (n, k, d), (L, "kv_heads", D), dt, "zeros")
            self.v_bias = param(None, (n, k, d), (L, "kv_heads", D), dt, "zeros")
        self.o_kernel = param(rngs.params(), (n, h, d, e), (L, "heads", D, E), dt)
        self.post_norm = param(None, (n, e), (L, "norm"), dt, "ones")
        self.gate_kernel = param(rngs.params(), (n, e, m), (L, E, "mlp"), dt)
        self.up_kernel = param(rngs.params(), (n, e, m), (L, E, "mlp"), dt)
        self.down_kernel = param(rngs.params(), (n, m, e), (L, "mlp", E), dt)


def decoder_layer(x, p, cos, sin, mask, eps, implementation, cache_kv=None, cache_index=0):
    """x [B, T, E] -> (x, (k, v)). With cache_kv = (k, v, layer) the new keys/values are written at
    cache_index and attention runs over the whole cache; returns the updated cache. layer an int
    index: k/v are the stacked [L, B, Tmax, K, D]; layer None: this layer's [B, K, Tmax, D]."""
    dt = x.dtype
    h = rms_norm(x, p["input_norm"], eps)

    def proj(name):  # [B, T, heads, D], plus the bias when the family has one (Qwen2)
        y = jnp.einsum("bte,ehd->bthd", h, p[f"{name}_kernel"].astype(dt))
        return y + p[f"{name}_bias"].astype(dt) if f"{name}_bias" in p else y

    if "qkv_kernel" in p:  # split_layers' fused projection: one matmul for q, k and v
        qkv = proj("qkv")
        nh = p["o_kernel"].shape[0]
        q, k, v = jnp.split(qkv, [nh, nh + (qkv.shape[2] - nh) // 2], axis=2)
    else:
        q, k, v = proj("q"), proj("k"), proj("v")
    if "q_norm" in p:  # Qwen3: RMSNorm over each head's features, before the rotary
        q, k = rms_norm(q, p["q_norm"], eps), rms_norm(k, p["k_norm"], eps)
    q = rope.apply_rotary(q, cos[:, :, None], sin[:, :, None])
    k = rope.apply_rotary(k, cos[:, :, None], sin[:, :, None])
    if cache_kv is not None:
        ck, cv, layer = cache_kv
        kh = k.shape[2]  # kv heads
        if layer is None:
            # This layer's own buffers [B, K, Tmax, D] (kv-head major, the form attention reads
            # without a transposed copy): write the T new columns in place.
            at = (0, 0, cache_index, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 1, 3).astype(ck.dtype), at)
            cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype), at)
            o = grouped_attention(q, ck.astype(dt), cv.astype(dt), mask)
        else:
            # The whole stacked cache [L, B, Tmax, K, D] rides in the scan carry and only the T
            # new columns are written (in place), then this layer's slice is read for attention.
            at = (layer, 0, cache_index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], at)
            cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], at)
            k = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False).astype(dt)
            v = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False).astype(dt)
            k, v = (a.reshape(a.shape[0], -1, a.shape[-1]) for a in (k, v))  # [B, Tmax*K, D]
            o = cached_attention(q, k, v, mask, kh)
        new_kv = (ck, cv)
    else:
        new_kv = None
        o = attention(q, k, v, mask, implementation)
    if cache_kv is None:
        x = x + jnp.einsum("bthd,hde->bte", o, p["o_kernel"].astype(dt))
    else:
        # One contraction over the flattened (head, feature) axis: with einsum's two contracting
        # axes CPU XLA transposed the [H, D, E] kernel every decode step.
        hd = o.shape[2] * o.shape[3]
        o_kernel = p["o_kernel"].astype(dt).reshape(hd, -1)
        x = x + jnp.einsum("btf,fe->bte", o.reshape(*o.shape[:2], hd), o_kernel)
    h = rms_norm(x, p["post_norm"], eps)
    if "gate_up_kernel" in p:  # split_layers' fused [E, 2, M] kernel: one matmul
        gate_up = jnp.einsum("bte,ecm->btcm", h, p["gate_up_kernel"].astype(dt))
        gate, up = gate_up[:, :, 0], gate_up[:, :, 1]
    else:
        gate = jnp.einsum("bte,em->btm", h, p["gate_kernel"].astype(dt))
        up = jnp.einsum("bte,em->btm", h, p["up_kernel"].astype(dt))
    x = x + jnp.einsum("btm,me->bte", jax.nn.silu(gate) * up, p["down_kernel"].astype(dt))
    return x, new_kv


class Decoder(nnx.Module):
    """Token embedding, decoder layers, final norm and (untied) LM head."""

    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
        c, dt = config, config.jnp_param_dtype
        self.config = config
        self.embed_tokens = param(
            rngs.params(), (c.vocab_size, c.hidden_size), ("vocab", "embed"), dt
        )
        self.layers = DecoderLayers(config, rngs)
        self.norm = param(None, (c.hidden_size,), ("norm",), dt, "ones")
        if not c.tie_word_embeddings:
            self.lm_head = param(
                rngs.params(), (c.hidden_size, c.vocab_size), ("embed", "vocab"), dt
            )

    def split_layers(self):
        """The stacked layer parameters as L per-layer dicts of arrays, with the q/k/v kernels
        (and biases) joined into one `qkv_kernel` [E, H+2K, D] / `qkv_bias` and gate/up into one
        `gate_up_kernel` [E, 2, M].

        Made once outside a decode loop, they let every step read each layer's weights directly
        (slicing the stacked [L, ...] arrays inside the loop copies every weight each step on
        backends whose matmuls cannot read a slice in place: CPU, GPU where no fusion absorbs
        it), in 4 matmuls per layer instead of 7 (fewer kernel launches per decode step).
        """
        params = values(self.layers, layer_param_names(self.config))
        layers = []
        for i in range(self.config.num_hidden_layers):
            p = {k: v[i] for k, v in params.items()}
            qkv = [p.pop(f"{n}_kernel") for n in "qkv"]
            p["qkv_kernel"] = jnp.concatenate(qkv, axis=1)
            if "q_bias" in p:
                p["qkv_bias"] = jnp.concatenate([p.pop(f"{n}_bias") for n in "qkv"], axis=0)
            p["gate_up_kernel"] = jnp.stack([p.pop("gate_kernel"), p.pop("up_kernel")], axis=1)
            layers.append(p)
        return tuple(layers)

    def __call__(self, x, positions, kv_mask=None, cache=None, cache_index=0, layers=None):
        """x [B, T, E] (or [B, T, 1 + Ld, E] with DeepStack features, see the module docstring),
        positions int [3, B, T], kv_mask bool [B, Tk] -> (normed hidden [B, T, E], cache).

        cache: None, the stacked {"k", "v"} [L, B, Tmax, K, D], or per-layer {"k", "v"}: tuples of
        L arrays [B, K, Tmax, D] (returned in the same form). layers: `split_layers()`'s result, to
        run an unrolled loop over per-layer parameters (then no stacked array is sliced).
        """
        c = self.config
        dt = c.jnp_compute_dtype
        x = x.astype(dt)
        deep = None  # DeepStack features [Ld, B, T, E], added after layers 0 .. Ld-1
        if x.ndim == 4:
            x, deep = x[:, :, 0], jnp.moveaxis(x[:, :, 1:], 2, 0)
        bsz, seq = x.shape[:2]
        cos, sin = rope.mrope_cos_sin(
            positions, c.head_dim, c.rope_theta, c.mrope_section, dt, c.mrope_interleaved
        )
        per_layer = cache is not None and isinstance(cache["k"], (tuple, list))
        if cache is None:
            tk = seq
        elif per_layer:
            tk = cache["k"][0].shape[2]
        else:
            tk = cache["k"].shape[2]
        if kv_mask is None:
            kv_mask = jnp.ones((bsz, tk), bool)
        q_cols = jnp.arange(seq) + (0 if cache is None else cache_index)
        causal = jnp.arange(tk)[None, :] <= q_cols[:, None]  # [T, Tk]
        mask = causal[None, None] & kv_mask.astype(bool)[:, None, None, :]
        args = (cos, sin, mask, c.rms_norm_eps, c.attention)

        def add_deepstack(x, layer):
            # One scan over all layers: layer (traced) reads its features by index; the layers
            # past the DeepStack ones keep x (slicing the stacked weights into two scans would
            # copy them).
            if deep is None:
                return x
            feats = jax.lax.dynamic_index_in_dim(
                deep, jnp.minimum(layer, deep.shape[0] - 1), keepdims=False
            )
            return jnp.where(layer < deep.shape[0], x + feats, x)

        def body(x, xs):
            p, layer = xs
            return add_deepstack(decoder_layer(x, p, *args)[0], layer), None

        def cached_body(carry, xs):
            x, ck, cv = carry
            p, layer = xs
            x, (ck, cv) = decoder_layer(x, p, *args, (ck, cv, layer), cache_index)
            return (add_deepstack(x, layer), ck, cv), None

        new_cache = None
        if layers is not None or per_layer:
            # Unrolled over per-layer parameters and per-layer cache buffers (decode).
            if cache is not None and not per_layer:
                raise ValueError("Decoder: `layers` needs a per-layer cache (tuples of L arrays)")
            layers = self.split_layers() if layers is None else layers
            ks, vs = (list(cache["k"]), list(cache["v"])) if per_layer else (None, None)
            for i, p in enumerate(layers):
                if per_layer:
                    kv = (ks[i], vs[i], None)
                    x, (ks[i], vs[i]) = decoder_layer(x, p, *args, kv, cache_index)
                else:
                    x = decoder_layer(x, p, *args)[0]
                if deep is not None and i < deep.shape[0]:
                    x = x + deep[i]
            if per_layer:
                new_cache = {"k": tuple(ks), "v": tuple(vs)}
        elif cache is None:
            params = values(self.layers, layer_param_names(c))
            layer_ids = jnp.arange(c.num_hidden_layers)
            x, _ = scan_layers(body, x, (params, layer_ids), scan=c.scan_layers, remat=c.remat)
        else:
            params = values(self.layers, layer_param_names(c))
            layer_ids = jnp.arange(c.num_hidden_layers)
            carry = (x, cache["k"], cache["v"])
            carry, _ = scan_layers(
                cached_body, carry, (params, layer_ids), scan=c.scan_layers, remat=c.remat
            )
            x, new_cache = carry[0], {"k": carry[1], "v": carry[2]}
        x = rms_norm(x, self.norm[...], c.rms_norm_eps)
        return x, new_cache

    def logits(self, hidden):
        """float32 [..., V] from normed hidden [..., E]."""
        dt = self.config.jnp_compute_dtype
        hidden = hidden.astype(dt)
        if self.config.tie_word_embeddings:
            w = self.embed_tokens[...].astype(dt)
            return jnp.einsum("...e,ve->...v", hidden, w, preferred_element_type=jnp.float32)
        w = self.lm_head[...].astype(dt)
        return jnp.einsum("...e,ev->...v", hidden, w, preferred_element_type=jnp.float32)
