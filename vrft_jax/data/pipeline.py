"""Host input pipeline on grain: shuffle per seed, shard per host, decode in worker threads.

    source -> shuffle(seed) -> this host's slice -> repeat(epochs) -> load image (workers)
           -> skip bad images (counted, logged) -> batches of `batch_size` examples
           -> optional packing (`batch_fn`, e.g. into model arrays) in a prefetch thread

Each host reads a disjoint slice of the same global permutation (`process_index::process_count`).
Iterators expose grain's `get_state()` / `set_state()`, so the position can be saved with a
checkpoint and restored exactly. A corrupt or missing image never crashes the run and is never
lost silently: it is logged with its path and counted, and the run stops with a clear error once
more than `max_bad_fraction` of the source's examples turned out bad.
"""

import io
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from vrft_jax.data.example import DataError, Example

log = logging.getLogger(__name__)


class _Bad:
    """Marker for an example whose image failed to load (kept so the main thread can count it)."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason


def load_image(example: Example) -> Example:
    """The example with `image` as a decoded RGB PIL image and `image_size` filled.

    Raises OSError/ValueError for a missing or corrupt image.
    """
    image = example.image
    if callable(image) and not isinstance(image, Image.Image):
        image = image()
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"unsupported image type {type(image).__name__}")
    image.load()  # decode now (in the worker), so truncated files fail here
    image = image.convert("RGB")
    return example.replace(image=image, image_size=example.image_size or image.size)


class BadImageCounter:
    """Counts distinct bad examples and enforces the allowed fraction of the source."""

    def __init__(self, source_size: int, max_bad_fraction: float):
        self.source_size, self.max_bad_fraction = source_size, max_bad_fraction
        self.bad: dict[str, str] = {}  # key -> reason
        self._lock = threading.Lock()

    def record(self, bad: _Bad) -> None:
        with self._lock:
            if bad.key in self.bad:
                return
            self.bad[bad.key] = bad.reason
            log.warning("skipping bad image %s: %s", bad.key, bad.reason)
            allowed = self.max_bad_fraction * self.source_size
            if len(self.bad) > allowed:
                listed = "\n  ".join(f"{k}: {r}" for k, r in list(self.bad.items())[:20])
                raise DataError(
                    f"{len(self.bad)} bad images out of {self.source_size} examples exceed "
                    f"config.data.max_bad_fraction={self.max_bad_fraction}:\n  {listed}"
                )

    @property
    def count(self) -> int:
        return len(self.bad)


def _loader(preprocess_fn):
    def load(example: Example):
        key = example.image_path or example.example_id
        try:
            example = load_image(example)
        except Exception as e:  # any decoder error means this one image is bad, not the run
            return _Bad(key, f"{type(e).__name__}: {e}")
        return preprocess_fn(example) if preprocess_fn else example

    return load


class Pipeline:
    """Batches of loaded examples from a random-access source.

    Args:
      source: `len()` and `[i] -> Example`.
      batch_size: examples per batch on this host.
      seed: shuffle seed (None = keep the source order, e.g. for evaluation).
      num_epochs: passes over the data (None = forever).
      num_workers: threads that read and decode.
      max_bad_fraction: allowed fraction of bad images of the source.
      preprocess_fn: optional `Example -> Any` run in the workers after decoding.
      batch_fn: turns a list of items into a batch (default: the list itself), e.g. the prompt
        processor's packing into model arrays; runs in a background thread.
      process_index, process_count: this host's shard (default: jax.process_index/count()).
      drop_remainder: drop a last smaller batch.
      prefetch: examples decoded ahead by the workers; prefetch_batches: batches built ahead.
    """

    def __init__(
        self,
        source: Sequence[Example],
        *,
        batch_size: int,
        seed: int | None = None,
        num_epochs: int | None = 1,
        num_workers: int = 2,
        max_bad_fraction: float = 0.01,
        preprocess_fn: Callable[[Example], Any] | None = None,
        batch_fn: Callable[[list], Any] | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        drop_remainder: bool = False,
        prefetch: int = 64,
        prefetch_batches: int = 2,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        self.bad_images = BadImageCounter(len(source), max_bad_fraction)
        ds = grain.MapDataset.source(source)
        if seed is not None:
            ds = ds.shuffle(seed=seed)
        if process_count > 1:
            ds = ds.slice(slice(process_index, None, process_count))
        self.examples_per_epoch = len(ds)
        ds = ds.repeat(num_epochs)
        ds = ds.map(_loader(preprocess_fn))
        read = grain.ReadOptions(num_threads=max(1, num_workers), prefetch_buffer_size=prefetch)
        ds = ds.to_iter_dataset(read)
        ds = ds.filter(self._keep)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
        if batch_fn is not None:
            ds = ds.map(batch_fn)
        # Batches are assembled (and packed by batch_fn) in a background thread, ahead of use.
        self.dataset = grain.experimental.ThreadPrefetchIterDataset(
            ds, prefetch_buffer_size=prefetch_batches
        )

    def _keep(self, item) -> bool:
        if isinstance(item, _Bad):
            self.bad_images.record(item)
            return False
        return True

    def __iter__(self):
        """A grain iterator: `next(it)`, `it.get_state()`, `it.set_state(state)`."""
        return iter(self.dataset)
