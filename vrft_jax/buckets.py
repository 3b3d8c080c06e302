"""Shape buckets (bounded compiles for variable image sizes and prompt lengths) and a trace counter.

Host-side helpers pad the processor's arrays up to the next bucket:
- prompt length T: left padding (pad id, mask 0), so real tokens stay right-aligned;
- images: packed patches S with zero patches appended after the last image (their own attention
  segment), or one slot of Q patches per image (see pad_images);
- image count I: grid rows (0, 0, 0) appended.

The DEFAULT_* values mirror configs/base.py (input.prompt_buckets, input.patch_buckets; a test
checks this); callers with a config pass its fields.
"""

import collections

import numpy as np

DEFAULT_PROMPT_BUCKETS = (64, 128, 256, 384, 512, 768, 1024)
DEFAULT_PATCH_BUCKETS = (256, 1024, 2048, 4096, 8192)
DEFAULT_IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket(n: int, buckets, what: str = "size") -> int:
    """Smallest bucket >= n; a clear error when n exceeds the largest."""
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    raise ValueError(
        f"{what} {n} exceeds the largest bucket {max(buckets)} (buckets {tuple(buckets)})"
    )


def length_bucket(n: int, buckets) -> int:
    """Like `bucket`, but past the largest bucket rounds up to a multiple of it (full sequences of
    prompt + completion may exceed the prompt buckets)."""
    top = max(buckets)
    return bucket(n, buckets) if n <= top else -(-n // top) * top


def pad_left(input_ids, attention_mask, length: int, pad_id: int):
    """Left-pads [B, T] ids and mask to [B, length] (length >= T)."""
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    extra = length - ids.shape[1]
    if extra < 0:
        raise ValueError(f"prompt length {ids.shape[1]} is longer than the bucket {length}")
    ids = np.pad(ids, ((0, 0), (extra, 0)), constant_values=pad_id)
    mask = np.pad(mask, ((0, 0), (extra, 0)), constant_values=0)
    return ids, mask


def pad_images(
    pixel_values, image_grid_thw, patch_buckets=None, image_buckets=None, layout: str = "auto"
):
    """Pads the processor's packed patches [S, P] and grids [I, 3] for the vision tower.

    layout "packed": patches to a patch bucket -> pixel_values [S_b, P].
    layout "slots": one slot per image, Q = the patch bucket of the largest image ->
      pixel_values [I_b, Q, P] (image i at the start of slot i, zeros after).
    layout "auto": slots when they hold no more patches than the packed form (I_b * Q <= S_b, e.g.
      images of similar sizes), so attention costs I_b * Q^2 instead of S_b^2, or when the packed
      patches exceed the largest bucket; otherwise packed.
    Either way image_grid_thw is padded to an image-count bucket: int32 [I_b, 3].
    """
    if layout not in ("auto", "packed", "slots"):
        raise ValueError(f"image layout must be auto, packed or slots, got {layout!r}")
    pv = np.asarray(pixel_values)
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    sizes = np.prod(grid, axis=1)
    if int(sizes.sum()) != pv.shape[0]:
        raise ValueError(
            f"pixel_values has {pv.shape[0]} patches but image_grid_thw sums to {int(sizes.sum())}"
            " (t*h*w)"
        )
    patch_buckets = patch_buckets or DEFAULT_PATCH_BUCKETS
    i = bucket(grid.shape[0], image_buckets or DEFAULT_IMAGE_BUCKETS, "image count")
    grid_b = np.pad(grid, ((0, i - grid.shape[0]), (0, 0))).astype(np.int32)
    slot = bucket(int(sizes.max(initial=1)), patch_buckets, "patches of one image")
    if layout == "auto":
        # Past the largest patch bucket the packed form is impossible; slots only need one image
        # to fit a bucket.
        packed = length_bucket(pv.shape[0], patch_buckets)
        layout = "slots" if i * slot <= packed or packed > max(patch_buckets) else "packed"
    if layout == "packed":
        s = bucket(pv.shape[0], patch_buckets, "patch count")
        return np.pad(pv, ((0, s - pv.shape[0]), (0, 0))), grid_b
    out = np.zeros((i, slot, pv.shape[1]), pv.dtype)
    for k, (start, size) in enumerate(zip(np.cumsum(sizes) - sizes, sizes)):
        out[k, :size] = pv[start : start + size]
    return out, grid_b


def pad_prompt_images(
    ids, mask, pixel_values, image_grid_thw, config, patch_buckets, image_buckets
):
    """`pad_images` for prompts ids / mask [B, T], checked against them: the real <|image_pad|>
    tokens must number the images' merged patches -> (pixel_values, grid) numpy, (None, None)
    without images. config: the model config (image_token_id, merge_unit)."""
    n_img_tokens = int(((ids == config.image_token_id) & (mask > 0)).sum())
    if pixel_values is None:
        if n_img_tokens:
            raise ValueError(f"{n_img_tokens} <|image_pad|> tokens but no pixel_values given")
        return None, None
    pv, grid = pad_images(pixel_values, image_grid_thw, patch_buckets, image_buckets)
    expected = int(np.prod(grid, axis=1).sum()) // config.merge_unit
    if n_img_tokens != expected:
        raise ValueError(
            f"{n_img_tokens} <|image_pad|> tokens but image_grid_thw gives {expected} image "
            "features"
        )
    return pv, grid


# ---- Trace counter: a jitted function calls note_trace(name) in its body (runs once per compile)
# ----

_TRACES: collections.Counter = collections.Counter()


def note_trace(name: str) -> None:
    _TRACES[name] += 1


def trace_count(name: str | None = None) -> int:
    """How many times `name` (or any counted function) was traced, i.e. compiled."""
    return sum(_TRACES.values()) if name is None else _TRACES[name]
