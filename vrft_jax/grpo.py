"""GRPO maths as small pure functions: advantages, log-probs, KL, clipped surrogate, aggregation.

Shape letters: N = B*G sequences (the G samples of a prompt are consecutive rows), G samples per
prompt, C completion length, V vocabulary. `mask [N,C]` is 1 on completion tokens (up to and
including the first EOS) and 0 on padding. Everything returned is float32.

The reference (Visual-RFT's TRL fork) is the special case: advantage "grpo", kl "k3", beta 0.04,
aggregation "seq_mean_token_mean", mu = 1 (old_logp = stop_gradient(logp), so the ratio is 1 and the
gradient is the plain group-baseline policy gradient).
"""

import jax
import jax.numpy as jnp

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm")


def _check(kind, allowed, what):
    if kind not in allowed:
        raise ValueError(f"grpo.py: unknown {what} {kind!r}; expected one of {allowed}")


def _groups(rewards, G):
    """rewards [N] -> [N/G, G] (float32), checking that G divides N."""
    N = rewards.shape[0]
    if G < 1 or N % G:
        raise ValueError(f"grpo.py: {N} rewards do not split into groups of G={G}")
    return jnp.asarray(rewards, jnp.float32).reshape(N // G, G)


def group_advantages(rewards, G, kind="grpo", eps=1e-4):
    """Advantage of each sample relative to the other samples of its prompt.

    rewards [N] -> advantages [N], groups are consecutive runs of G rows.
      "grpo":    (r - mean) / (std + eps), std unbiased (divides by G - 1) like torch.std's default,
                 which the reference uses; eps = 1e-4 as in the reference.
      "dr_grpo": r - mean (Dr. GRPO: no std scaling, which over-weights near-uniform groups).
      "rloo":    r - mean of the other G - 1 samples = G / (G - 1) * (r - mean).
    """
    _check(kind, ADVANTAGES, "grpo.advantage")
    r = _groups(rewards, G)
    if kind != "dr_grpo" and G < 2:
        raise ValueError(f"grpo.py: advantage {kind!r} needs G >= 2 (got G={G})")
    centred = r - r.mean(axis=1, keepdims=True)
    if kind == "grpo":
        adv = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    elif kind == "rloo":
        adv = centred * (G / (G - 1))
    else:
        adv = centred
    return adv.reshape(-1)


def zero_variance_groups(rewards, G):
    """rewards [N] -> bool [N/G]: True where all G rewards of a prompt are equal (no signal)."""
    r = _groups(rewards, G)
    return jnp.all(r == r[:, :1], axis=1)


def token_logprobs(logits, tokens):
    """log pi(token) per position. logits [N,C,V] (any float dtype), tokens int [N,C] -> [N,C] f32.

    logits[:, t] must be the prediction of tokens[:, t] (already shifted by the caller).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits):
    """Entropy of the next-token distribution. logits [N,C,V] -> [N,C] f32 (nats)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def kl_estimate(logp, ref_logp, kind="k3"):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi. [N,C], [N,C] -> [N,C].

    With d = ref_logp - logp: k1 = -d, k2 = d^2 / 2, k3 = exp(d) - d - 1 (the reference's, >= 0).
    """
    _check(kind, KL_ESTIMATORS, "grpo.kl_estimator")
    d = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d * d
    return jnp.exp(d) - d - 1.0


def clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high):
    """PPO-style clipped policy-gradient loss per token, with separate low/high clip (DAPO).

    logp, old_logp [N,C], advantages [N] -> (loss [N,C], clipped bool [N,C]).
    ratio = exp(logp - old_logp);
    loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A).
    `clipped` marks tokens whose gradient the clip removes: ratio < 1 - eps_low with A < 0, or
    ratio > 1 + eps_high with A > 0. With old_logp = stop_gradient(logp) (mu = 1) the ratio is 1,
    nothing is clipped and the gradient is -A * grad(logp).
    """
    ratio = jnp.exp(logp.astype(jnp.float32) - old_logp.astype(jnp.float32))
    adv = advantages.astype(jnp.float32)[:, None]
    unclipped = ratio * adv
    clipped_obj = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    loss = -jnp.minimum(unclipped, clipped_obj)
    clipped = ((ratio < 1.0 - epsilon_low) & (adv < 0)) | ((ratio > 1.0 + epsilon_high) & (adv > 0))
    return loss, clipped


def aggregate(
    per_token, mask, kind="seq_mean_token_mean", max_len=None, num_sequences=None, num_tokens=None
):
    """Reduce a per-token loss [N,C] under mask [N,C] to a scalar.

      "seq_mean_token_mean":     mean over sequences of each sequence's token mean (reference).
      "token_mean":              sum over all tokens / number of tokens (DAPO).
      "seq_mean_token_sum_norm": sum over all tokens / (N * max_len) (Dr. GRPO); max_len
                                 defaults to C.
    Gradient accumulation: pass the whole batch's `num_sequences` and `num_tokens` (mask sum) and
    sum the micro-batch results; the sum then equals the loss of the whole batch at once.
    """
    _check(kind, AGGREGATIONS, "grpo.loss_aggregation")
    mask = mask.astype(jnp.float32)
    masked = per_token.astype(jnp.float32) * mask
    n_seq = per_token.shape[0] if num_sequences is None else num_sequences
    if kind == "seq_mean_token_mean":
        seq_means = masked.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        return seq_means.sum() / n_seq
    if kind == "token_mean":
        n_tok = mask.sum() if num_tokens is None else num_tokens
        return masked.sum() / jnp.maximum(n_tok, 1.0)
    length = per_token.shape[1] if max_len is None else max_len
    return masked.sum() / (n_seq * length)


def masked_mean(x, mask):
    """Mean of x [N,C] over the tokens where mask [N,C] is 1 (0 when the mask is empty)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(mask.sum(), 1.0)


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    *,
    beta,
    epsilon_low,
    epsilon_high,
    kl_estimator="k3",
    aggregation="seq_mean_token_mean",
    max_len=None,
    num_sequences=None,
    num_tokens=None,
):
    """The GRPO objective: clipped surrogate + beta * KL to the reference, aggregated.

    logp [N,C] (carries the gradient), old_logp [N,C] (pass stop_gradient(logp) when mu = 1),
    ref_logp [N,C] or None (only when beta == 0), advantages [N], mask [N,C].
    Returns (loss scalar, aux) where aux holds token means over this batch: "kl", "clip_fraction",
    "clip_low_fraction", "clip_high_fraction", "ratio", "pg_loss".
    """
    if ref_logp is None and beta != 0:
        raise ValueError(f"grpo.py: beta={beta} needs reference log-probs (ref_logp is None)")
    pg, clipped = clipped_surrogate(logp, old_logp, advantages, epsilon_low, epsilon_high)
    per_token = pg
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_estimator)
        if beta != 0:
            per_token = pg + beta * kl
    else:
        kl = jnp.zeros_like(pg)
    counts = dict(max_len=max_len, num_sequences=num_sequences, num_tokens=num_tokens)
    loss = aggregate(per_token, mask, aggregation, **counts)
    ratio = jnp.exp(logp.astype(jnp.float32) - old_logp.astype(jnp.float32))
    positive = (advantages > 0)[:, None]
    aux = {
        "kl": masked_mean(jax.lax.stop_gradient(kl), mask),
        "clip_fraction": masked_mean(clipped, mask),
        "clip_low_fraction": masked_mean(clipped & ~positive, mask),
        "clip_high_fraction": masked_mean(clipped & positive, mask),
        "ratio": masked_mean(jax.lax.stop_gradient(ratio), mask),
        "pg_loss": jax.lax.stop_gradient(aggregate(pg, mask, aggregation, **counts)),
    }
    return loss, aux


def logprob_gap(sampler_logp, trainer_logp, mask):
    """Drift between the sampler's and the trainer's log-probs of the same tokens. [N,C] x2 -> dict.

    Non-zero gaps come from numerics (bf16, kernels, cache vs full forward); a large one means the
    rollout is off-policy and the mu = 1 ratio assumption is wrong.
    """
    diff = trainer_logp.astype(jnp.float32) - sampler_logp.astype(jnp.float32)
    mask = mask.astype(bool)
    return {
        "logprob_gap_mean_abs": masked_mean(jnp.abs(diff), mask),
        "logprob_gap_max_abs": jnp.max(jnp.where(mask, jnp.abs(diff), 0.0)),
    }
