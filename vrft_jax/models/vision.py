"""Qwen2-VL vision tower over one packed patch sequence.

All images of a batch arrive as one sequence pixel_values [S, 1176] (images concatenated, padding
patches at the end) with image_grid_thw [I, 3] (padding rows (0, 0, 0)). Attention is block-diagonal
per image frame, so padding patches never reach real ones; the merger turns each 2x2 block of
patches into one token of the LLM width: output [S/4, E].
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vrft_jax.models import rope
from vrft_jax.models.config import Qwen2VLConfig
from vrft_jax.models.layers import attention, layer_norm, param, scan_layers, values

LN_EPS = 1e-6  # hard-coded in transformers for every vision LayerNorm

BLOCK_PARAMS = (
    "norm1_scale",
    "norm1_bias",
    "qkv_kernel",
    "qkv_bias",
    "proj_kernel",
    "proj_bias",
    "norm2_scale",
    "norm2_bias",
    "fc1_kernel",
    "fc1_bias",
    "fc2_kernel",
    "fc2_bias",
)


class VisionBlocks(nnx.Module):
    """`vision_depth` pre-norm ViT blocks stored with a leading `layers` axis."""

    def __init__(self, config: Qwen2VLConfig, rngs: nnx.Rngs):
        c, dt = config, config.jnp_param_dtype
        n, e, h, d, m = (
            c.vision_depth,
            c.vision_embed_dim,
            c.vision_num_heads,
            c.vision_head_dim,
            c.vision_mlp_dim,
        )
        L, VE, VH, HD, VM = "layers", "vision_embed", "vision_heads", "head_dim", "vision_mlp"
        self.norm1_scale = param(None, (n, e), (L, "norm"), dt, "ones")
        self.norm1_bias = param(None, (n, e), (L, "norm"), dt, "zeros")
        self.qkv_kernel = param(rngs.params(), (n, e, 3, h, d), (L, VE, None, VH, HD), dt)
        self.qkv_bias = param(None, (n, 3, h, d), (L, None, VH, HD), dt, "zeros")
        self.proj_kernel = param(rngs.params(), (n, h, d, e), (L, VH, HD, VE), dt)
        self.proj_bias = param(None, (n, e), (L, "norm"), dt, "zeros")
        self.norm2_scale = param(None, (n, e), (L, "norm"), dt, "ones")
        self.norm2_bias = param(None, (n, e), (L, "norm"), dt, "zeros")
        self.fc1_kernel = param(rngs.params(), (n, e, m), (L, VE, VM), dt)
        self.fc1_bias = param(None, (n, m), (L, VM), dt, "zeros")
        self.fc2_kernel = param(rngs.params(), (n, m, e), (L, VM, VE), dt)
        self.fc2_bias = param(None, (n, e), (L, "norm"), dt, "zeros")


def vision_block(x, p, cos, sin, mask, implementation):
    """One block: x + Attn(LN1(x)); x + MLP(LN2(x)). x [S, VE]; p this layer's parameters."""
    dt = x.dtype
    h = layer_norm(x, p["norm1_scale"], p["norm1_bias"], LN_EPS)
    qkv = jnp.einsum("se,ecnd->scnd", h, p["qkv_kernel"].astype(dt)) + p["qkv_bias"].astype(dt)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [S, Hv, Dv]
    # The vision rotary runs in float32 and casts back (transformers does the same).
    q = rope.apply_rotary(q.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dt)
    k = rope.apply_rotary(k.astype(jnp.float32), cos[:, None], sin[:, None]).astype(dt)
    o = attention(q[None], k[None], v[None], mask, implementation)[0]
    x = x + jnp.einsum("snd,nde->se", o, p["proj_kernel"].astype(dt)) + p["proj_bias"].astype(dt)
    h = layer_norm(x, p["norm2_scale"], p["norm2_bias"], LN_EPS)
    h = jnp.einsum("se,em->sm", h, p["fc1_kernel"].astype(dt)) + p["fc1_bias"].astype(dt)
    h = h * jax.nn.sigmoid(1.702 * h)  # QuickGELU
    h = jnp.einsum("sm,me->se", h, p["fc2_kernel"].astype(dt)) + p["fc2_bias"].astype(dt)
    return x + h


class PatchMerger(nnx.Module):
    """LN per patch, concat each 2x2 block feature-wise (4*VE), Linear, exact GELU, Linear to E."""

    def __init__(self, config: Qwen2VLConfig, rngs: nnx.Rngs):
        c, dt = config, config.jnp_param_dtype
        e4 = c.vision_embed_dim * c.merge_unit
        self.ln_scale = param(None, (c.vision_embed_dim,), ("norm",), dt, "ones")
        self.ln_bias = param(None, (c.vision_embed_dim,), ("norm",), dt, "zeros")
        self.fc1_kernel = param(rngs.params(), (e4, e4), ("vision_embed", "vision_mlp"), dt)
        self.fc1_bias = param(None, (e4,), ("vision_mlp",), dt, "zeros")
        self.fc2_kernel = param(rngs.params(), (e4, c.hidden_size), ("vision_mlp", "embed"), dt)
        self.fc2_bias = param(None, (c.hidden_size,), ("norm",), dt, "zeros")

    def __call__(self, x, merge_unit: int):
        dt = x.dtype
        x = layer_norm(x, self.ln_scale[...], self.ln_bias[...], LN_EPS)
        x = x.reshape(-1, merge_unit * x.shape[-1])
        x = x @ self.fc1_kernel[...].astype(dt) + self.fc1_bias[...].astype(dt)
        x = jax.nn.gelu(x, approximate=False)
        return x @ self.fc2_kernel[...].astype(dt) + self.fc2_bias[...].astype(dt)


class VisionTower(nnx.Module):
    def __init__(self, config: Qwen2VLConfig, rngs: nnx.Rngs):
        self.config = config
        dt = config.jnp_param_dtype
        self.patch_embed = param(
            rngs.params(),
            (config.patch_dim, config.vision_embed_dim),
            ("patch", "vision_embed"),
            dt,
        )
        self.blocks = VisionBlocks(config, rngs)
        self.merger = PatchMerger(config, rngs)

    def __call__(self, pixel_values, image_grid_thw):
        """pixel_values [S, 1176] (S a multiple of 4), image_grid_thw int [I, 3] -> [S/4, E]."""
        c = self.config
        dt = c.jnp_compute_dtype
        num = pixel_values.shape[0]
        if num % c.merge_unit:
            raise ValueError(f"packed patch count {num} is not a multiple of {c.merge_unit}")
        # Patch embedding: the Conv3d with kernel = stride is one matmul over flattened patches.
        x = pixel_values.astype(dt) @ self.patch_embed[...].astype(dt)
        segment, hpos, wpos = rope.packed_patch_layout(image_grid_thw, num, c.spatial_merge_size)
        cos, sin = rope.vision_cos_sin(hpos, wpos, c.vision_head_dim, c.vision_rope_theta)
        mask = (segment[:, None] == segment[None, :])[None, None]  # [1, 1, S, S] block-diagonal

        def body(x, p):
            return vision_block(x, p, cos, sin, mask, c.attention), None

        x, _ = scan_layers(
            body, x, values(self.blocks, BLOCK_PARAMS), scan=c.scan_layers, remat=c.remat
        )
        return self.merger(x, c.merge_unit)
