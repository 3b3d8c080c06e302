"""Data sources for Visual-RFT tasks and the host pipeline that feeds them.

A source is a random-access sequence of `Example`s (`len(source)`, `source[i]`) with a fixed order;
images may still be undecoded (a path, bytes, or an array). `vrft_jax.data.pipeline.Pipeline`
shuffles per seed, shards over hosts, decodes images in worker threads and skips bad images.
`make_source(config.data, role, seed)` builds the source a config names.
"""

from vrft_jax.data.example import DataError, Example
from vrft_jax.data.factory import make_source
from vrft_jax.data.pipeline import Pipeline, load_image

__all__ = ["DataError", "Example", "Pipeline", "load_image", "make_source"]
