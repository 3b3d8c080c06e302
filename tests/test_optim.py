"""AdamW schedule, clipping, weight-decay mask, freezing by regex and non-finite skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from vrft_jax import optim


def _config(**overrides):
    c = base.get_config().optim
    for k, v in overrides.items():
        c[k] = v
    return c


def _step(tx, params, grads):
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def test_schedules_hand_computed():
    lin = optim.make_schedule(1e-3, "linear", warmup_steps=2, total_updates=10)
    np.testing.assert_allclose([lin(s) for s in (0, 1, 2, 6, 10, 12)], [0, 5e-4, 1e-3, 5e-4, 0, 0])
    cos = optim.make_schedule(1e-3, "cosine", warmup_steps=0, total_updates=10)
    np.testing.assert_allclose([cos(0), cos(5), cos(10)], [1e-3, 5e-4, 0], atol=1e-10)
    const = optim.make_schedule(1e-3, "constant", warmup_steps=4, total_updates=10)
    np.testing.assert_allclose([const(1), const(4), const(9)], [2.5e-4, 1e-3, 1e-3])
    with pytest.raises(ValueError, match="optim.schedule"):
        optim.make_schedule(1e-3, "step", 0, 10)


def test_first_step_clip_and_weight_decay_mask():
    # eps = 1 makes Adam's first step depend on the gradient's scale, so clipping is visible:
    # update = -lr * (g / (|g| + 1) + wd * w), wd only on matrices.
    params = {"w": jnp.full((1, 2), 2.0), "b": jnp.zeros(2)}
    grads = {"w": jnp.array([[3.0, 4.0]]), "b": jnp.array([0.0, 0.0])}  # global norm 5
    cfg = _config(lr=0.1, schedule="constant", eps=1.0, weight_decay=0.5, grad_clip=1.0)
    tx, sched = optim.make_optimizer(cfg, 10, params)
    new, _ = _step(tx, params, grads)
    g = np.array([0.6, 0.8])  # clipped to norm 1
    np.testing.assert_allclose(new["w"][0], 2.0 - 0.1 * (g / (g + 1.0) + 0.5 * 2.0), rtol=1e-6)
    np.testing.assert_allclose(new["b"], [0.0, 0.0])
    assert float(sched(3)) == pytest.approx(0.1)

    tx, _ = optim.make_optimizer(_config(lr=0.1, eps=1.0, grad_clip=0.0), 10, params)
    new, _ = _step(tx, params, grads)  # no clip, no decay; step 0 of linear decay has the full lr
    np.testing.assert_allclose(new["w"][0], 2.0 - 0.1 * np.array([3 / 4, 4 / 5]), rtol=1e-6)


def test_freeze_by_regex_zero_updates_and_no_state():
    params = {"visual": {"w": jnp.ones((2, 2))}, "llm": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx, _ = optim.make_optimizer(_config(lr=0.1, freeze="^visual/"), 10, params)
    new, state = _step(tx, params, grads)
    np.testing.assert_array_equal(new["visual"]["w"], params["visual"]["w"])
    assert float(jnp.abs(new["llm"]["w"] - 1.0).min()) > 0.05
    # Adam moments exist for the 2 trainable leaves only (mu + nu = 2 * 6 numbers).
    adam = optax.tree_utils.tree_get(state, "mu")
    assert sum(x.size for x in jax.tree.leaves(adam)) == 6

    with pytest.raises(ValueError, match="matches no parameter path"):
        optim.make_optimizer(_config(freeze="^vision/"), 10, params)
    with pytest.raises(ValueError, match="freezes every parameter"):
        optim.make_optimizer(_config(freeze="^(visual|llm)/"), 10, params)


def test_freeze_paths_of_an_nnx_state():
    class Toy(nnx.Module):
        def __init__(self, rngs):
            self.visual = nnx.Linear(2, 2, rngs=rngs)
            self.llm = nnx.Linear(2, 2, rngs=rngs)

    state = nnx.state(Toy(nnx.Rngs(0)), nnx.Param)
    paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == ["llm/bias", "llm/kernel", "visual/bias", "visual/kernel"]
    tx, _ = optim.make_optimizer(_config(lr=0.1, freeze="^visual/"), 10, state)
    # The optimizer takes the pure dict of the state, as the train state holds it.
    params = nnx.to_pure_dict(state)
    new, _ = _step(tx, params, jax.tree.map(jnp.ones_like, params))
    np.testing.assert_array_equal(new["visual"]["kernel"], params["visual"]["kernel"])
    assert not np.allclose(new["llm"]["kernel"], params["llm"]["kernel"])
    # The same regex as an nnx filter selects the same Variables.
    model = Toy(nnx.Rngs(0))
    frozen = nnx.state(model, nnx.All(nnx.Param, optim.frozen_filter("^visual/")))
    assert sorted(frozen.keys()) == ["visual"] and sorted(frozen["visual"].keys()) == [
        "bias",
        "kernel",
    ]
    assert len(jax.tree.leaves(nnx.state(model, optim.frozen_filter("")))) == 0


def test_nonfinite_updates_are_skipped_and_counted():
    params = {"w": jnp.ones((2, 2))}
    tx, _ = optim.make_optimizer(_config(lr=0.1), 10, params)
    state = tx.init(params)
    bad = {"w": jnp.array([[1.0, jnp.nan], [1.0, 1.0]])}
    good = {"w": jnp.ones((2, 2))}
    for grads, want in ((bad, (1, 1)), (bad, (2, 2)), (good, (0, 2))):
        updates, state = tx.update(grads, state, params)
        new = optax.apply_updates(params, updates)
        assert tuple(int(x) for x in optim.nonfinite_counts(state)) == want
        assert np.array_equal(new["w"], params["w"]) == (grads is bad)
    # A non-finite loss with finite gradients is skipped too.
    updates, state = tx.update(optim.mark_nonfinite(jnp.inf, good), state, params)
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], params["w"])
    assert int(optim.nonfinite_counts(state)[0]) == 1


def test_mu_dtype_stores_the_first_moment_in_bf16():
    """optim.mu_dtype="bfloat16": the first moment in bf16 (memory), the second and the float32
    master weights unchanged; "" keeps both moments in the parameters' dtype."""
    params = {"w": jnp.full((4, 4), 0.02, jnp.float32), "b": jnp.zeros((4,), jnp.float32)}
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 1e-3, x.dtype), params)
    for mu_dtype, want in (("", jnp.float32), ("bfloat16", jnp.bfloat16)):
        tx, _ = optim.make_optimizer(_config(lr=1e-6, mu_dtype=mu_dtype), 10, params)
        new, state = _step(tx, params, grads)
        mu = optax.tree_utils.tree_get(state, "mu")
        nu = optax.tree_utils.tree_get(state, "nu")
        assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(want)}
        assert {x.dtype for x in jax.tree.leaves(nu)} == {jnp.dtype(jnp.float32)}
        assert new["w"].dtype == jnp.float32
        # First step: w - lr * g / (|g| + eps) = 0.02 - 1e-6 (float32 resolves it).
        np.testing.assert_allclose(new["w"], 0.02 - 1e-6, rtol=0, atol=1e-9)
