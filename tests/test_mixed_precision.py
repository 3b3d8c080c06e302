"""Mixed precision as the paper configs run it: float32 master weights and AdamW state, bf16
compute (configs/common.reference_training), lr 1e-6.

- a few AdamW steps move essentially every decoder weight (bf16 master weights, the configs'
  setting before, kept only 2% of the updates: a 1e-6 step is below half the bf16 spacing of a
  weight near 0.02), and the bf16-compute step follows the float32-compute one;
- at step 0 the frozen reference (model_setup.reference_params) and the policy give bit-identical
  log-probs on the trainer's update path: KL exactly 0, ratio exactly 1;
- the start-up warning for bf16 master weights, and the checks of the dtype fields.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_train_step as harness
import tiny_hf
from flax import nnx

from configs import base, common
from vrft_jax import model_setup, optim, sharding, steps
from vrft_jax.models import get_preset, random_qwen2_vl

STEPS = 3


def paper_config():
    """configs/base.py + the paper's settings (dtypes, AdamW, lr 1e-6, beta), tiny batch."""
    c = base.get_config()
    common.reference_training(c, "2b")
    c.grpo.G, c.grpo.micro_batch_size, c.sft.micro_batch_size = harness.G, 4, 4
    assert (c.model.master_dtype, c.model.compute_dtype) == ("float32", "bfloat16")
    assert c.optim.lr == 1e-6 and c.optim.eps == 1e-8
    return c


def tiny_params(master, compute, rescale=False):
    config = get_preset("tiny", vocab_size=512, param_dtype=master, compute_dtype=compute,
                        **harness.IDS)  # fmt: skip
    model = random_qwen2_vl(config, seed=1)  # kernels N(0, 0.02) like a real model's
    if rescale:  # norm scales 1 + 0.1 N(0, 1) and nonzero biases: no value is bf16-exact
        tiny_hf.rescale_params_(model, seed=3)
    return nnx.split(model, nnx.Param)


def build(config, master, compute, rescale=False):
    graphdef, params = tiny_params(master, compute, rescale)
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    tx, schedule = optim.make_optimizer(config.optim, 10, params)
    state, shardings = steps.make_train_state(params, tx, mesh, ())
    return graphdef, mesh, state, steps.TrainSteps(graphdef, config, tx, schedule, shardings)


def train(config, kind, master, compute, num_steps=STEPS):
    """num_steps updates on one fixed batch -> (initial params, final params), host float32."""
    _, mesh, state, fns = build(config, master, compute)
    before = jax.device_get(state["params"])
    batch = harness.make_batch()
    if kind == "sft":
        batch = {k: batch[k] for k in (*steps.PROMPT_KEYS, "completion_ids", "completion_mask")}
    update = fns.update_sft if kind == "sft" else fns.update_grpo
    for _ in range(num_steps):
        state, metrics = update(state, steps.place_batch(batch, mesh))
    assert steps.host_metrics(metrics)["nonfinite_total"] == 0
    f32 = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float32), t)  # noqa: E731
    return f32(before), f32(jax.device_get(state["params"]))


def decoder_leaves(params):
    return jax.tree.leaves(params["language_model"])


def changed_fraction(before, after, among):
    """Fraction of the decoder weights in `among` (bool leaves) whose value changed."""
    moved = [(a != b) & m for a, b, m in zip(decoder_leaves(after), decoder_leaves(before), among)]
    return sum(int(x.sum()) for x in moved) / sum(int(m.sum()) for m in among)


@pytest.fixture(scope="module")
def float32_runs():
    """The float32-compute runs: which weights have a gradient (they move), and the updates."""
    config = paper_config()
    return {kind: train(config, kind, "float32", "float32") for kind in ("sft", "grpo")}


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_paper_dtypes_move_every_weight_at_lr_1e6(kind, float32_runs):
    config = paper_config()
    f_before, f_after = float32_runs[kind]
    has_grad = [a != b for a, b in zip(decoder_leaves(f_after), decoder_leaves(f_before))]
    assert sum(int(m.sum()) for m in has_grad) > 0.9 * sum(m.size for m in has_grad)
    before, after = train(config, kind, config.model.master_dtype, config.model.compute_dtype)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(f_before)):
        np.testing.assert_array_equal(a, b)  # the same float32 start
    fraction = changed_fraction(before, after, has_grad)
    print(f"{kind}: float32 master + bf16 compute, lr 1e-6: {fraction:.4f} of the weights moved")
    assert fraction >= 0.99

    # The update follows the float32-compute run's. Adam's first steps move each weight by
    # about lr * sign(gradient), so the two updates can differ only where the bf16 gradient's
    # sign differs from the float32 one's, i.e. for gradients within bf16 rounding of 0. bf16
    # keeps 8 significant bits (relative rounding 2^-9 = 0.2% per operation); a handful of
    # roundings in series in the 2-layer forward and backward leave a few % relative error per
    # gradient element, so at most a few % of the elements (those with the smallest gradients)
    # may move the other way. 5% bounds that; the L2 distance of the updates is then below
    # 2 * sqrt(0.05) = 0.45 of the update's norm, and the two updates' cosine above 0.9.
    update = np.concatenate([(a - b).ravel() for a, b in zip(decoder_leaves(after),
                                                              decoder_leaves(before))])  # fmt: skip
    want = np.concatenate([(a - b).ravel() for a, b in zip(decoder_leaves(f_after),
                                                            decoder_leaves(f_before))])  # fmt: skip
    moved = want != 0
    disagree = float(np.mean(np.sign(update[moved]) != np.sign(want[moved])))
    cosine = float(update @ want / (np.linalg.norm(update) * np.linalg.norm(want)))
    print(f"{kind}: sign disagreement {disagree:.4f}, cosine {cosine:.4f}")
    assert disagree <= 0.05
    assert cosine >= 0.9
    # Each step moves a weight by at most about lr (Adam's normalised step, clipped gradients).
    assert np.abs(update).max() <= STEPS * config.optim.lr * 1.5


def test_bf16_master_weights_lose_the_updates():
    """The defect the float32 masters fix, on the same path: bf16 master weights (what the paper
    configs stored) keep only a few % of the lr 1e-6 updates; the start-up warning says so."""
    config = paper_config()
    before, after = train(config, "sft", "bfloat16", "bfloat16")
    every = [np.ones(x.shape, bool) for x in decoder_leaves(before)]
    fraction = changed_fraction(before, after, every)
    print(f"bf16 master weights, lr 1e-6: {fraction:.4f} of the weights moved")
    assert fraction < 0.1
    _, params = tiny_params("bfloat16", "bfloat16")
    message = model_setup.master_precision_warning(params, config.optim.lr)
    assert message and "model.master_dtype=float32" in message
    assert model_setup.stuck_fraction(params, 1e-6) > 0.9
    # float32 master weights: no warning, and a 1e-6 step moves every weight below |w| = 8.
    _, params32 = tiny_params("float32", "bfloat16")
    assert model_setup.master_precision_warning(params32, config.optim.lr) is None
    assert model_setup.stuck_fraction(params32, 1e-6) == 0.0


@pytest.mark.parametrize("master,compute", [("float32", "float32"), ("float32", "bfloat16")])
def test_step0_reference_matches_the_policy(master, compute):
    """The reference is the initial weights cast to the compute dtype exactly as each step casts
    the policy's, and the trainer's update path (train.grpo_updates) takes every log-prob value
    the loss compares from one program: at step 0 the KL is exactly 0 and the ratio exactly 1
    (mu = 1, the paper's; test_train_step checks the first of mu = 2 updates). The norm scales
    and biases are not bf16-exact here, so a reference rounded any other way (a bf16 copy under
    float32 compute, as the old grpo.ref_dtype default made) would differ on every token. KL
    estimator k2 = d^2 / 2: zero only where d = 0. Before the values came from one program, the
    update's own forward (compiled with other fusions, for the backward) gave a float32 step-0
    KL of 1.8e-11 (log-probs up to ~30 ulps apart)."""
    from vrft_jax import train
    from vrft_jax.metrics import Timer

    config = paper_config()
    config.model.master_dtype, config.model.compute_dtype = master, compute
    config.grpo.kl_estimator = "k2"
    graphdef, mesh, state, fns = build(config, master, compute, rescale=True)
    ref = model_setup.reference_params(config, state["params"])
    leaves = jax.tree.leaves(ref)
    assert {x.dtype for x in leaves} == {jnp.dtype(compute)}
    assert all(  # a copy, never an alias of the donated train state
        r.unsafe_buffer_pointer() != p.unsafe_buffer_pointer()
        for r, p in zip(leaves, jax.tree.leaves(state["params"]))
    )
    batch = steps.place_batch(harness.make_batch(), mesh)
    batch.pop("ref_logps")
    state, updates = train.grpo_updates(config, state, batch, fns, ref, Timer())
    np.testing.assert_array_equal(np.asarray(batch["ref_logps"]), np.asarray(batch["policy_logps"]))
    (metrics,) = updates
    print(f"{master} master, {compute} compute: step-0 kl {metrics['kl']!r}, ratio "
          f"{metrics['ratio']!r}, clip {metrics['clip_fraction']}")  # fmt: skip
    assert metrics["kl"] == 0.0 and metrics["ratio"] == 1.0 and metrics["clip_fraction"] == 0.0
    assert metrics["grad_norm"] > 0


def test_dtype_fields_are_checked():
    config = base.get_config()
    config.model.master_dtype = "float16"
    with pytest.raises(ValueError, match="config.model.master_dtype='float16'"):
        model_setup.build_model(config)


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("beta,mu", [(0.04, 1), (0.0, 2), (0.0, 1)])
def test_exact_logprob_values_costs_one_forward_per_update(exact, beta, mu, monkeypatch):
    """grpo.exact_logprob_values: the extra log-prob forwards run only when asked for and only
    when the loss compares log-probs (beta != 0 or mu > 1); old log-probs are computed either way
    when mu > 1. Counted on stand-in programs (no compile): the plumbing, not the numerics."""
    import types

    from vrft_jax import train
    from vrft_jax.metrics import Timer

    config = base.get_config()
    config.grpo.exact_logprob_values, config.grpo.beta, config.grpo.mu = exact, beta, mu
    calls, seen = [], []

    def logprobs(params, batch):
        calls.append(params)
        return jnp.zeros((2, 3))

    def update_grpo(state, batch):
        seen.append(sorted(k for k in batch if k.endswith("logps")))
        return state, {}

    fns = types.SimpleNamespace(logprobs=logprobs, update_grpo=update_grpo)
    ref = "ref" if beta else None
    monkeypatch.setattr(train.steps, "host_metrics", lambda m: m)
    train.grpo_updates(config, {"params": "policy"}, {}, fns, ref, Timer())
    compare = beta != 0 or mu > 1
    want = (beta != 0) + (mu if exact and compare else (1 if mu > 1 else 0))
    assert len(calls) == want, calls
    assert len(seen) == mu
    assert all(("policy_logps" in s) == (exact and compare) for s in seen)
    assert all(("old_logps" in s) == (mu > 1) for s in seen)
