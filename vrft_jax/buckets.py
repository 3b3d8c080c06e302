"""Shape buckets (bounded compiles for variable image sizes and prompt lengths) and a trace counter.

Host-side helpers pad the processor's arrays up to the next bucket:
- prompt length T: left padding (pad id, mask 0), so real tokens stay right-aligned;
- packed patches S: zero patches appended after the last image (their own attention segment);
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


def pad_images(pixel_values, image_grid_thw, patch_buckets=None, image_buckets=None):
    """Pads packed patches [S, P] to a patch bucket and grids [I, 3] to an image-count bucket.

    Returns (pixel_values [S_b, P], image_grid_thw int32 [I_b, 3]).
    """
    pv = np.asarray(pixel_values)
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    total = int(np.prod(grid, axis=1).sum())
    if total != pv.shape[0]:
        raise ValueError(
            f"pixel_values has {pv.shape[0]} patches but image_grid_thw sums to {total} (t*h*w)"
        )
    s = bucket(pv.shape[0], patch_buckets or DEFAULT_PATCH_BUCKETS, "patch count")
    i = bucket(grid.shape[0], image_buckets or DEFAULT_IMAGE_BUCKETS, "image count")
    pv = np.pad(pv, ((0, s - pv.shape[0]), (0, 0)))
    grid = np.pad(grid, ((0, i - grid.shape[0]), (0, 0))).astype(np.int32)
    return pv, grid


# ---- Trace counter: a jitted function calls note_trace(name) in its body (runs once per compile)
# ----

_TRACES: collections.Counter = collections.Counter()


def note_trace(name: str) -> None:
    _TRACES[name] += 1


def trace_count(name: str | None = None) -> int:
    """How many times `name` (or any counted function) was traced, i.e. compiled."""
    return sum(_TRACES.values()) if name is None else _TRACES[name]
