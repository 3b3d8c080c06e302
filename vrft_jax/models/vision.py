"""Qwen2-VL vision tower; attention is block-diagonal per image frame.

Two input layouts (vrft_jax.buckets.pad_images picks one on the host):
- packed: pixel_values [S, 1176], all images concatenated, padding patches at the end, with
  image_grid_thw [I, 3] (padding rows (0, 0, 0)). One [S, S] attention with a block-diagonal mask:
  costs S^2 whatever the image sizes (the form transformers' reference takes).
- slots: pixel_values [I, Q, 1176], image i's patches at the start of slot i, zero padding after.
  Attention runs per slot: I * Q^2 instead of (I * Q)^2, i.e. 8x less for 8 same-size images.
Both give the same merged tokens, packed in image order: output [S/4, E] (slots: [I * Q/4, E],
real tokens first). The merger turns each 2x2 block of patches into one token of the LLM width.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vrft_jax.models import rope
from vrft_jax.models.config import QwenVLConfig
from vrft_jax.models.layers import attention, layer_norm, param, rms_norm, scan_layers, values

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


def _norm(x, p, name):
    """LayerNorm when the block has a `{name}_bias` (Qwen2-VL), else RMSNorm (Qwen2.5-VL)."""
    if name + "_bias" in p:
        return layer_norm(x, p[name + "_scale"], p[name + "_bias"], LN_EPS)
    return rms_norm(x, p[name + "_scale"], LN_EPS)


def vision_mlp(h, p, act: str):
    """Qwen2-VL: fc2(act(fc1 h)); Qwen2.5-VL (a `gate_kernel`): down(silu(gate h) * up h), all
    with biases. h [..., VE] -> [..., VE]."""
    dt = h.dtype

    def linear(x, name):
        return x @ p[name + "_kernel"].astype(dt) + p[name + "_bias"].astype(dt)

    if "gate_kernel" in p:
        return linear(jax.nn.silu(linear(h, "gate")) * linear(h, "up"), "down")
    h = linear(h, "fc1")
    if act == "quick_gelu":
        h = h * jax.nn.sigmoid(1.702 * h)
    else:
        raise ValueError(f"vision MLP activation {act!r} unsupported")
    return linear(h, "fc2")


def vision_block(x, p, cos, sin, attend, act="quick_gelu"):
    """One block: x + Attn(N1(x)); x + MLP(N2(x)). p: this layer's parameters.

    x [F, S, VE] (F slots, or 1 packed sequence); cos/sin float32 [F, S, Dv]; attend(q, k, v) the
    attention over q/k/v [F, S, Hv, Dv] with this block's mask (whole frames or windows).
    """
    dt = x.dtype
    h = _norm(x, p, "norm1")
    qkv = jnp.einsum("fse,ecnd->fscnd", h, p["qkv_kernel"].astype(dt)) + p["qkv_bias"].astype(dt)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [F, S, Hv, Dv]
    # The vision rotary runs in float32 and casts back (transformers does the same).
    cos, sin = cos[:, :, None], sin[:, :, None]
    q = rope.apply_rotary(q.astype(jnp.float32), cos, sin).astype(dt)
    k = rope.apply_rotary(k.astype(jnp.float32), cos, sin).astype(dt)
    o = attend(q, k, v)
    proj = jnp.einsum("fsnd,nde->fse", o, p["proj_kernel"].astype(dt))
    x = x + proj + p["proj_bias"].astype(dt)
    return x + vision_mlp(_norm(x, p, "norm2"), p, act)


def slot_patch_layout(grid_thw, slot: int, merge: int = 2):
    """Where each patch of the slots layout sits.

    grid_thw int [I, 3]; slot Q patches per image. Returns (segment int32 [I, Q], hpos, wpos):
    segment is the frame index inside the image (-1 for padding patches, which then only see each
    other), hpos/wpos the patch row/column in the processor's merge-block order.
    """
    grid_thw = jnp.asarray(grid_thw, jnp.int32)
    t, h, w = (grid_thw[:, i : i + 1] for i in range(3))  # [I, 1]
    frame = jnp.maximum(h * w, 1)
    r = jnp.arange(slot, dtype=jnp.int32)[None, :]  # [1, Q]
    real = r < t * h * w
    within_frame = r % frame
    unit = merge * merge
    block, within = within_frame // unit, within_frame % unit
    blocks_per_row = jnp.maximum(w // merge, 1)
    hpos = (block // blocks_per_row) * merge + within // merge
    wpos = (block % blocks_per_row) * merge + within % merge
    zero = jnp.zeros_like(hpos)
    segment = jnp.where(real, r // frame, -1)
    return segment, jnp.where(real, hpos, zero), jnp.where(real, wpos, zero)


def pack_slot_tokens(tokens, grid_thw, merge_unit: int):
    """Merged tokens in slot order [I, Q/U, E] -> image order [I * Q/U, E], real tokens first
    (image i's t*h*w/U tokens follow image i-1's; rows past the last real token are filler)."""
    num, per_slot, _ = tokens.shape
    grid_thw = jnp.asarray(grid_thw, jnp.int32)
    count = jnp.prod(grid_thw, axis=1) // merge_unit  # [I] merged tokens per image
    ends = jnp.cumsum(count)
    k = jnp.arange(num * per_slot, dtype=jnp.int32)
    img = jnp.minimum(jnp.searchsorted(ends, k, side="right"), num - 1)
    offset = jnp.clip(k - (ends - count)[img], 0, per_slot - 1)
    return tokens.reshape(num * per_slot, -1)[img * per_slot + offset]


class PatchMerger(nnx.Module):
    """Norm per patch (LayerNorm; RMSNorm for Qwen2.5-VL, norm="rms"), concat each 2x2 block
    feature-wise (4*VE), Linear, exact GELU, Linear to E."""

    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs, norm: str = "layer"):
        c, dt = config, config.jnp_param_dtype
        e4 = c.vision_embed_dim * c.merge_unit
        self.ln_scale = param(None, (c.vision_embed_dim,), ("norm",), dt, "ones")
        if norm == "layer":
            self.ln_bias = param(None, (c.vision_embed_dim,), ("norm",), dt, "zeros")
        self.fc1_kernel = param(rngs.params(), (e4, e4), ("vision_embed", "vision_mlp"), dt)
        self.fc1_bias = param(None, (e4,), ("vision_mlp",), dt, "zeros")
        self.fc2_kernel = param(rngs.params(), (e4, c.hidden_size), ("vision_mlp", "embed"), dt)
        self.fc2_bias = param(None, (c.hidden_size,), ("norm",), dt, "zeros")

    def __call__(self, x, merge_unit: int):
        dt = x.dtype
        if hasattr(self, "ln_bias"):
            x = layer_norm(x, self.ln_scale[...], self.ln_bias[...], LN_EPS)
        else:
            x = rms_norm(x, self.ln_scale[...], LN_EPS)
        x = x.reshape(-1, merge_unit * x.shape[-1])
        x = x @ self.fc1_kernel[...].astype(dt) + self.fc1_bias[...].astype(dt)
        x = jax.nn.gelu(x, approximate=False)
        return x @ self.fc2_kernel[...].astype(dt) + self.fc2_bias[...].astype(dt)


class VisionTower(nnx.Module):
    def __init__(self, config: QwenVLConfig, rngs: nnx.Rngs):
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
        """Packed pixel_values [S, 1176] -> [S/4, E], or slots [I, Q, 1176] -> [I * Q/4, E];
        image_grid_thw int [I, 3]. S and Q must be multiples of 4 (the 2x2 merge)."""
        c = self.config
        dt = c.jnp_compute_dtype
        slots = pixel_values.ndim == 3
        num = pixel_values.shape[-2]
        if num % c.merge_unit:
            what = "patches per slot" if slots else "packed patch count"
            raise ValueError(f"{what} {num} is not a multiple of {c.merge_unit}")
        if slots:
            segment, hpos, wpos = slot_patch_layout(image_grid_thw, num, c.spatial_merge_size)
        else:  # one sequence: a leading axis of 1 so both layouts share vision_block
            pixel_values = pixel_values[None]
            layout = rope.packed_patch_layout(image_grid_thw, num, c.spatial_merge_size)
            segment, hpos, wpos = (a[None] for a in layout)
        # Patch embedding: the Conv3d with kernel = stride is one matmul over flattened patches.
        x = pixel_values.astype(dt) @ self.patch_embed[...].astype(dt)  # [F, S, VE]
        cos, sin = rope.vision_cos_sin(
            hpos.reshape(-1), wpos.reshape(-1), c.vision_head_dim, c.vision_rope_theta
        )
        cos, sin = (a.reshape(*hpos.shape, -1) for a in (cos, sin))
        mask = (segment[:, :, None] == segment[:, None, :])[:, None]  # [F, 1, S, S]

        def body(x, p):
            attend = functools.partial(attention, mask=mask, implementation=c.attention)
            return vision_block(x, p, cos, sin, attend, c.vision_hidden_act), None

        x, _ = scan_layers(
            body, x, values(self.blocks, BLOCK_PARAMS), scan=c.scan_layers, remat=c.vision_remat
        )
        merged = self.merger(x.reshape(-1, x.shape[-1]), c.merge_unit)
        if not slots:
            return merged
        tokens = merged.reshape(x.shape[0], num // c.merge_unit, -1)
        return pack_slot_tokens(tokens, image_grid_thw, c.merge_unit)
