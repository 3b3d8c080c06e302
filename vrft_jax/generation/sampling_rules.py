"""Next-token sampling rules: greedy, temperature, top-k, top-p (nucleus), with an explicit RNG.

The rules change only how the next token is *chosen*. The log-prob the GRPO ratio needs is always
that of the unmodified policy (temperature 1, no truncation), as `grpo.token_logprobs` computes it
in the training step: `SamplingRule.next_tokens_and_logprobs` returns those for the drawn tokens.

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


def categorical(rng, logits, block: int = 128):
    """One draw per row from softmax(logits [N, V]) by inverse CDF with a single uniform per row.

    Same distribution as jax.random.categorical (Gumbel-max), which draws V random numbers per row
    (N x 151936 every step dominated a CPU decode step). See `categorical_weights`.
    """
    return categorical_weights(rng, jax.nn.softmax(logits.astype(jnp.float32), axis=-1), block)


def categorical_weights(rng, weights, block: int = 128):
    """One draw per row with probability proportional to weights float32 [N, V] (>= 0, need not
    sum to 1), by inverse CDF with a single uniform per row.

    Two levels keep it to about one pass over the weights: pick a block of `block` tokens from the
    blocks' cumulative mass, then the token inside it. A token of zero weight (filtered to -inf) is
    never drawn: the first index whose cumulative mass reaches u > 0 always carries mass.
    """
    n, v = weights.shape
    probs = jnp.pad(weights, ((0, 0), (0, -v % block))).reshape(n, -1, block)  # [N, V/blk, blk]
    block_cdf = jnp.cumsum(jnp.sum(probs, axis=-1), axis=-1)  # [N, V/blk]
    u = 1.0 - jax.random.uniform(rng, (n, 1), jnp.float32)  # (0, 1]
    target = u * block_cdf[:, -1:]
    b = jnp.sum(block_cdf < target, axis=-1)  # [N] first block reaching the target
    before = jnp.where(b > 0, jnp.take_along_axis(block_cdf, (b - 1)[:, None], axis=1)[:, 0], 0.0)
    inner = jnp.cumsum(jnp.take_along_axis(probs, b[:, None, None], axis=1)[:, 0], axis=-1)
    rest = jnp.minimum(target[:, 0] - before, inner[:, -1])  # > 0; min guards rounding
    j = jnp.sum(inner < rest[:, None], axis=-1)
    return (b * block + j).astype(jnp.int32)


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

    @property
    def plain(self) -> bool:
        """Draws from the raw policy itself (temperature 1, no truncation)."""
        return self.temperature == 1.0 and self.top_k == 0 and self.top_p >= 1.0

    def get_next_tokens(self, logits, rng):
        """int32 [N] from logits [N, V]; rng a JAX key (unused when greedy)."""
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return categorical(rng, self.filtered_logits(logits))

    def next_tokens_and_logprobs(self, logits, rng):
        """(tokens int32 [N], raw-policy log-probs float32 [N]) from logits [N, V].

        The tokens are get_next_tokens's and the log-probs grpo.token_logprobs's (same arithmetic
        as log_softmax), but one exp(logits - max) pass serves both when the rule is plain: the
        draw uses those unnormalised weights (no normalised [N, V] copy, no second softmax).
        """
        lf = logits.astype(jnp.float32)
        shifted = lf - jnp.max(lf, axis=-1, keepdims=True)
        weights = jnp.exp(shifted)
        log_total = jnp.log(jnp.sum(weights, axis=-1))
        if self.plain:
            tokens = categorical_weights(rng, weights)
        else:
            tokens = self.get_next_tokens(logits, rng)
        picked = jnp.take_along_axis(shifted, tokens[:, None], axis=-1)[:, 0]
        return tokens, picked - log_total


GREEDY = SamplingRule()
