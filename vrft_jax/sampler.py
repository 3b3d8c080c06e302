"""The public sampler entry points, kept at their old path: `vrft_jax.sampler.generate`.

The code lives in vrft_jax.generation (sampler: host side; decode_loop: the jitted programs;
sampling_rules: the next-token draw).
"""

from vrft_jax.generation.sampler import (
    EOS_TOKEN_IDS,
    PAD_TOKEN_ID,
    SampleOutput,
    Sampler,
    compile_count,
    eos_array,
    generate,
    generate_with_state,
    get_sampler,
    row_sharding,
)
from vrft_jax.generation.sampling_rules import SamplingRule

__all__ = [
    "EOS_TOKEN_IDS",
    "PAD_TOKEN_ID",
    "SampleOutput",
    "Sampler",
    "SamplingRule",
    "compile_count",
    "eos_array",
    "generate",
    "generate_with_state",
    "get_sampler",
    "row_sharding",
]
