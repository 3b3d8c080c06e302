"""Qwen2.5-VL window attention as segments: the window order of the patches and the attention
inside windows, for both image layouts (packed [1, S] and per-image slots [I, Q]).

An image frame's merged tokens (2x2 patches) are cut into windows of `win` x `win` merged tokens
(win = window_size / patch_size / merge = 4 for 112 px), the last window row and column partial.
transformers reorders the patches window by window (frames in order, windows row-major, merged
tokens row-major inside a window, the 4 patches of a merged token kept together), runs every block
in that order and restores image order after the merger. `window_layout` gives each patch its place
in that order, so every window is a contiguous run of at most B = win^2 * 4 patches and
`window_attention` can attend in blocks of B queries that read only their own and the two
neighbouring key blocks (a window touching a block lies inside those three): 3 B keys per patch
instead of the whole frame. The order and the window ids are computed on device from
image_grid_thw, so one compiled program serves every image size.
"""

import jax.numpy as jnp

from vrft_jax.models.layers import attention


def window_layout(grid_thw, num: int, merge: int, win: int, slots: bool):
    """Where each patch sits, for a packed sequence of `num` patches or I slots of `num` each.

    grid_thw int [I, 3] (t, h, w in patches; rows (0, 0, 0) are padding images). Returns, each
    int32 [F, N] (F = 1 packed, I slots; N = num) in image order:
      segment: the frame (unique per frame in the row), -1 for padding patches;
      window: the window's first position in window order (unique per window), -1 for padding;
      hpos, wpos: the patch row and column inside its frame (0 for padding);
      dest: the patch's position in window order (padding patches stay in place).
    """
    grid = jnp.asarray(grid_thw, jnp.int32)
    t, h, w = grid[:, 0], grid[:, 1], grid[:, 2]
    size = t * h * w  # patches per image
    pos = jnp.arange(num, dtype=jnp.int32)[None, :]  # [1, N]
    if slots:  # image i fills the start of slot i
        img = jnp.broadcast_to(jnp.arange(grid.shape[0], dtype=jnp.int32)[:, None], (len(t), num))
        pos = jnp.broadcast_to(pos, img.shape)
        real = pos < size[img]
        start = jnp.zeros_like(pos)
        frame_base = jnp.zeros_like(t)  # segments are compared inside a slot only
    else:  # images one after the other, padding patches after the last
        ends = jnp.cumsum(size)
        found = jnp.searchsorted(ends, pos, side="right")
        real = found < grid.shape[0]
        img = jnp.minimum(found, grid.shape[0] - 1)
        start = (ends - size)[img]
        frame_base = jnp.cumsum(t) - t
    local = pos - start
    frame = jnp.maximum(h * w, 1)[img]
    frame_idx, r = local // frame, local % frame
    unit = merge * merge
    merged, within = r // unit, r % unit  # merged token (raster order in the frame), patch in it
    cols = jnp.maximum(w // merge, 1)[img]  # merged tokens per row
    rows = (h // merge)[img]
    mh, mw = merged // cols, merged % cols
    hpos = mh * merge + within // merge
    wpos = mw * merge + within % merge
    # Window (wr, wc): the full window rows above it, then the windows to its left in its row
    # (all full width, each `height` rows tall), then row-major inside it (`width` columns).
    wr, wc = mh // win, mw // win
    height = jnp.minimum(win, rows - wr * win)
    width = jnp.minimum(win, cols - wc * win)
    frame_start = start + frame_idx * frame
    first = frame_start + (wr * win * cols + wc * win * height) * unit
    dest = first + ((mh % win) * width + mw % win) * unit + within
    segment = frame_base[img] + frame_idx
    zero = jnp.zeros_like(pos)
    return (
        jnp.where(real, segment, -1),
        jnp.where(real, first, -1),
        jnp.where(real, hpos, zero),
        jnp.where(real, wpos, zero),
        jnp.where(real, dest, pos),
    )


def inverse_order(dest):
    """src int32 [F, N] with src[f, dest[f, n]] = n: window order -> image-order index."""
    rows = jnp.arange(dest.shape[0])[:, None]
    cols = jnp.broadcast_to(jnp.arange(dest.shape[1], dtype=dest.dtype)[None], dest.shape)
    return jnp.zeros_like(dest).at[rows, dest].set(cols)


def gather_rows(x, index):
    """x [F, N, ...] reordered along N by index int [F, N]."""
    idx = index.reshape(*index.shape, *([1] * (x.ndim - 2)))
    return jnp.take_along_axis(x, idx, axis=1)


def segment_mask(segment):
    """bool [F, 1, N, N]: query and key in the same segment."""
    return (segment[:, :, None] == segment[:, None, :])[:, None]


def window_attention(q, k, v, window, block: int, implementation: str):
    """Attention inside windows. q/k/v [F, N, H, D] in window order; window int [F, N] (each
    window a contiguous run of at most `block` positions; padding -1, padding sees padding).
    Returns [F, N, H, D]."""
    f, n, h, d = q.shape
    nb = -(-n // block)
    if nb <= 3:  # the blocked form would read every key anyway: one masked attention
        return attention(q, k, v, segment_mask(window), implementation)
    pad = nb * block - n

    def blocks(a, fill):  # [F, N, ...] -> [F, nb, B, ...]
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        return a.reshape(f, nb, block, *a.shape[2:])

    def neighbours(a, fill):  # [F, nb, B, ...] -> [F, nb, 3B, ...]: blocks j-1, j, j+1
        a = jnp.pad(a, [(0, 0), (1, 1)] + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        return jnp.concatenate([a[:, :-2], a[:, 1:-1], a[:, 2:]], axis=2)

    qb, wq = blocks(q, 0), blocks(window, -1)
    kn, vn = neighbours(blocks(k, 0), 0), neighbours(blocks(v, 0), 0)
    wk = neighbours(wq, -2)  # -2: the blocks beyond the ends match nothing
    mask = wq[..., :, None] == wk[..., None, :]  # [F, nb, B, 3B]
    out = attention(
        qb.reshape(f * nb, block, h, d),
        kn.reshape(f * nb, 3 * block, h, d),
        vn.reshape(f * nb, 3 * block, h, d),
        mask.reshape(f * nb, 1, block, 3 * block),
        implementation,
    )
    return out.reshape(f, nb * block, h, d)[:, :n]
