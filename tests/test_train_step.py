"""GRPO/SFT train steps: sharded == one device, REINFORCE gradient, non-finite skipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from vrft_jax import buckets, optim, policy, sharding, steps
from vrft_jax.models import get_preset, random_qwen2_vl

# A tiny model with a small vocabulary (own special ids) so 5 compiles stay quick on 2 cores.
IDS = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502,
           vision_end_token_id=503, vision_token_id=504, bos_token_id=505, eos_token_id=506,
           pad_token_id=505)  # fmt: skip
B, G, C = 4, 2, 6
GRIDS = np.array([[1, 4, 4], [1, 2, 4], [1, 4, 2], [1, 2, 2], [1, 2, 2]], np.int32)  # 5 images
IMAGES_PER_PROMPT = (1, 2, 1, 1)
MESHES = {
    "data8": (("data", 8), ("fsdp", 1), ("tensor", 1)),
    "fsdp8": (("data", 1), ("fsdp", 8), ("tensor", 1)),
    "fsdp4_tensor2": (("data", 1), ("fsdp", 4), ("tensor", 2)),
    "data2_fsdp2_tensor2": (("data", 2), ("fsdp", 2), ("tensor", 2)),
}


def make_config(**grpo):
    c = base.get_config()
    c.grpo.G, c.grpo.micro_batch_size = G, 2
    c.grpo.update(grpo)
    c.sft.micro_batch_size = 2
    c.optim.lr, c.optim.eps, c.optim.schedule = 1e-3, 1e-3, "constant"  # eps: no sign amplification
    return c


def make_batch(seed=0):
    """B hand-made prompts with 5 images in all, left padded; N = B*G completions."""
    rng = np.random.default_rng(seed)
    tokens = GRIDS.prod(axis=1) // 4
    rows, image = [], 0
    for n in IMAGES_PER_PROMPT:
        row = list(rng.integers(0, 400, 3))
        for _ in range(n):
            row += [502] + [500] * int(tokens[image]) + [503]
            image += 1
        rows.append(row + list(rng.integers(0, 400, 2 + len(rows))))
    P = max(map(len, rows)) + 1
    prompt_ids = np.full((B, P), 505, np.int32)
    prompt_mask = np.zeros((B, P), np.int32)
    for b, row in enumerate(rows):
        prompt_ids[b, P - len(row) :], prompt_mask[b, P - len(row) :] = row, 1
    N = B * G
    mask = np.ones((N, C), np.int32)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "pixel_values": rng.normal(size=(int(GRIDS.prod(axis=1).sum()), 1176)).astype(np.float32),
        "image_grid_thw": GRIDS,
        "completion_ids": rng.integers(0, 500, (N, C)).astype(np.int32),
        "completion_mask": mask,
        "advantages": rng.normal(size=(N,)).astype(np.float32),
        "sampler_logps": -rng.uniform(0, 5, (N, C)).astype(np.float32),
        "ref_logps": -rng.uniform(0, 5, (N, C)).astype(np.float32),
    }


# Per family: the tiny preset (Qwen2.5-VL with 28 px windows, one merged token each, so the 4x4
# and 2x4 test images hold several windows).
FAMILY_PRESETS = {"qwen2_vl": ("tiny", {}), "qwen2_5_vl": ("qwen2_5_vl-tiny", {"window_size": 28})}


def model_params(family="qwen2_vl"):
    preset, overrides = FAMILY_PRESETS[family]
    model = random_qwen2_vl(get_preset(preset, vocab_size=512, **IDS, **overrides), seed=1)
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def build(mesh_config, config, family="qwen2_vl"):
    devices = jax.devices() if mesh_config else jax.devices()[:1]
    mesh = sharding.make_mesh(mesh_config or (("data", 1),), devices)
    graphdef, params = model_params(family)
    tx, schedule = optim.make_optimizer(config.optim, 10, params)
    state, shardings = steps.make_train_state(params, tx, mesh, ())
    return mesh, state, steps.TrainSteps(graphdef, config, tx, schedule, shardings)


def run_step(mesh, state, fns, batch):
    before = jax.device_get(state["params"])
    state, metrics = fns.update_grpo(state, steps.place_batch(batch, mesh))
    run_step.last_state = state  # on device, to continue from without recompiling
    return before, jax.device_get(state), steps.host_metrics(metrics)


@pytest.fixture(scope="module")
def one_device_fns():
    return build(None, make_config())


@pytest.fixture(scope="module")
def one_device(one_device_fns):
    mesh, state, fns = one_device_fns
    out = run_step(mesh, state, fns, make_batch())
    return (*out, run_step.last_state)


def test_one_device_step_changes_params_and_reports(one_device):
    before, state, metrics, _ = one_device
    assert int(state["step"]) == 1 and metrics["nonfinite_total"] == 0
    for key in ("loss", "kl", "clip_fraction", "entropy", "grad_norm", "lr",
                "logprob_gap_mean_abs"):  # fmt: skip
        assert np.isfinite(metrics[key]), key
    assert metrics["kl"] > 0 and metrics["grad_norm"] > 0
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before, state["params"])
    assert moved["visual"]["patch_embed"] > 0  # the image-feature VJP reaches the vision tower
    assert moved["language_model"]["layers"]["q_kernel"] > 0


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_step_matches_one_device(name, one_device):
    _, want_state, want, _ = one_device
    _, state, metrics = run_step(*build(MESHES[name], make_config()), make_batch())
    np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], want["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6),
        state["params"],
        want_state["params"],
    )


def test_qwen2_5_vl_step_sharded_matches_one_device():
    """The Qwen2.5-VL family (window attention in the vision tower) through the same GRPO step:
    fsdp x tensor over 8 devices equals one device. (The SFT step runs the same model forward and
    backward with another loss; its Qwen2.5-VL variant passed too but is left out of the suite:
    each of these compiles costs ~20 s of the suite's time budget.)"""
    results = []
    for mesh_config in (None, MESHES["fsdp4_tensor2"]):
        mesh, state, fns = build(mesh_config, make_config(), family="qwen2_5_vl")
        results.append(run_step(mesh, state, fns, make_batch()))
    (before, want_state, want), (_, state, got) = results
    gate = lambda p: p["visual"]["blocks"]["gate_kernel"]  # noqa: E731
    moved = np.abs(gate(want_state["params"]) - gate(before)).max()
    assert moved > 0  # the step reaches the window blocks' SwiGLU
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6),
        state["params"],
        want_state["params"],
    )


@pytest.mark.parametrize("name", ["data8", "data2_fsdp2_tensor2"])
def test_image_slots_split_over_devices_match_one_device(name, one_device):
    """Per-image slots split over the batch axes (each device encodes its own images) give the
    same step as one device with the packed images."""
    _, want_state, want, _ = one_device
    batch = make_batch()
    batch["pixel_values"], batch["image_grid_thw"] = buckets.pad_images(
        batch["pixel_values"], batch["image_grid_thw"], (16,), (8,), layout="slots"
    )
    mesh, state, fns = build(MESHES[name], make_config())
    placed = steps.place_batch(batch, mesh)
    shards = placed["pixel_values"].addressable_shards
    assert placed["pixel_values"].shape == (8, 16, 1176)
    assert {s.data.shape for s in shards} == {(8 // (8 // mesh.shape["tensor"]), 16, 1176)}
    state, metrics = fns.update_grpo(state, placed)
    metrics = steps.host_metrics(metrics)
    np.testing.assert_allclose(metrics["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], want["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6),
        jax.device_get(state["params"]),
        want_state["params"],
    )


def test_frozen_vision_tower_step():
    """optim.freeze='^visual/' through the trainer's path (optimizer over the model's nnx.State,
    train state of pure dicts): the vision tower stays, the LLM moves."""
    config = make_config()
    config.optim.freeze = "^visual/"
    mesh, state, fns = build(None, config)
    before, after, metrics = run_step(mesh, state, fns, make_batch())
    assert np.isfinite(metrics["loss"])
    for a, b in zip(jax.tree.leaves(before["visual"]), jax.tree.leaves(after["params"]["visual"])):
        np.testing.assert_array_equal(a, b)
    moved = np.abs(
        before["language_model"]["layers"]["q_kernel"]
        - after["params"]["language_model"]["layers"]["q_kernel"]
    )
    assert moved.max() > 0


def test_mu1_gradient_is_group_baseline_reinforce():
    config = make_config(beta=0.0)
    batch = make_batch(seed=2)
    batch.pop("ref_logps")
    graphdef, params = model_params()
    params = nnx.to_pure_dict(params)
    got_loss, _, got = jax.jit(lambda p, b: steps.grpo_loss_and_grads(graphdef, p, b, config.grpo))(
        params, batch
    )

    # Independent: d/dtheta of -(1/N) sum_i A_i * mean_t logp_it, one forward, no micro-batches.
    def reinforce(p):
        logp, _ = policy.completion_logprobs(
            (graphdef, p), batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
            batch["image_grid_thw"], batch["completion_ids"],
        )  # fmt: skip
        m = batch["completion_mask"]
        seq = (logp * m).sum(1) / m.sum(1)
        return -jnp.mean(batch["advantages"] * seq)

    want_loss, want = jax.jit(jax.value_and_grad(reinforce))(params)
    # At ratio 1 the loss value is -mean(A); its gradient is REINFORCE's.
    np.testing.assert_allclose(got_loss, -batch["advantages"].mean(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(want_loss)
    scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(want))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale), got, want
    )
    # The strided micro-batched log-probs equal the one-shot forward.
    logp = jax.jit(lambda p, b: steps.sequence_logprobs(graphdef, p, b, 2))(params, batch)
    want_logp, _ = policy.completion_logprobs(
        (graphdef, params), batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
        batch["image_grid_thw"], batch["completion_ids"],
    )  # fmt: skip
    np.testing.assert_allclose(logp, want_logp, atol=1e-5)


def test_nonfinite_loss_is_skipped_and_counted(one_device_fns, one_device):
    mesh, _, fns = one_device_fns
    state = one_device[3]  # continue from the first step's state (same compiled program)
    batch = make_batch()
    batch["advantages"][3] = np.nan
    before, state, metrics = run_step(mesh, state, fns, batch)
    assert metrics["nonfinite_in_row"] == 1 and metrics["nonfinite_total"] == 1
    jax.tree.map(np.testing.assert_array_equal, before, state["params"])


def test_logprob_gap_max_is_the_max_over_micro_batches(one_device_fns, one_device):
    """Sampler log-probs off by 0.5 on one token of micro-batch 0 and 0.7 on one of micro-batch 1
    (micro_batch_size 2 -> 4 micro-batches): the max gap is 0.7 (a sum would give 1.2)."""
    mesh, _, fns = one_device_fns
    state = one_device[3]
    batch = make_batch()
    placed = steps.place_batch(batch, mesh)
    logp = np.asarray(fns.logprobs(state["params"], placed))
    # Micro-batch k holds rows k, k + 4 (steps._micro): rows 0 and 1 are in micro-batches 0 and 1.
    batch["sampler_logps"] = logp.copy()
    batch["sampler_logps"][0, 2] -= 0.5
    batch["sampler_logps"][1, 1] += 0.7
    _, _, metrics = run_step(mesh, state, fns, batch)
    # The logprobs program and the update's forward round differently: about 1e-6 apart.
    np.testing.assert_allclose(metrics["logprob_gap_max_abs"], 0.7, atol=1e-4)


def test_mu2_second_update_sees_ratio_off_one_and_clips():
    """grpo.mu = 2 through train.grpo_updates: the old log-probs are the rollout policy's (computed
    before the first update), so the first update has ratio 1 and the second, after a large-lr
    step, a ratio != 1 with clipped tokens. Every log-prob value the loss compares comes from the
    log-prob program (train.grpo_updates), so the first ratio is exactly 1 (the update's own
    forward, fused differently for the backward, gives log-probs up to ~1e-5 apart)."""
    from vrft_jax import train
    from vrft_jax.metrics import Timer

    config = make_config(mu=2, beta=0.0)
    config.optim.lr = 3e-2
    mesh, state, fns = build(None, config)
    batch = make_batch()
    batch.pop("ref_logps")
    state, updates = train.grpo_updates(
        config, state, steps.place_batch(batch, mesh), fns, None, Timer()
    )
    assert len(updates) == 2 and int(state["step"]) == 2
    first, second = updates
    assert first["ratio"] == 1.0 and first["clip_fraction"] == 0.0
    assert abs(second["ratio"] - 1.0) > 1e-3
    assert second["clip_fraction"] > 0.0
    print(f"mu=2: update 2 ratio {second['ratio']:.4f}, clip fraction {second['clip_fraction']}")


def test_adam_moments_follow_parameter_shardings():
    """Under FSDP each Adam moment is split like its parameter (jit(tx.init) alone replicated the
    zero moments: every device held both full float32 moments); counters are replicated."""
    mesh = sharding.make_mesh(MESHES["fsdp4_tensor2"])
    graphdef, params = model_params()
    tx, _ = optim.make_optimizer(make_config().optim, 10, params)
    state, shardings = steps.make_train_state(params, tx, mesh, sharding.make_rules(()))
    by_path = dict(jax.tree_util.tree_leaves_with_path(state["params"]))
    moments = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
        param = next((by_path[path[i:]] for i in range(len(path)) if path[i:] in by_path), None)
        if param is None:
            assert leaf.sharding.is_fully_replicated, path
            continue
        moments += 1
        assert leaf.sharding == param.sharding, path
    assert moments == 2 * len(by_path)  # mu and nu of every parameter
    split = [x for x in jax.tree.leaves(state["opt_state"]) if not x.sharding.is_fully_replicated]
    assert split and all(x.addressable_shards[0].data.size < x.size for x in split)
