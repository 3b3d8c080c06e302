"""Qwen2-VL in Flax NNX."""

from vrft_jax.models.config import PRESETS, Qwen2VLConfig, get_preset
from vrft_jax.models.qwen2_vl import (
    Qwen2VL,
    compile_count,
    count_params,
    init_cache,
    random_qwen2_vl,
)
from vrft_jax.models.rope import get_rope_index

__all__ = [
    "PRESETS",
    "Qwen2VL",
    "Qwen2VLConfig",
    "compile_count",
    "count_params",
    "get_preset",
    "get_rope_index",
    "init_cache",
    "random_qwen2_vl",
]
