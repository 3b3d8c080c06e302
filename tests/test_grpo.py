"""GRPO maths against hand-computed numbers, and the mu = 1 gradient against REINFORCE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrft_jax import grpo


def test_group_advantages_grpo_uses_unbiased_std():
    rewards = jnp.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0])
    adv = grpo.group_advantages(rewards, G=4, kind="grpo")
    s = 1.0 / (math.sqrt(2.0 / 3.0) + 1e-4)  # unbiased std of [0,1,1,2] is sqrt(2/3)
    np.testing.assert_allclose(adv, [-s, 0, 0, s, 0, 0, 0, 0], rtol=1e-6)


def test_group_advantages_dr_grpo_and_rloo():
    rewards = jnp.array([0.0, 1.0, 1.0, 2.0, 1.0, 5.0])
    np.testing.assert_allclose(
        grpo.group_advantages(rewards[:4], G=4, kind="dr_grpo"), [-1, 0, 0, 1], atol=1e-6
    )
    # rloo: r_i minus the mean of the other three: 0 - 4/3, 1 - 1, 1 - 1, 2 - 2/3.
    np.testing.assert_allclose(
        grpo.group_advantages(rewards[:4], G=4, kind="rloo"), [-4 / 3, 0, 0, 4 / 3], rtol=1e-6
    )
    np.testing.assert_allclose(
        grpo.group_advantages(rewards, G=2, kind="rloo"), [-1, 1, -1, 1, -4, 4], atol=1e-6
    )


def test_group_advantages_matches_torch():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(0).uniform(size=24).astype(np.float32)
    t = torch.tensor(r).view(-1, 8)
    want = ((t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-4)).view(-1).numpy()
    np.testing.assert_allclose(grpo.group_advantages(jnp.asarray(r), G=8), want, rtol=1e-5)


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="groups of G=3"):
        grpo.group_advantages(jnp.zeros(8), G=3)
    with pytest.raises(ValueError, match="G >= 2"):
        grpo.group_advantages(jnp.zeros(4), G=1)
    with pytest.raises(ValueError, match="grpo.advantage"):
        grpo.group_advantages(jnp.zeros(4), G=2, kind="ppo")


def test_zero_variance_groups():
    rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 2.0, 2.0])
    np.testing.assert_array_equal(grpo.zero_variance_groups(rewards, G=2), [True, False, True])


def test_token_logprobs_and_entropy():
    logits = jnp.array([[[0.0, math.log(3.0)], [5.0, 5.0]]], jnp.bfloat16)  # [N=1, C=2, V=2]
    tokens = jnp.array([[1, 0]])
    logp = grpo.token_logprobs(logits, tokens)
    assert logp.dtype == jnp.float32 and logp.shape == (1, 2)
    np.testing.assert_allclose(logp, [[math.log(0.75), math.log(0.5)]], atol=1e-2)  # bf16 input
    ent = grpo.entropy(jnp.array([[[0.0, math.log(3.0)], [5.0, 5.0]]]))
    want0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(ent, [[want0, math.log(2.0)]], rtol=1e-6)


def test_kl_estimators():
    logp = jnp.full((1, 1), math.log(0.5))
    ref = jnp.full((1, 1), math.log(0.25))
    d = math.log(0.5)  # ref - logp
    np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k1"), [[-d]], rtol=1e-6)
    np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k2"), [[0.5 * d * d]], rtol=1e-6)
    np.testing.assert_allclose(grpo.kl_estimate(logp, ref, "k3"), [[0.5 - d - 1]], rtol=1e-6)
    np.testing.assert_allclose(grpo.kl_estimate(ref, ref, "k3"), [[0.0]], atol=1e-7)


def test_clipped_surrogate_low_and_high():
    # ratios 1.5, 1.5, 0.5, 0.5, 1.25 against advantages +1, -1, -1, +1, +1 (one token each).
    ratio = jnp.array([[1.5], [1.5], [0.5], [0.5], [1.25]])
    old = jnp.zeros_like(ratio)
    adv = jnp.array([1.0, -1.0, -1.0, 1.0, 1.0])
    loss, clipped = grpo.clipped_surrogate(jnp.log(ratio), old, adv, 0.2, 0.28)
    # -min(r A, clip(r, 0.8, 1.28) A)
    np.testing.assert_allclose(loss[:, 0], [-1.28, 1.5, 0.8, -0.5, -1.25], rtol=1e-6)
    np.testing.assert_array_equal(clipped[:, 0], [True, False, True, False, False])


def test_clipped_tokens_get_no_gradient():
    old = jnp.log(jnp.array([[1.0, 1.0, 1.0]]))
    ratio = jnp.array([[1.5, 1.1, 0.5]])  # A > 0: clipped above 1.2, inside, below (not clipped)
    grad = jax.grad(lambda lp: grpo.clipped_surrogate(lp, old, jnp.array([2.0]), 0.2, 0.2)[0].sum())
    np.testing.assert_allclose(grad(jnp.log(ratio)), [[0.0, -2.2, -1.0]], rtol=1e-6)


def test_aggregations_and_micro_batch_sums():
    per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 9.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    agg = grpo.aggregate
    np.testing.assert_allclose(agg(per_token, mask, "seq_mean_token_mean"), (1.5 + 4) / 2)
    np.testing.assert_allclose(agg(per_token, mask, "token_mean"), 7 / 3, rtol=1e-6)
    np.testing.assert_allclose(agg(per_token, mask, "seq_mean_token_sum_norm"), 7 / 6, rtol=1e-6)
    np.testing.assert_allclose(
        agg(per_token, mask, "seq_mean_token_sum_norm", max_len=4), 7 / 8, rtol=1e-6
    )
    for kind in grpo.AGGREGATIONS:
        whole = agg(per_token, mask, kind)
        counts = dict(num_sequences=2, num_tokens=mask.sum())
        parts = sum(agg(per_token[i : i + 1], mask[i : i + 1], kind, **counts) for i in range(2))
        np.testing.assert_allclose(parts, whole, rtol=1e-6, err_msg=kind)


def test_grpo_loss_hand_computed():
    logp = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.5]]))
    ref = jnp.log(jnp.array([[0.25, 0.5], [0.25, 0.25]]))
    adv = jnp.array([2.0, -1.0])
    mask = jnp.array([[1, 1], [1, 0]])
    loss, aux = grpo.grpo_loss(
        logp,
        jax.lax.stop_gradient(logp),
        ref,
        adv,
        mask,
        beta=0.1,
        epsilon_low=0.2,
        epsilon_high=0.2,
    )
    k = 0.5 - math.log(0.5) - 1  # k3 at (logp 0.5, ref 0.25)
    seq0 = (-2 + 0.1 * k - 2 + 0) / 2
    seq1 = 1.0
    np.testing.assert_allclose(loss, (seq0 + seq1) / 2, rtol=1e-6)
    np.testing.assert_allclose(aux["kl"], k / 3, rtol=1e-6)
    np.testing.assert_allclose(aux["ratio"], 1.0)
    assert float(aux["clip_fraction"]) == 0.0
    with pytest.raises(ValueError, match="ref_logp is None"):
        grpo.grpo_loss(logp, logp, None, adv, mask, beta=0.1, epsilon_low=0.2, epsilon_high=0.2)


def test_grpo_loss_matches_reference_torch_formula():
    """The TRL-fork loss (sec. 3.2 of the reference notes) written in torch: value and gradient."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    N, C, G, beta = 8, 5, 4, 0.04
    logp = np.log(rng.uniform(0.05, 1.0, (N, C))).astype(np.float32)
    ref = np.log(rng.uniform(0.05, 1.0, (N, C))).astype(np.float32)
    rewards = rng.uniform(size=N).astype(np.float32)
    mask = (np.arange(C)[None] < rng.integers(1, C + 1, N)[:, None]).astype(np.float32)

    t_logp = torch.tensor(logp, requires_grad=True)
    t_ref, t_mask, t_r = torch.tensor(ref), torch.tensor(mask), torch.tensor(rewards).view(-1, G)
    t_adv = ((t_r - t_r.mean(1, keepdim=True)) / (t_r.std(1, keepdim=True) + 1e-4)).view(-1)
    t_kl = torch.exp(t_ref - t_logp) - (t_ref - t_logp) - 1
    t_ptl = -(torch.exp(t_logp - t_logp.detach()) * t_adv.unsqueeze(1) - beta * t_kl)
    t_loss = ((t_ptl * t_mask).sum(1) / t_mask.sum(1)).mean()
    t_loss.backward()

    def f(lp):
        adv = grpo.group_advantages(jnp.asarray(rewards), G)
        return grpo.grpo_loss(
            lp,
            jax.lax.stop_gradient(lp),
            jnp.asarray(ref),
            adv,
            jnp.asarray(mask),
            beta=beta,
            epsilon_low=0.2,
            epsilon_high=0.2,
        )[0]

    loss, grad = jax.value_and_grad(f)(jnp.asarray(logp))
    np.testing.assert_allclose(loss, t_loss.item(), rtol=1e-5)
    np.testing.assert_allclose(grad, t_logp.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_mu1_gradient_equals_group_baseline_reinforce():
    """A tiny softmax policy: logits[n,t] = x[n,t] @ W. With mu = 1 (and beta = 0) the gradient of
    grpo_loss w.r.t. W is the REINFORCE gradient with the group-mean baseline, written in numpy."""
    rng = np.random.default_rng(0)
    B, G, C, F, V = 2, 4, 3, 5, 6
    N = B * G
    x = rng.normal(size=(N, C, F))
    W = rng.normal(size=(F, V)) * 0.5
    tokens = rng.integers(0, V, (N, C))
    lengths = np.array([3, 2, 1, 3, 3, 1, 2, 2])
    mask = (np.arange(C)[None] < lengths[:, None]).astype(np.float64)
    rewards = np.array([1.0, 0.0, 0.5, 2.0, 0.0, 0.0, 1.0, 3.0])

    # Numpy: A = (r - group mean) / (unbiased group std + 1e-4);
    # grad = -(1/N) sum_n A_n / L_n sum_t mask x[n,t]^T (onehot(y) - softmax(x W)).
    r = rewards.reshape(B, G)
    A = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
    z = x @ W
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    dlogp_dz = np.eye(V)[tokens] - p  # [N,C,V]
    weights = (A / lengths)[:, None] * mask  # [N,C]
    want = -np.einsum("nc,ncf,ncv->fv", weights, x, dlogp_dz) / N

    def loss_fn(w):
        logp = grpo.token_logprobs(jnp.einsum("ncf,fv->ncv", x, w), jnp.asarray(tokens))
        adv = grpo.group_advantages(jnp.asarray(rewards), G)
        return grpo.grpo_loss(
            logp,
            jax.lax.stop_gradient(logp),
            None,
            adv,
            jnp.asarray(mask),
            beta=0.0,
            epsilon_low=0.2,
            epsilon_high=0.2,
        )[0]

    got = jax.grad(loss_fn)(jnp.asarray(W, jnp.float32))
    assert np.abs(want).max() > 1e-2  # the check is not vacuous
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_logprob_gap():
    a = jnp.array([[0.0, -1.0], [-2.0, -3.0]])
    b = jnp.array([[0.5, -1.0], [-2.0, 0.0]])
    gap = grpo.logprob_gap(a, b, jnp.array([[1, 1], [1, 0]]))
    np.testing.assert_allclose(gap["logprob_gap_mean_abs"], 0.5 / 3, rtol=1e-6)
    np.testing.assert_allclose(gap["logprob_gap_max_abs"], 0.5)
