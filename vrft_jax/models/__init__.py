"""Qwen-VL models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL dense) in Flax NNX."""

from vrft_jax.models.config import (
    PRESETS,
    SUPPORTED_MODEL_TYPES,
    Qwen2VLConfig,
    QwenVLConfig,
    get_preset,
)
from vrft_jax.models.qwen2_vl import (
    Qwen2VL,
    QwenVL,
    compile_count,
    count_params,
    init_cache,
    random_qwen2_vl,
)
from vrft_jax.models.rope import get_rope_index

__all__ = [
    "PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "Qwen2VL",
    "Qwen2VLConfig",
    "QwenVL",
    "QwenVLConfig",
    "compile_count",
    "count_params",
    "get_preset",
    "get_rope_index",
    "init_cache",
    "random_qwen2_vl",
]
