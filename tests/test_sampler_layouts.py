"""Decode layouts agree: the per-layer (unrolled) decode equals the stacked (scanned) one, and the
shared-softmax draw + log-prob of a plain rule samples the right distribution with exact log-probs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import tiny_hf
from flax import nnx
from numerics import assert_close_to_scale

from vrft_jax import grpo
from vrft_jax.generation import sampler
from vrft_jax.generation.sampling_rules import SamplingRule
from vrft_jax.models import random_qwen2_vl

BUCKETS = dict(prompt_buckets=(32,), patch_buckets=(64,), image_buckets=(2,))
# A log-prob z_t - logsumexp(z) carries the rounding of the logits z, i.e. ulps of |z| (up to ~50
# on these rescaled models), not of |log p| (~4): reordered float32 sums (stacked vs per-layer
# weights, a dot split over 8 devices) move each logit by ~log2(64) = 6 ulps for the final
# hidden-size dot plus as much from the layers below it, and log p by at most twice that (z_t and
# the softmax-weighted mean of the z in the normaliser's gradient): 16 ulps of max |z|.
LOGP_ULPS = 16
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
N_DRAWS = 40_000


def test_plain_rule_shares_the_softmax():
    """next_tokens_and_logprobs of a plain rule: frequencies of the softmax, policy log-probs."""
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (N_DRAWS, len(PROBS)))
    logits = logits + jnp.arange(N_DRAWS, dtype=jnp.float32)[:, None] % 7  # row shifts: same probs
    rule = SamplingRule(temperature=1.0)
    assert rule.plain and not SamplingRule(temperature=0.7).plain
    tokens, logp = jax.jit(rule.next_tokens_and_logprobs)(logits, jax.random.key(1))
    freq = np.bincount(np.asarray(tokens), minlength=len(PROBS)) / N_DRAWS
    bound = 5 * np.sqrt(PROBS * (1 - PROBS) / N_DRAWS)
    assert np.all(np.abs(freq - PROBS) <= bound), (freq, PROBS)
    want = np.asarray(grpo.token_logprobs(logits, tokens))
    np.testing.assert_allclose(np.asarray(logp), want, rtol=0, atol=1e-6)


def test_per_layer_decode_equals_stacked_decode():
    """Same tokens and log-probs from the unrolled per-layer decode and the scanned stacked one
    (sampled at temperature 1 with one RNG, then greedy); the per-layer cache is L [N, K, S, D]."""
    model = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=0, **BUCKETS))
    graphdef, params = nnx.split(model)
    c = model.config
    rng = np.random.default_rng(0)
    rows = [tiny_hf.image_prompt(rng, 3, [(1, 4, 4)], 4), tiny_hf.image_prompt(rng, 5, [], 2)]
    ids, mask = tiny_hf.left_pad(rows)
    pv, grid = tiny_hf.random_pixels(rng, [(1, 4, 4)])
    stacked = sampler.Sampler(graphdef, c, unroll_decode=False, **BUCKETS)
    unrolled = sampler.Sampler(graphdef, c, unroll_decode=True, **BUCKETS)
    kw = dict(max_new_tokens=5, num_samples=2, rng=4, eos_token_ids=(-1,))

    state = unrolled.start(params, ids, mask, pv, grid, max_new_tokens=5, num_samples=2)
    assert len(state.cache["k"]) == c.num_hidden_layers
    cols = state.kv_mask.shape[1]
    assert state.cache["k"][0].shape == (4, c.num_key_value_heads, cols, c.head_dim)

    for temperature in (1.0, 0.0):
        a = stacked(params, ids, mask, pv, grid, temperature=temperature, **kw)
        b = unrolled(params, ids, mask, pv, grid, temperature=temperature, **kw)
        np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        assert_close_to_scale(a.logprobs, b.logprobs, LOGP_ULPS, scale=logits_scale(state))
        assert np.asarray(a.mask).all() and a.steps == b.steps == 5


def test_rows_split_over_the_mesh_match_one_device():
    """With parameters on an fsdp8 mesh the sampler splits the N rows (KV cache included) over the
    devices, and samples the same tokens and log-probs as on one device."""
    from vrft_jax import sharding
    from vrft_jax.models.partitioning import shard_model

    model = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=0, **BUCKETS))
    rng = np.random.default_rng(1)
    rows = [tiny_hf.image_prompt(rng, 3, [(1, 4, 4)], 4), tiny_hf.image_prompt(rng, 5, [], 2)]
    ids, mask = tiny_hf.left_pad(rows)
    pv, grid = tiny_hf.random_pixels(rng, [(1, 4, 4)])
    kw = dict(max_new_tokens=6, num_samples=4, rng=3, eos_token_ids=(-1,), temperature=1.0)
    want = sampler.generate(model, ids, mask, pv, grid, **kw)

    mesh = sharding.make_mesh((("data", 1), ("fsdp", 8), ("tensor", 1)))
    shard_model(model, mesh)
    graphdef, params = nnx.split(model)
    split = sampler.Sampler(graphdef, model.config, **BUCKETS)
    state = split.start(params, ids, mask, pv, grid, max_new_tokens=6, num_samples=4)
    cache = state.cache["k"][0]
    assert cache.shape[0] == 8 and {s.data.shape[0] for s in cache.addressable_shards} == {1}
    got = split(params, ids, mask, pv, grid, **kw)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    # Measured: 1.5e-5 on a log-prob of -3.6 (Xeon and EPYC alike) = 2.4 ulps of |logits| <= 52.
    assert_close_to_scale(got.logprobs, want.logprobs, LOGP_ULPS, scale=logits_scale(state))


def logits_scale(state) -> float:
    """max |z| of the first sampled position's logits (a SamplingState after prefill): the scale
    of the log-probs' rounding."""
    return float(np.abs(np.asarray(state.logits)).max())
