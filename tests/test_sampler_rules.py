"""Sampling rules draw from the right distribution (frequencies on a fixed toy distribution)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrft_jax.generation.sampling_rules import (
    SamplingRule,
    categorical,
    top_k_filter,
    top_p_filter,
)

PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
N_DRAWS = 40_000


def _frequencies(rule, seed=0):
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (N_DRAWS, len(PROBS)))
    tokens = np.asarray(rule.get_next_tokens(logits, jax.random.key(seed)))
    return np.bincount(tokens, minlength=len(PROBS)) / N_DRAWS


def _check(freq, expected):
    """Each frequency within 5 standard errors of its probability; excluded tokens never drawn."""
    expected = np.asarray(expected) / np.sum(expected)
    bound = 5 * np.sqrt(expected * (1 - expected) / N_DRAWS)
    assert np.all(freq[expected == 0] == 0), freq
    assert np.all(np.abs(freq - expected) <= bound), (freq, expected, bound)


def test_temperature_one_samples_the_softmax():
    _check(_frequencies(SamplingRule(temperature=1.0)), PROBS)


def test_temperature_sharpens_and_flattens():
    _check(_frequencies(SamplingRule(temperature=0.5), 1), PROBS**2)
    _check(_frequencies(SamplingRule(temperature=2.0), 2), PROBS**0.5)


def test_top_k_keeps_the_k_most_likely():
    _check(_frequencies(SamplingRule(temperature=1.0, top_k=2), 3), [0.4, 0.25, 0, 0, 0, 0])


def test_top_p_keeps_the_nucleus():
    # Mass before each token: 0, .40, .65, .80 -> with p = 0.7 the first three are kept.
    _check(_frequencies(SamplingRule(temperature=1.0, top_p=0.7), 4), [0.4, 0.25, 0.15, 0, 0, 0])
    # A tiny p always keeps the most likely token.
    _check(_frequencies(SamplingRule(temperature=1.0, top_p=1e-3), 5), [1, 0, 0, 0, 0, 0])


def test_temperature_then_top_k_then_top_p():
    # T = 0.5 squares the probabilities; top-4 of those renormalised: .627 .245 .088 .039, mass
    # before: 0 .627 .873 .961 -> top_p 0.9 keeps three.
    rule = SamplingRule(temperature=0.5, top_k=4, top_p=0.9)
    _check(_frequencies(rule, 6), [0.16, 0.0625, 0.0225, 0, 0, 0])


def test_categorical_across_blocks():
    """The two-level inverse-CDF draw over a vocabulary of many blocks (and a partial last one)."""
    vocab, where = 1000, np.array([0, 127, 128, 500, 999])  # block edges and the padded tail
    logits = np.full(vocab, -np.inf, np.float32)
    logits[where] = np.log(PROBS[:5])
    draws = categorical(jax.random.key(7), jnp.broadcast_to(jnp.asarray(logits), (N_DRAWS, vocab)))
    freq = np.bincount(np.asarray(draws), minlength=vocab) / N_DRAWS
    expected = np.zeros(vocab)
    expected[where] = PROBS[:5]
    _check(freq, expected)


def test_greedy_and_filters_on_rows():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 3.0 - 1e-3], [5.0, -1.0, 4.0, 4.5]])
    assert SamplingRule().get_next_tokens(logits, None).tolist() == [1, 0]
    kept = np.isfinite(np.asarray(top_k_filter(logits, 2)))
    assert kept.tolist() == [[False, True, False, True], [True, False, False, True]]
    assert np.array_equal(np.asarray(top_p_filter(logits, 1.0)), np.asarray(logits))


def test_logprobs_ignore_the_rule():
    """A truncating, tempered rule picks tokens its own way, but the log-probs it returns are those
    of the raw policy: log softmax(logits) at the drawn token, with no temperature or top-k."""
    logits = jax.random.normal(jax.random.key(0), (64, 7)) * 3
    rule = SamplingRule(temperature=0.5, top_k=2)
    tokens, logp = rule.next_tokens_and_logprobs(logits, jax.random.key(1))
    raw = np.log(np.asarray(jax.nn.softmax(logits)))  # [64, 7]
    top2 = np.argsort(-np.asarray(logits), axis=-1)[:, :2]
    assert all(t in row for t, row in zip(np.asarray(tokens), top2))
    want = raw[np.arange(64), np.asarray(tokens)]
    # float32 log-softmax of logits of size ~10: a few ulps of 10
    np.testing.assert_allclose(np.asarray(logp), want, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0)])
def test_bad_settings_raise(kw):
    with pytest.raises(ValueError, match="sampling"):
        SamplingRule(**kw)
