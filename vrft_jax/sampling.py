"""Next-token sampling rules: greedy, temperature, top-k, top-p (nucleus), with an explicit RNG.

The rules change only how the next token is *chosen*. The log-prob the GRPO ratio needs is always
that of the unmodified policy (temperature 1, no truncation): `policy_logprobs` below.

`SamplingRule` is a small frozen (hashable) object, so the jitted decode loop takes it as a static
argument: one compiled program per distinct rule, none per call. Order of the transforms follows
transformers' logits warpers: temperature, then top-k, then top-p.
"""

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def scale_temperature(logits, temperature: float):
    """logits [..., V] / temperature (temperature > 0)."""
    return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits, k: int):
    """Keeps the k largest logits of each row [..., V] (ties at the k-th value kept), -inf
    elsewhere. k <= 0 or k >= V: unchanged."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


def top_p_filter(logits, p: float):
    """Nucleus filter on rows [..., V]: keeps the smallest set of most likely tokens whose
    probability reaches p (a token is kept when the mass strictly before it is < p, so the top token
    always survives); -inf elsewhere. p >= 1: unchanged."""
    if p >= 1.0:
        return logits
    desc = -jnp.sort(-logits, axis=-1)  # [..., V] descending
    probs = jax.nn.softmax(desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < p
    # Kept tokens are a prefix of the sorted order: the threshold is the smallest kept logit.
    threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def policy_logprobs(logits, tokens):
    """log p(token) under the raw policy: log_softmax(logits [..., V]) at tokens [...], float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class SamplingRule:
    """How the next token is picked from float32 logits [N, V].

    temperature 0 means greedy (argmax; top_k / top_p are then irrelevant). top_k 0 and top_p 1.0
    switch those filters off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def filtered_logits(self, logits):
        """The logits the categorical draw uses (temperature, then top-k, then top-p)."""
        logits = scale_temperature(logits.astype(jnp.float32), self.temperature)
        logits = top_k_filter(logits, self.top_k)
        return top_p_filter(logits, self.top_p)

    def get_next_tokens(self, logits, rng):
        """int32 [N] from logits [N, V]; rng a JAX key (unused when greedy)."""
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(rng, self.filtered_logits(logits), axis=-1).astype(jnp.int32)


GREEDY = SamplingRule()
