"""Rotary position maths for Qwen2-VL, all jittable with static shapes.

- Vision tower: 2-D rotary (row, column) with patch positions in spatial-merge block order, computed
  on device from `image_grid_thw` for one packed patch sequence.
- Decoder: M-RoPE, three position streams (t, h, w) that each drive a slice (`mrope_section`) of the
  rotary frequencies, and `get_rope_index`, the 3-D positions of a batch of prompts with images.
"""

import jax.numpy as jnp


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x, cos, sin):
    """x * cos + rotate_half(x) * sin; cos/sin broadcast against x [..., D]."""
    return x * cos + rotate_half(x) * sin


# ---- Vision --------------------------------------------------------------------------------------


def packed_patch_layout(grid_thw, num_patches: int, merge: int = 2):
    """Where each patch of a packed sequence sits.

    grid_thw: int [I, 3] (t, h, w) in patch units; rows (0, 0, 0) are padding images.
    Returns (segment int32 [S], hpos int32 [S], wpos int32 [S]): `segment` is unique per image frame
    (padding patches past the last image get their own segment), hpos/wpos the patch row/column
    in the processor's merge-block order (block_row, block_col, in_row, in_col).
    """
    grid_thw = jnp.asarray(grid_thw, jnp.int32)
    t, h, w = grid_thw[:, 0], grid_thw[:, 1], grid_thw[:, 2]
    frame = h * w
    ends = jnp.cumsum(t * frame)  # [I]
    starts = ends - t * frame
    s = jnp.arange(num_patches, dtype=jnp.int32)
    img = jnp.searchsorted(ends, s, side="right")  # image index; I for padding patches
    real = img < grid_thw.shape[0]
    img_c = jnp.minimum(img, grid_thw.shape[0] - 1)
    local = s - starts[img_c]
    frame_c = jnp.maximum(frame[img_c], 1)
    frame_idx = local // frame_c
    r = local % frame_c
    # Merge blocks of merge x merge patches, blocks in raster order over (h/merge, w/merge).
    unit = merge * merge
    block, within = r // unit, r % unit
    blocks_per_row = jnp.maximum(w[img_c] // merge, 1)
    hpos = (block // blocks_per_row) * merge + within // merge
    wpos = (block % blocks_per_row) * merge + within % merge
    # Frames of all images numbered consecutively; padding gets one segment after them.
    frame_base = jnp.cumsum(t) - t
    segment = jnp.where(real, frame_base[img_c] + frame_idx, jnp.sum(t))
    zero = jnp.zeros_like(hpos)
    return segment.astype(jnp.int32), jnp.where(real, hpos, zero), jnp.where(real, wpos, zero)


def vision_cos_sin(hpos, wpos, head_dim: int, theta: float = 10000.0):
    """cos, sin float32 [S, D] for the vision rotary: angles [h*f | w*f], duplicated (D/4 freqs
    each)."""
    quarter = head_dim // 4
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim // 2, 2, dtype=jnp.float32) / (head_dim // 2))
    assert inv_freq.shape[0] == quarter
    ang = jnp.concatenate(
        [
            hpos[:, None].astype(jnp.float32) * inv_freq,
            wpos[:, None].astype(jnp.float32) * inv_freq,
        ],
        axis=-1,
    )
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


# ---- Decoder M-RoPE ------------------------------------------------------------------------------


def mrope_streams(mrope_section, interleaved: bool = False):
    """int32 [D/2]: which position stream (0 t, 1 h, 2 w) drives each rotary frequency.

    Qwen2-VL: contiguous chunks of mrope_section sizes. Qwen3-VL (interleaved, as transformers'
    Qwen3VLTextRotaryEmbedding): frequency j is h when j % 3 == 1 and j < 3 * section[1], w when
    j % 3 == 2 and j < 3 * section[2], t otherwise.
    """
    if not interleaved:
        return jnp.concatenate([jnp.full((n,), i, jnp.int32) for i, n in enumerate(mrope_section)])
    j = jnp.arange(sum(mrope_section), dtype=jnp.int32)
    h = (j % 3 == 1) & (j < 3 * mrope_section[1])
    w = (j % 3 == 2) & (j < 3 * mrope_section[2])
    return jnp.where(h, 1, jnp.where(w, 2, 0)).astype(jnp.int32)


def mrope_cos_sin(positions, head_dim: int, theta: float, mrope_section, dtype, interleaved=False):
    """cos, sin [B, T, D] in `dtype` from positions int [3, B, T] (t, h, w streams).

    The D/2 frequencies are assigned to the t, h and w streams by `mrope_streams`, then the
    selection is duplicated for the rotate_half partner dims.
    """
    inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [3, B, T, D/2]
    stream = mrope_streams(mrope_section, interleaved)
    sel = jnp.where(stream == 0, freqs[0], jnp.where(stream == 1, freqs[1], freqs[2]))  # [B,T,D/2]
    emb = jnp.concatenate([sel, sel], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def get_rope_index(input_ids, attention_mask, image_grid_thw, config):
    """3-D M-RoPE positions of a (left-padded) batch, computed on device (transformers 5.x rules).

    input_ids: int [B, T]; attention_mask: [B, T] (1 real, 0 padding) or None; image_grid_thw: int
    [I, 3] in patch units, batch-major image order, rows (0, 0, 0) allowed as padding, or None.
    Text tokens advance every stream by one; an image of merged grid (t, gh, gw) places its tokens
    at start + (ti, hi, wi) and the text after it continues at start + max(gh, gw).
    Returns positions int32 [3, B, T] (0 at padding) and rope_deltas int32 [B]
    (= max position + 1 - real length; decode step positions are cache_len + delta).
    """
    input_ids = jnp.asarray(input_ids)
    bsz, seq = input_ids.shape
    real = jnp.ones((bsz, seq), bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
    merge = config.spatial_merge_size
    is_img = (input_ids == config.image_token_id) & real
    if image_grid_thw is None:
        image_grid_thw = jnp.zeros((1, 3), jnp.int32)
    grid = jnp.asarray(image_grid_thw, jnp.int32)
    gt, gh, gw = grid[:, 0], grid[:, 1] // merge, grid[:, 2] // merge
    n_tok = gt * gh * gw  # merged tokens per image [I]
    ends = jnp.cumsum(n_tok)
    # k-th image token in flat row-major order belongs to image searchsorted(ends, k).
    k = jnp.cumsum(is_img.reshape(-1)).reshape(bsz, seq) - 1
    img = jnp.clip(jnp.searchsorted(ends, k, side="right"), 0, grid.shape[0] - 1)
    j = k - (ends - n_tok)[img]  # index inside its image
    gw_i, gh_i = jnp.maximum(gw[img], 1), jnp.maximum(gh[img], 1)
    ti = j // (gh_i * gw_i)
    hi = (j // gw_i) % gh_i
    wi = j % gw_i
    last = j == n_tok[img] - 1
    advance = jnp.where(is_img, jnp.where(last, jnp.maximum(gh_i, gw_i), 0), real.astype(jnp.int32))
    start = jnp.cumsum(advance, axis=1) - advance  # exclusive: position where this token starts
    offs = jnp.stack([ti, hi, wi])  # [3, B, T]
    pos = start[None] + jnp.where(is_img[None], offs, 0)
    pos = jnp.where(real[None], pos, 0).astype(jnp.int32)
    n_real = jnp.sum(real, axis=1)
    max_pos = jnp.max(jnp.where(real[None], pos, -1), axis=(0, 2))
    deltas = jnp.where(n_real > 0, max_pos + 1 - n_real, 0).astype(jnp.int32)
    return pos, deltas


def text_positions(attention_mask, start=0):
    """1-D positions broadcast to 3 streams [3, B, T] for text-only rows (cumsum of the mask)."""
    pos = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0) + start
    return jnp.broadcast_to(pos[None], (3, *pos.shape)).astype(jnp.int32)
