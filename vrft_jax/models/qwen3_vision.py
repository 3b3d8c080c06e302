"""Qwen3-VL vision tower: 16-px patches, learned position embeddings, 2-D rotary, DeepStack.

As transformers' Qwen3VLVisionModel:
- patch embedding: a Conv3d with kernel = stride (one matmul over flattened 3*2*16*16 pixel rows)
  with a bias;
- learned absolute position embeddings: a square side x side table (`num_position_embeddings`)
  resampled bilinearly (align_corners) to each image's patch grid, added to the patch embeddings;
- pre-norm blocks: LayerNorm, attention with the 2-D rotary of Qwen2-VL, LayerNorm, gelu-tanh MLP;
- patch merger: LayerNorm per patch, each 2x2 block concatenated, Linear, GELU, Linear to E;
- DeepStack: the hidden states after each block in `deepstack_visual_indexes` go through their own
  merger (LayerNorm over the concatenated 4*VE features) and are returned with the main tokens.

Same two image layouts as vision.py (packed [S, 1536] or slots [I, Q, 1536]); the interpolated
position embeddings and the rotary are per patch, so both follow each image. The output stacks the
main tokens and the DeepStack features: [S/4, 1 + Ld, E] (slots: [I * Q/4, 1 + Ld, E]).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vrft_jax.models import rope
from vrft_jax.models.config import QwenVLConfig
from vrft_jax.models.layers import attention, layer_norm, param, scan_layers, values
from vrft_jax.models.vision import (
    BLOCK_PARAMS,
    LN_EPS,
    VisionBlocks,
    pack_slot_tokens,
    slot_patch_layout,
)


def position_embedding_taps(hpos, wpos, height, width, side: int):
    """Bilinear (align_corners=True) resampling of a side x side table to each patch's image grid.

    hpos/wpos int [...]: the patch's row/column; height/width int [...]: its image's grid (patch
    units). Returns (index int32 [..., 4] into the flattened table, weight float32 [..., 4]) in
    transformers' tap order (h0w0, h0w1, h1w0, h1w1), computed as its vision_utils does.
    """

    def axis(pos, size):
        # float32 pos * (side - 1) / (size - 1): the closed form of linspace(0, side-1, size)[pos].
        src = pos.astype(jnp.float32) * (side - 1) / jnp.maximum(size - 1, 1).astype(jnp.float32)
        floor = jnp.floor(src)
        offsets = jnp.arange(2, dtype=jnp.float32)
        taps = jnp.clip(floor[..., None].astype(jnp.int32) + jnp.arange(2), 0, side - 1)
        weights = jnp.maximum(1 - jnp.abs(src[..., None] - floor[..., None] - offsets), 0)
        return taps, weights

    h_taps, h_w = axis(hpos, height)
    w_taps, w_w = axis(wpos, width)
    index = (h_taps[..., :, None] * side + w_taps[..., None, :]).reshape(*hpos.shape, 4)
    weight = (h_w[..., :, None] * w_w[..., None, :]).reshape(*hpos.shape, 4)
    return index.astype(jnp.int32), weight


def vision_block(x, p, cos, sin, mask, implementation):
    """x + Attn(LN1(x)); x + MLP(LN2(x)) with a gelu-tanh MLP. x [F, S, VE]; cos/sin float32
    [F, S, Dv]; mask bool [F, 1, S, S]. (Qwen2-VL's block differs only in its QuickGELU.)"""
    dt = x.dtype
    h = layer_norm(x, p["norm1_scale"], p["norm1_bias"], LN_EPS)
    qkv = jnp.einsum("fse,ecnd->fscnd", h, p["qkv_kernel"].astype(dt)) + p["qkv_bias"].astype(dt)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [F, S, Hv, Dv]
    cos, sin = cos[:, :, None], sin[:, :, None]  # rotary in float32, as transformers
    q = rope.apply_rotary(q.astype(jnp.float32), cos, sin).astype(dt)
    k = rope.apply_rotary(k.astype(jnp.float32), cos, sin).astype(dt)
    o = attention(q, k, v, mask, implementation)
    x = x + jnp.einsum("fsnd,nde->fse", o, p["proj_kernel"].astype(dt)) + p["proj_bias"].astype(dt)
    h = layer_norm(x, p["norm2_scale"], p["norm2_bias"], LN_EPS)
    h = jnp.einsum("fse,em->fsm", h, p["fc1_kernel"].astype(dt)) + p["fc1_bias"].astype(dt)
    h = jax.nn.gelu(h, approximate=True)
    h = jnp.einsum("fsm,me->fse", h, p["fc2_kernel"].astype(dt)) + p["fc2_bias"].astype(dt)
    return x + h


MERGER_PARAMS = ("ln_scale", "ln_bias", "fc1_kernel", "fc1_bias", "fc2_kernel", "fc2_bias")


class Mergers(nnx.Module):
    """`count` patch mergers stacked on a leading axis: LayerNorm (over VE per patch, or over the
    4*VE block for the DeepStack ones), Linear 4VE -> 4VE, exact GELU, Linear 4VE -> E."""

    def __init__(self, config: QwenVLConfig, count: int, norm_width: int, rngs: nnx.Rngs):
        c, dt, n = config, config.jnp_param_dtype, count
        e4 = c.vision_embed_dim * c.merge_unit
        L = "layers"
        self.ln_scale = param(None, (n, norm_width), (L, "norm"), dt, "ones")
        self.ln_bias = param(None, (n, norm_width), (L, "norm"), dt, "zeros")
        self.fc1_kernel = param(rngs.params(), (n, e4, e4), (L, "vision_embed", "vision_mlp"), dt)
        self.fc1_bias = param(None, (n, e4), (L, "vision_mlp"), dt, "zeros")
        e = c.hidden_size
        self.fc2_kernel = param(rngs.params(), (n, e4, e), (L, "vision_mlp", "embed"), dt)
        self.fc2_bias = param(None, (n, c.hidden_size), (L, "norm"), dt, "zeros")


def merge(x, p, merge_unit: int):
    """x [N, VE] patches (merge blocks consecutive) -> [N / U, E] with one merger's params p."""
    dt = x.dtype
    if p["ln_scale"].shape[-1] == x.shape[-1]:  # main merger: norm each patch, then concatenate
        x = layer_norm(x, p["ln_scale"], p["ln_bias"], LN_EPS).reshape(-1, merge_unit * x.shape[-1])
    else:  # DeepStack merger: concatenate, then norm the block
        x = layer_norm(x.reshape(-1, merge_unit * x.shape[-1]), p["ln_scale"], p["ln_bias"], LN_EPS)
    x = x @ p["fc1_kernel"].astype(dt) + p["fc1_bias"].astype(dt)
    x = jax.nn.gelu(x, approximate=False)
    return x @ p["fc2_kernel"].astype(dt) + p["fc2_bias"].astype(dt)


class Qwen3VisionTower(nnx.Module):
    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
        c, dt = config, config.jnp_param_dtype
        self.config = config
        side = int(c.num_position_embeddings**0.5)
        if side * side != c.num_position_embeddings or side < 2:
            raise ValueError(
                f"Qwen3-VL: num_position_embeddings {c.num_position_embeddings} must be a square "
                "side^2 with side >= 2"
            )
        if any(not 0 <= i < c.vision_depth for i in c.deepstack_visual_indexes) or list(
            c.deepstack_visual_indexes
        ) != sorted(set(c.deepstack_visual_indexes)):
            raise ValueError(
                f"Qwen3-VL: deepstack_visual_indexes {c.deepstack_visual_indexes} must be "
                f"increasing vision block indexes below depth {c.vision_depth}"
            )
        ve = c.vision_embed_dim
        self.patch_embed = param(rngs.params(), (c.patch_dim, ve), ("patch", "vision_embed"), dt)
        self.patch_bias = param(None, (ve,), ("norm",), dt, "zeros")
        self.pos_embed = param(rngs.params(), (side * side, ve), (None, "vision_embed"), dt)
        self.blocks = VisionBlocks(config, rngs)
        self.merger = Mergers(config, 1, ve, rngs)
        if c.num_deepstack:
            self.deepstack_mergers = Mergers(config, c.num_deepstack, ve * c.merge_unit, rngs)

    def __call__(self, pixel_values, image_grid_thw):
        """Packed pixel_values [S, 1536] -> [S/4, 1 + Ld, E], or slots [I, Q, 1536] ->
        [I * Q/4, 1 + Ld, E]; image_grid_thw int [I, 3]. Slot 0 of the middle axis holds the
        image tokens, slot 1 + i the DeepStack features of decoder layer i."""
        c = self.config
        dt = c.jnp_compute_dtype
        grid = jnp.asarray(image_grid_thw, jnp.int32)
        slots = pixel_values.ndim == 3
        num = pixel_values.shape[-2]
        if num % c.merge_unit:
            what = "patches per slot" if slots else "packed patch count"
            raise ValueError(f"{what} {num} is not a multiple of {c.merge_unit}")
        if slots:
            segment, hpos, wpos = slot_patch_layout(grid, num, c.spatial_merge_size)
            height = jnp.broadcast_to(grid[:, 1:2], hpos.shape)
            width = jnp.broadcast_to(grid[:, 2:3], hpos.shape)
        else:  # one sequence: a leading axis of 1 so both layouts share the block code
            pixel_values = pixel_values[None]
            layout = rope.packed_patch_layout(grid, num, c.spatial_merge_size)
            segment, hpos, wpos = (a[None] for a in layout)
            ends = jnp.cumsum(jnp.prod(grid, axis=1))
            img = jnp.searchsorted(ends, jnp.arange(num, dtype=jnp.int32), side="right")
            img = jnp.minimum(img, grid.shape[0] - 1)  # padding patches: any grid (row 0, col 0)
            height, width = grid[img, 1][None], grid[img, 2][None]
        x = pixel_values.astype(dt) @ self.patch_embed[...].astype(dt)
        x = x + self.patch_bias[...].astype(dt)
        side = int(c.num_position_embeddings**0.5)
        index, weight = position_embedding_taps(hpos, wpos, height, width, side)
        # The weighted sum in float32, then the compute dtype (as transformers: float32 weights).
        taps = jnp.take(self.pos_embed[...], index, axis=0).astype(jnp.float32)
        x = x + jnp.sum(taps * weight[..., None], axis=-2).astype(dt)  # [F, S, VE]
        cos, sin = rope.vision_cos_sin(
            hpos.reshape(-1), wpos.reshape(-1), c.vision_head_dim, c.vision_rope_theta
        )
        cos, sin = (a.reshape(*hpos.shape, -1) for a in (cos, sin))
        mask = (segment[:, :, None] == segment[:, None, :])[:, None]  # [F, 1, S, S]

        def body(x, p):
            return vision_block(x, p, cos, sin, mask, c.attention), None

        # The blocks run as consecutive scans that end after each DeepStack block, whose output
        # then goes through its merger. Slicing the stacked block weights per scan may copy them
        # (the tower's weights, once per forward); one scan would instead have to emit or carry
        # every block's output (depth x S x VE activations, saved again for the backward).
        blocks = values(self.blocks, BLOCK_PARAMS)
        ends = [i + 1 for i in c.deepstack_visual_indexes] + [c.vision_depth]
        start, outputs = 0, []
        deep = values(self.deepstack_mergers, MERGER_PARAMS) if c.num_deepstack else None
        for k, end in enumerate(ends):
            if end > start:
                segment_params = jax.tree.map(lambda a, s=start, e=end: a[s:e], blocks)
                x, _ = scan_layers(
                    body, x, segment_params, scan=c.scan_layers, remat=c.vision_remat
                )
            start = end
            if k < c.num_deepstack:
                p = jax.tree.map(lambda a, k=k: a[k], deep)
                outputs.append(merge(x.reshape(-1, x.shape[-1]), p, c.merge_unit))
        main = jax.tree.map(lambda a: a[0], values(self.merger, MERGER_PARAMS))
        outputs.insert(0, merge(x.reshape(-1, x.shape[-1]), main, c.merge_unit))
        merged = jnp.stack(outputs, axis=1)  # [F * S / U, 1 + Ld, E]
        if not slots:
            return merged
        tokens = merged.reshape(x.shape[0], num // c.merge_unit, -1)
        packed = pack_slot_tokens(tokens, grid, c.merge_unit)
        return packed.reshape(packed.shape[0], *merged.shape[1:])
