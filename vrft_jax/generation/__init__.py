"""Generation: prompts -> sampled completions with their raw-policy log-probs.

- `sampler`: host side. Shape buckets, padding, the compiled programs and the public `generate`.
- `decode_loop`: the jitted programs: `prefill` (images encoded once, KV cache forked G times)
  and `decode` (the `lax.while_loop` that samples until C tokens or every row has stopped).
- `sampling_rules`: how the next token is drawn (greedy, temperature, top-k, top-p).
"""

from vrft_jax.generation.sampler import (
    SampleOutput,
    Sampler,
    compile_count,
    generate,
    generate_with_state,
    get_sampler,
)
from vrft_jax.generation.sampling_rules import SamplingRule

__all__ = [
    "SampleOutput",
    "Sampler",
    "SamplingRule",
    "compile_count",
    "generate",
    "generate_with_state",
    "get_sampler",
]
