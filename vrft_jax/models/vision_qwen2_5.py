"""Qwen2.5-VL vision tower: Qwen2-VL's tower with RMSNorm blocks, a SwiGLU MLP (gate/up/down, with
biases), window attention in every block except `fullatt_block_indexes`, and an RMSNorm patch
merger whose output width is the LLM's (config.json's `out_hidden_size`).

The patches run in window order (models/windows.py): full-attention blocks attend inside each image
frame, the others inside each window. Image order is restored before the merger (the merger works
per 2x2 merged token, so this equals transformers' restoring after it). Inputs and outputs are
those of the Qwen2-VL tower: packed [S, 1176] -> [S/4, E] or slots [I, Q, 1176] -> [I * Q/4, E].
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax.models import rope, windows
from vrft_jax.models.config import QwenVLConfig
from vrft_jax.models.layers import attention, param, scan_layers, values
from vrft_jax.models.vision import PatchMerger, pack_slot_tokens, vision_block

BLOCK_PARAMS = (
    "norm1_scale",
    "qkv_kernel",
    "qkv_bias",
    "proj_kernel",
    "proj_bias",
    "norm2_scale",
    "gate_kernel",
    "gate_bias",
    "up_kernel",
    "up_bias",
    "down_kernel",
    "down_bias",
)


class WindowVisionBlocks(nnx.Module):
    """`vision_depth` RMSNorm + SwiGLU ViT blocks stored with a leading `layers` axis."""

    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
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
        self.qkv_kernel = param(rngs.params(), (n, e, 3, h, d), (L, VE, None, VH, HD), dt)
        self.qkv_bias = param(None, (n, 3, h, d), (L, None, VH, HD), dt, "zeros")
        self.proj_kernel = param(rngs.params(), (n, h, d, e), (L, VH, HD, VE), dt)
        self.proj_bias = param(None, (n, e), (L, "norm"), dt, "zeros")
        self.norm2_scale = param(None, (n, e), (L, "norm"), dt, "ones")
        self.gate_kernel = param(rngs.params(), (n, e, m), (L, VE, VM), dt)
        self.gate_bias = param(None, (n, m), (L, VM), dt, "zeros")
        self.up_kernel = param(rngs.params(), (n, e, m), (L, VE, VM), dt)
        self.up_bias = param(None, (n, m), (L, VM), dt, "zeros")
        self.down_kernel = param(rngs.params(), (n, m, e), (L, VM, VE), dt)
        self.down_bias = param(None, (n, e), (L, "norm"), dt, "zeros")


class WindowVisionTower(nnx.Module):
    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
        self.config = config
        self.patch_embed = param(
            rngs.params(),
            (config.patch_dim, config.vision_embed_dim),
            ("patch", "vision_embed"),
            config.jnp_param_dtype,
        )
        self.blocks = WindowVisionBlocks(config, rngs)
        self.merger = PatchMerger(config, rngs, norm="rms")

    @property
    def window_tokens(self) -> int:
        """Merged tokens per window side (4 for 112 px windows of 14 px patches merged 2x2)."""
        c = self.config
        return c.window_size // c.patch_size // c.spatial_merge_size

    def __call__(self, pixel_values, image_grid_thw):
        """Packed pixel_values [S, 1176] -> [S/4, E], or slots [I, Q, 1176] -> [I * Q/4, E];
        image_grid_thw int [I, 3]. S and Q must be multiples of 4 (the 2x2 merge)."""
        c = self.config
        dt = c.jnp_compute_dtype
        slots = pixel_values.ndim == 3
        num = pixel_values.shape[-2]
        if num % c.merge_unit:
            what = "patches per slot" if slots else "packed patch count"
            raise ValueError(f"{what} {num} is not a multiple of {c.merge_unit}")
        if not slots:  # one sequence: a leading axis of 1 so both layouts share the code
            pixel_values = pixel_values[None]
        win = self.window_tokens
        *per_patch, dest = windows.window_layout(
            image_grid_thw, num, c.spatial_merge_size, win, slots
        )
        src = windows.inverse_order(dest)
        # Everything below runs in window order (patch k of the sequence is image patch src[k]).
        segment, window, hpos, wpos = (windows.gather_rows(a, src) for a in per_patch)
        x = windows.gather_rows(pixel_values.astype(dt), src)
        # Patch embedding: the Conv3d with kernel = stride is one matmul over flattened patches.
        x = x @ self.patch_embed[...].astype(dt)  # [F, N, VE]
        cos, sin = rope.vision_cos_sin(
            hpos.reshape(-1), wpos.reshape(-1), c.vision_head_dim, c.vision_rope_theta
        )
        cos, sin = (a.reshape(*hpos.shape, -1) for a in (cos, sin))
        full_mask = windows.segment_mask(segment)  # [F, 1, N, N]
        block = win * win * c.merge_unit
        attend_full = functools.partial(attention, mask=full_mask, implementation=c.attention)
        attend_window = functools.partial(
            windows.window_attention, window=window, block=block, implementation=c.attention
        )
        is_full = np.isin(np.arange(c.vision_depth), c.fullatt_block_indexes)

        def block_body(attend):
            def body(x, p):
                return vision_block(x, p, cos, sin, attend, c.vision_hidden_act), None

            return body

        full_body, window_body = block_body(attend_full), block_body(attend_window)
        params = values(self.blocks, BLOCK_PARAMS)
        if c.scan_layers:  # one compiled block; each layer's flag picks its attention

            def body(x, xs):
                p, full = xs
                return jax.lax.cond(full, full_body, window_body, x, p)

            xs = (params, jnp.asarray(is_full))
            x, _ = scan_layers(body, x, xs, scan=True, remat=c.vision_remat)
        else:  # unrolled: each block's attention chosen here
            for i, full in enumerate(is_full):
                layer = jax.tree.map(lambda a, i=i: a[i : i + 1], params)
                body = full_body if full else window_body
                x, _ = scan_layers(body, x, layer, scan=False, remat=c.vision_remat)
        x = windows.gather_rows(x, dest)  # back to image order
        merged = self.merger(x.reshape(-1, x.shape[-1]), c.merge_unit)
        if not slots:
            return merged
        tokens = merged.reshape(x.shape[0], num // c.merge_unit, -1)
        return pack_slot_tokens(tokens, image_grid_thw, c.merge_unit)
