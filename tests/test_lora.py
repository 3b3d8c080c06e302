"""LoRA / QLoRA (vrft_jax/lora.py): adapter-only training on a bit-identical base, the reference as
the base with adapters off, sharding equivalence, int8 base, and bad input.

In-process on the tiny model of test_train_step (512-token vocabulary); the trainer, resume,
export and PEFT round trip with real runs are in test_lora_run.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_train_step import MESHES, make_batch, make_config, model_params

from vrft_jax import lora, model_setup, optim, sharding, steps
from vrft_jax.models import get_preset, random_qwen2_vl

RANK = 4


def lora_config(**fields):
    c = make_config(beta=0.04)
    c.lora.rank, c.lora.alpha = RANK, 8.0
    c.lora.update(fields)
    return c


def build(config, mesh_config=None):
    """(mesh, graphdef, LoraRun, state, TrainSteps) of the tiny model on `mesh_config`."""
    devices = jax.devices() if mesh_config else jax.devices()[:1]
    mesh = sharding.make_mesh(mesh_config or (("data", 1),), devices)
    graphdef, params = model_params()
    run = model_setup.lora_setup(config, params, mesh, sharding.make_rules(()))
    tx, schedule = optim.make_optimizer(config.optim, 10, run.adapters)
    state, shardings = steps.make_train_state(run.adapters, tx, mesh, ())
    fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings, run)
    return mesh, graphdef, run, state, fns


def host(tree):
    return jax.device_get(tree)


@pytest.fixture(scope="module")
def trained():
    """Two GRPO updates (reference = base with adapters off) and one SFT update on one device."""
    mesh, graphdef, run, state, fns = build(lora_config())
    batch = steps.place_batch(make_batch(), mesh)
    base_before, adapters_before = host(run.base), host(state["params"])
    ref = fns.logprobs({}, batch)
    policy_logp = fns.logprobs(state["params"], batch)
    batch["ref_logps"] = ref
    state, m1 = fns.update_grpo(state, batch)
    first = steps.host_metrics(m1)
    state, m2 = fns.update_grpo(state, batch)
    state, m3 = fns.update_sft(state, batch)
    return dict(
        run=run, graphdef=graphdef, fns=fns, state=host(state), first=first,
        base_before=base_before, adapters_before=adapters_before,
        ref=np.asarray(ref), policy_logp=np.asarray(policy_logp),
        metrics=[first, steps.host_metrics(m2), steps.host_metrics(m3)],
    )  # fmt: skip


def test_fresh_adapters_are_the_base_model_and_kl_is_exactly_zero(trained):
    # B = 0: W + (alpha/r) A @ 0 is W bit for bit, so the policy IS the reference (adapters off).
    np.testing.assert_array_equal(trained["policy_logp"], trained["ref"])
    assert trained["first"]["kl"] == 0.0
    assert trained["first"]["ratio"] == 1.0


def test_only_adapters_train_and_the_base_stays_bit_identical(trained):
    run, state = trained["run"], trained["state"]
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(trained["base_before"]), jax.tree.leaves(host(run.base))
    ):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), trained["adapters_before"], state["params"]
    )
    for t in run.spec.targets:
        assert lora._get(moved, t.path)["b"] > 0, t.key  # B leaves 0 at the first update
        assert lora._get(moved, t.path)["a"] > 0, t.key  # A moves once B != 0
    # The optimizer state holds float32 Adam moments of the adapters only.
    n_adapter = sum(x.size for x in jax.tree.leaves(state["params"]))
    moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim >= 1 and x.size > 1]
    assert sum(x.size for x in moments) == 2 * n_adapter
    assert {x.dtype for x in moments} == {np.dtype("float32")}
    n_base = sum(x.size for x in jax.tree.leaves(run.base))
    assert n_adapter < n_base / 20
    for m in trained["metrics"]:
        assert np.isfinite(m["loss"]) and m["grad_norm"] > 0 and m["nonfinite_total"] == 0


def test_adapted_forward_equals_the_merged_weights(trained):
    """Per-layer effective weights inside the scan (training) == one merged copy (sampler, export):
    the same products and sums in float32, so at the rounding level (scale-relative 1e-5)."""
    run, graphdef, adapters = trained["run"], trained["graphdef"], trained["state"]["params"]
    # Large adapters, so that a wrong layout could not hide under the base's logits.
    rng = np.random.default_rng(3)
    adapters = jax.tree.map(lambda x: rng.normal(0, 0.3, x.shape).astype(np.float32), adapters)
    batch = make_batch()
    ids = jnp.asarray(batch["prompt_ids"])
    mask = jnp.asarray(batch["prompt_mask"])
    adapted = nnx.merge(graphdef, lora.attach(run.base, adapters, run.spec)).forward(ids, mask)
    merged = nnx.merge(graphdef, lora.merge(run.base, adapters, run.spec, jnp.float32))
    want = merged.forward(ids, mask)
    base = nnx.merge(graphdef, run.base).forward(ids, mask)
    scale = float(jnp.abs(want).max())
    assert float(jnp.abs(adapted - want).max()) / scale <= 1e-5
    assert float(jnp.abs(base - want).max()) / scale > 1e-2  # the adapters do change the model
    _assert_sampler_weights_are_the_merge(run, adapters)


def _assert_sampler_weights_are_the_merge(run, adapters):
    """The sampler's weights (model_setup.sampler_weights_fn: the jitted merge_targets put into
    the base) equal a jitted lora.merge bit for bit, and its other parameters are the base's own
    arrays (not copied each rollout). After `rebase` (lora.full_warmup) the same function merges
    onto the new base."""
    config = lora_config()
    config.model.compute_dtype = "float32"
    weights_of = model_setup.sampler_weights_fn(config, run)
    merge = jax.jit(functools.partial(lora.merge, spec=run.spec, dtype=jnp.float32))
    _assert_same_tree(weights_of(adapters), merge(run.base, adapters), run)
    old_base = run.base
    try:
        run.base = jax.tree.map(
            lambda x: x * 2 if jnp.issubdtype(x.dtype, jnp.floating) else x, old_base
        )
        _assert_same_tree(weights_of(adapters), merge(run.base, adapters), run)
    finally:
        run.base = old_base


def _assert_same_tree(got, want, run):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    targets = {t.path for t in run.spec.targets}
    for path, leaf in jax.tree_util.tree_leaves_with_path(got):
        keys = tuple(str(p.key) for p in path)
        if keys not in targets:
            assert leaf is lora._get(run.base, keys), keys


def _full_fine_tuning_programs(config):
    """The trainer's set-up (train._run) for `config` on one device -> (lora_setup's result, the
    train state's params, the lowered GRPO update and log-prob programs as text)."""
    graphdef, params = model_params()
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    run = model_setup.lora_setup(config, params, mesh, {})
    tx, schedule = optim.make_optimizer(config.optim, 10, params)
    state, shardings = steps.make_train_state(params, tx, mesh, ())
    fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings, run)
    batch = steps.place_batch(make_batch(), mesh)
    lp_batch = {k: v for k, v in batch.items() if k in steps.PROMPT_KEYS or k == "completion_ids"}
    batch["ref_logps"] = jnp.zeros(batch["completion_ids"].shape)
    programs = (
        fns.update_grpo_jit.lower(state, batch, fns.base).as_text(),
        fns._logprobs.lower(state["params"], lp_batch, 2, fns.base).as_text(),
    )
    return run, state["params"], programs


def test_rank_zero_is_full_fine_tuning_whatever_the_other_lora_fields():
    """lora.rank 0 with alpha and targets set (targets matching no weight, which rank > 0 would
    reject) runs today's full fine-tuning path: float32 master weights loaded (not the compute
    dtype of a LoRA base), no LoraRun, every parameter in the train state, and the same GRPO
    update and log-prob programs, op for op, as a config without any lora field (so the same
    update bit for bit). A quantised base or a PEFT init without adapters is an error, not
    silently full fine-tuning."""
    plain = make_config(beta=0.04)
    fields = make_config(beta=0.04)
    fields.lora.alpha, fields.lora.targets = 3.0, "^nothing/"
    for c in (plain, fields):
        c.model.preset, c.model.compute_dtype = "tiny", "bfloat16"
        abstract = nnx.eval_shape(lambda c=c: model_setup.build_model(c))
        dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))}
        assert dtypes == {np.dtype("float32")}
    plain.model.compute_dtype = fields.model.compute_dtype = "float32"  # as model_params() runs
    run_plain, params, want = _full_fine_tuning_programs(plain)
    run_fields, got_params, got = _full_fine_tuning_programs(fields)
    assert run_plain is None and run_fields is None
    full = nnx.to_pure_dict(model_params()[1])
    assert jax.tree.structure(got_params) == jax.tree.structure(params) == jax.tree.structure(full)
    assert got == want  # the StableHLO of both programs, every op and constant
    for field, value in (("quantize", "int8"), ("init", "/some/peft")):
        bad = make_config()
        bad.lora[field] = value
        with pytest.raises(ValueError, match="set config.lora.rank > 0"):
            lora.check_config(bad.lora)


@pytest.mark.parametrize("name", ["fsdp4_tensor2"])
def test_sharded_lora_step_matches_one_device(name, trained):
    mesh, _, run, state, fns = build(lora_config(), MESHES[name])
    batch = steps.place_batch(make_batch(), mesh)
    batch["ref_logps"] = fns.logprobs({}, batch)
    state, metrics = fns.update_grpo(state, batch)
    got = steps.host_metrics(metrics)
    want = trained["first"]
    # float32 sums reordered across devices: relative 1e-5 of each metric's scale.
    for key in ("loss", "pg_loss", "entropy", "grad_norm"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert got["kl"] == 0.0
    # The rank axis is replicated; A/B follow the weight's input/output axes.
    q = lora._get(state["params"], ("language_model", "layers", "q_kernel"))
    assert q["a"].sharding.spec[-1] is None and q["b"].sharding.spec[1] is None


def test_int8_base_is_close_to_the_float_base_and_trains_only_adapters():
    config = lora_config(quantize="int8")
    mesh, graphdef, run, state, fns = build(config)
    _, params = model_params()
    float_params = nnx.to_pure_dict(params)
    # Elementwise |W - q s| <= s / 2 = max|W| / 254 per output channel (round to nearest).
    worst = 0.0
    for t in run.spec.targets:
        node = lora._get(run.base, t.path)
        assert node["q"].dtype == jnp.int8
        w = np.asarray(lora._get(float_params, t.path))
        deq = np.asarray(node["q"], np.float32) * np.asarray(node["qscale"])
        assert np.all(np.abs(w - deq) <= np.asarray(node["qscale"]) / 2 * (1 + 1e-6))
        worst = max(worst, float(np.linalg.norm(w - deq) / np.linalg.norm(w)))
    batch = make_batch()
    ids, mask = jnp.asarray(batch["prompt_ids"]), jnp.asarray(batch["prompt_mask"])
    quantised = nnx.merge(graphdef, lora.attach(run.base, {}, run.spec)).forward(ids, mask)
    exact = nnx.merge(graphdef, float_params).forward(ids, mask)
    # First order, each quantised matmul adds its weight's relative error to its output; a token's
    # logits pass through 7 per layer x 2 layers = 14 of them in sequence.
    rel = float(jnp.linalg.norm(quantised - exact) / jnp.linalg.norm(exact))
    assert 0 < rel <= 14 * worst, (rel, worst)
    place = steps.place_batch(batch, mesh)
    before = host(run.base)
    place["ref_logps"] = fns.logprobs({}, place)
    state, metrics = fns.update_grpo(state, place)
    assert steps.host_metrics(metrics)["kl"] == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(host(run.base))):
        np.testing.assert_array_equal(a, b)
    b = lora._get(host(state["params"]), ("language_model", "layers", "q_kernel"))["b"]
    assert np.abs(b).max() > 0
    _assert_sampler_weights_are_the_merge(run, host(state["params"]))


def test_targets_matching_nothing_names_real_paths():
    _, params = model_params()
    with pytest.raises(ValueError, match="matches no weight matrix.*language_model/layers/"):
        lora.make_spec(lora_config(targets="^nothing/").lora, params)
    with pytest.raises(ValueError, match="not a weight matrix"):
        lora.make_spec(lora_config(targets="q_bias").lora, params)
    with pytest.raises(ValueError, match="config.lora.quantize='nf3'"):
        lora.check_config(lora_config(quantize="nf3").lora)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_lora_grpo_step_and_peft_names_on_every_family(family):
    """Qwen2.5-VL (window attention) and Qwen3-VL (DeepStack, q/k norms) through the same LoRA
    path as Qwen2-VL: fresh adapters are the base (KL exactly 0), a GRPO update moves only the
    adapters, and the PEFT tensors (Hugging Face module names of that family) read back exactly."""
    import test_train_step as tts

    from vrft_jax import peft_io

    presets = {
        "qwen2_5_vl": ("qwen2_5_vl-tiny", {"window_size": 28}),
        "qwen3_vl": ("qwen3_vl-tiny", {}),
    }
    name, overrides = presets[family]
    model_config = get_preset(name, vocab_size=512, **tts.IDS, **overrides)
    graphdef, params = nnx.split(random_qwen2_vl(model_config, seed=1), nnx.Param)
    config = lora_config()
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    run = model_setup.lora_setup(config, params, mesh, sharding.make_rules(()))
    tx, schedule = optim.make_optimizer(config.optim, 10, run.adapters)
    state, shardings = steps.make_train_state(run.adapters, tx, mesh, ())
    fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings, run)
    batch = make_batch()
    patch = model_config.patch_dim  # 14 px patches (1176), Qwen3-VL 16 px (1536)
    rows = batch["pixel_values"].shape[0]
    batch["pixel_values"] = np.random.default_rng(7).normal(size=(rows, patch)).astype(np.float32)
    batch = steps.place_batch(batch, mesh)
    base_before, adapters_before = host(run.base), host(state["params"])
    ref = fns.logprobs({}, batch)
    np.testing.assert_array_equal(np.asarray(fns.logprobs(state["params"], batch)), np.asarray(ref))
    batch["ref_logps"] = ref
    state, metrics = fns.update_grpo(state, batch)
    metrics = steps.host_metrics(metrics)
    assert metrics["kl"] == 0.0 and metrics["grad_norm"] > 0
    jax.tree.map(np.testing.assert_array_equal, base_before, host(run.base))
    after = host(state["params"])
    for t in run.spec.targets:
        moved = np.abs(lora._get(after, t.path)["b"] - lora._get(adapters_before, t.path)["b"])
        assert moved.max() > 0, (family, t.key)
    tensors = peft_io.peft_tensors(after, run.spec, model_config)
    assert len(tensors) == 2 * sum(
        lora._get(after, t.path)["a"].shape[0] if t.stacked else 1 for t in run.spec.targets
    )
    assert all(k.startswith(peft_io.PREFIX) and ".language_model.layers." in k for k in tensors), (
        sorted(tensors)[:2]
    )
    back = peft_io._from_tensors(tensors, run.spec, run.adapters, model_config)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(back), after)
