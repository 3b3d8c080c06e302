"""Qwen3-VL (dense) vs transformers' Qwen3VLForConditionalGeneration in float32, tiny random models
(tiny_qwen3_hf): logits, vision tower + DeepStack in both image layouts, save -> transformers,
greedy generation, sampler log-probs, preset parameter counts and bad checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tiny_hf  # noqa: E402
import tiny_qwen3_hf as tq  # noqa: E402
from flax import nnx  # noqa: E402

from vrft_jax import buckets, hf, policy  # noqa: E402
from vrft_jax.generation import sampler  # noqa: E402
from vrft_jax.models import PRESETS, Qwen2VL, count_params, get_preset  # noqa: E402

TOL = 1e-5  # max |diff| / max |reference| in float32
BUCKETS = dict(prompt_buckets=(128,), patch_buckets=(256,), image_buckets=(4,))


def rel_err(ours, ref, mask=None):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    if mask is not None:
        ours, ref = ours[mask > 0], ref[mask > 0]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_tied" if request.param else "qwen3_untied")
    torch_model = tq.make_tiny_hf(path, tie=request.param, seed=1 + request.param)
    return torch_model, hf.load_model(str(path), **BUCKETS), str(path)


def torch_image_features(torch_model, pv, grid):
    """(main tokens, [DeepStack features per layer]) as numpy, from transformers."""
    with torch.no_grad():
        out = torch_model.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
    main = torch.cat(out.pooler_output).numpy()
    return main, [torch.cat(f).numpy() for f in out.deepstack_features]


def test_logits_match_transformers(pair):
    """Left-padded batch: a two-image row (grids under and over the 6 x 6 position grid), a
    text-only row and a one-image row."""
    torch_model, model, _ = pair
    assert model.config.model_type == "qwen3_vl" and model.config.head_dim == 32
    ids, mask, pv, grid = tq.mixed_batch(np.random.default_rng(0))
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    ours = model(ids, mask, pv, grid)
    assert ours.shape == ref.shape and ours.dtype == jnp.float32
    err = rel_err(ours, ref, mask)
    print(f"qwen3_vl logits rel err {err:.2e} (tie={model.config.tie_word_embeddings})")
    assert err <= TOL


def test_image_layouts_and_deepstack(pair):
    """Vision tokens and DeepStack features equal transformers' in the packed and the slots layout;
    slots logits equal transformers'; and without the DeepStack features the logits are far off
    (so the parity above does check them)."""
    torch_model, model, path = pair
    if "untied" in path:
        pytest.skip("the image path does not depend on the head (checked on the tied model)")
    ids, mask, pv, grid = tq.mixed_batch(np.random.default_rng(1))
    main, deep = torch_image_features(torch_model, pv, grid)
    n = main.shape[0]
    encode = nnx.jit(lambda m, p, g: m.encode_images(p, g))
    slots, slot_grid = buckets.pad_images(pv, grid, (64,), (4,), layout="slots")
    packed, packed_grid = buckets.pad_images(pv, grid, (256,), (4,), layout="packed")
    for name, (p, g) in {"slots": (slots, slot_grid), "packed": (packed, packed_grid)}.items():
        feats = np.asarray(encode(model, jnp.asarray(p), jnp.asarray(g)))
        assert feats.shape[1:] == (1 + len(deep), main.shape[1])
        errs = [rel_err(feats[:n, 0], main)]
        errs += [rel_err(feats[:n, 1 + i], d) for i, d in enumerate(deep)]
        print(f"vision tokens + DeepStack ({name}) rel errs", [f"{e:.1e}" for e in errs])
        assert max(errs) <= TOL

    ids_b, mask_b = buckets.pad_left(ids, mask, 128, tiny_hf.PAD)
    forward = nnx.jit(lambda m, *a: m.forward(*a))
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    logits = np.asarray(forward(model, jnp.asarray(ids_b), jnp.asarray(mask_b), slots, slot_grid))
    err = rel_err(logits[:, -ids.shape[1] :], ref, mask)
    print(f"logits, slots layout, rel err {err:.2e}")
    assert err <= TOL

    # The same forward with the DeepStack features zeroed.
    def no_deepstack(m, ids, mask, pv, grid):
        feats = m.encode_images(pv, grid)
        x = m.embed(ids, feats.at[:, 1:].set(0.0))
        from vrft_jax.models import get_rope_index

        pos, _ = get_rope_index(ids, mask, grid, m.config)
        return m.lm_logits(m.decode(x, pos, mask > 0)[0])

    without = np.asarray(nnx.jit(no_deepstack)(model, ids_b, mask_b, slots, slot_grid))
    assert rel_err(without[:, -ids.shape[1] :], ref, mask) > 1e-2


def test_save_loads_in_transformers(pair, tmp_path):
    """save_model -> Qwen3VLForConditionalGeneration.from_pretrained: the same tensors (names
    and values) as the original torch model, hence the same logits."""
    from transformers import Qwen3VLForConditionalGeneration

    torch_model, model, _ = pair
    hf.save_model(model, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["model_type"] == "qwen3_vl"
    reloaded = Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    want = torch_model.state_dict()
    got = reloaded.state_dict()
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy(), err_msg=key)
    ours_again = hf.load_model(str(tmp_path), **BUCKETS)
    assert ours_again.config == model.config


def test_greedy_and_sampler_logprobs(pair):
    """Greedy sampling == transformers' generate; sampled log-probs == teacher-forced ones."""
    torch_model, model, path = pair
    if "untied" in path:
        pytest.skip("one generation check (tied model)")
    ids, mask, pv, grid = tq.mixed_batch(np.random.default_rng(2))
    steps, g = 6, 2
    with torch.no_grad():
        out = torch_model.generate(
            input_ids=torch.as_tensor(ids),
            attention_mask=torch.as_tensor(mask),
            pixel_values=torch.as_tensor(pv),
            image_grid_thw=torch.as_tensor(grid),
            mm_token_type_ids=torch.as_tensor((ids == tiny_hf.IMAGE).astype(np.int64)),
            max_new_tokens=steps,
            do_sample=False,
            eos_token_id=[151645, 151643],
            pad_token_id=tiny_hf.PAD,
        )
    want = np.repeat(out[:, ids.shape[1] :].numpy(), g, axis=0)
    ours = sampler.generate(model, ids, mask, pv, grid, max_new_tokens=steps, num_samples=g)
    np.testing.assert_array_equal(np.asarray(ours.tokens)[:, : want.shape[1]], want)

    s = sampler.get_sampler(nnx.graphdef(model), model.config, batch_buckets=(4,), **BUCKETS)
    graphdef, params = nnx.split(model)
    kw = dict(temperature=1.0, top_k=50, top_p=0.95)
    sampled = s(params, ids, mask, pv, grid, max_new_tokens=steps, num_samples=g, rng=3, **kw)
    pids, pmask, ppv, pgrid = s.prepare(ids, mask, pv, grid)[:4]
    b = ids.shape[0]
    logp, _ = policy.completion_logprobs(
        model, pids[:b], pmask[:b], ppv, pgrid, np.asarray(sampled.tokens)[: b * g]
    )
    live = np.asarray(sampled.mask)[: b * g]
    got = np.where(live, np.asarray(sampled.logprobs)[: b * g], 0.0)
    err = float(np.abs(got - np.where(live, np.asarray(logp), 0.0)).max())
    print(f"sampler log-probs vs teacher-forced: max abs err {err:.2e}")
    assert live.any() and err <= 1e-4


@pytest.mark.parametrize("name", ["qwen3_vl-tiny", "qwen3_vl-2b", "qwen3_vl-4b", "qwen3_vl-8b"])
def test_preset_param_counts_equal_transformers(name):
    """Abstract (eval_shape) parameter count == transformers' for the preset's config.json."""
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    config = get_preset(name)
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    ours = count_params(nnx.state(abstract, nnx.Param))
    hf_config = AutoConfig.for_model(**config.to_hf())
    with torch.device("meta"):
        torch_model = Qwen3VLForConditionalGeneration(hf_config)
    theirs = sum(p.numel() for p in torch_model.parameters())  # tied weights counted once
    print(f"{name}: {ours:,} parameters")
    assert ours == theirs


def test_bad_checkpoints_fail_naming_file_and_key(pair, tmp_path):
    torch_model, model, path = pair
    if "untied" in path:
        pytest.skip("checked once")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    # An MoE config (30B-A3B style).
    moe = tmp_path / "moe"
    moe.mkdir()
    text = dict(config["text_config"], model_type="qwen3_vl_moe_text", num_experts=4)
    (moe / "config.json").write_text(
        json.dumps(dict(config, model_type="qwen3_vl_moe", text_config=text))
    )
    with pytest.raises(ValueError, match=r"moe[/\\]config.json.*qwen3_vl_moe.*not supported"):
        hf.load_model(str(moe))
    # A checkpoint without its DeepStack mergers.
    from safetensors.torch import save_file

    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "config.json").write_text(json.dumps(config))
    tensors = {k: v for k, v in torch_model.state_dict().items() if "deepstack_merger" not in k}
    tensors.pop("lm_head.weight", None)  # tied
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(cut / "model.safetensors"))
    with pytest.raises(KeyError, match=r"cut.*deepstack_merger_list\.0\."):
        hf.load_model(str(cut))
    # A model folder with a Qwen2-VL image processor (14-px patches).
    wrong = tmp_path / "wrong_processor"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps(config))
    (wrong / "preprocessor_config.json").write_text(json.dumps({"patch_size": 14, "merge_size": 2}))
    with pytest.raises(
        ValueError, match=r"wrong_processor[/\\]preprocessor_config.json: patch_size"
    ):
        hf.load_model(str(wrong))


def test_presets_are_listed():
    assert {"qwen3_vl-tiny", "qwen3_vl-2b", "qwen3_vl-4b", "qwen3_vl-8b"} <= set(PRESETS)
    assert get_preset("qwen3_vl-8b").head_dim == 128 and get_preset("qwen3_vl-4b").head_dim == 128


def test_processor_for_qwen3_vl(pair, tmp_path, tokenizer_dir):
    """Without a model folder the Qwen3-VL processor is transformers' image processor with the
    published Qwen3-VL settings (16-px patches, merge 2, mean/std 0.5): its arrays run through the
    model; a folder whose preprocessor_config.json has another patch size fails naming it."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from vrft_jax.inputs import PromptProcessor

    torch_model, model, path = pair
    if "untied" in path:
        pytest.skip("checked once")
    kw = dict(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 24)
    processor = PromptProcessor(tokenizer_dir, model_type="qwen3_vl", **kw)
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 255, (100, 150, 3), dtype=np.uint8))
    batch = processor.encode_batch([([image], "What is this?"), ([], "Hello")])
    pv, grid = batch["pixel_values"], batch["image_grid_thw"]
    reference = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3, **kw
    )(images=[image], return_tensors="np")
    np.testing.assert_array_equal(grid, reference["image_grid_thw"])
    np.testing.assert_allclose(pv, reference["pixel_values"], rtol=0, atol=1e-6)
    assert pv.shape[1] == 1536 and grid[0, 1] % 2 == 0 and grid[0, 2] % 2 == 0
    ids, mask = batch["input_ids"], batch["attention_mask"]
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    assert rel_err(model(ids, mask, pv, grid), ref, mask) <= TOL

    folder = tmp_path / "qwen2_processor"
    folder.mkdir()
    for name in os.listdir(tokenizer_dir):
        (folder / name).write_bytes(open(os.path.join(tokenizer_dir, name), "rb").read())
    with pytest.raises(ValueError, match=r"qwen2_processor[/\\]preprocessor_config.json: "):
        PromptProcessor(str(folder), model_type="qwen3_vl", **kw)

    # The trainer's start-up check agrees: a random-init Qwen3-VL run with the shipped tokenizer
    # passes (it takes the settings above); a tokenizer folder with a 14-px processor fails.
    from configs import base
    from vrft_jax import main

    run = base.get_config()
    run.model.preset = "qwen3_vl-tiny"
    main.check_model_files(run)
    run.tokenizer = str(folder)
    with pytest.raises(ValueError, match=r"qwen2_processor[/\\]preprocessor_config.json: patch"):
        main.check_model_files(run)


# GRPO only: the SFT step runs the same model code (encode_images + rows_logprobs) and passed the
# same check when run (sft: 139 s here on 2 shared cores), over this file's test-time budget.
@pytest.mark.parametrize("kind", ["grpo"])
def test_qwen3_vl_step_sharded_matches_one_device(kind):
    """The Qwen3-VL family (DeepStack, q/k norms) through the same train step as every family
    (test_train_step's batch, 16-px pixel rows): fsdp x tensor over 8 devices equals one device,
    and the step reaches the DeepStack mergers."""
    import test_train_step as tts

    from vrft_jax import optim, sharding, steps
    from vrft_jax.models import random_qwen2_vl

    batch = tts.make_batch()
    rows = batch["pixel_values"].shape[0]
    batch["pixel_values"] = np.random.default_rng(7).normal(size=(rows, 1536)).astype(np.float32)
    if kind == "sft":
        batch = {k: batch[k] for k in (*steps.PROMPT_KEYS, "completion_ids", "completion_mask")}
    preset = get_preset("qwen3_vl-tiny", vocab_size=512, **tts.IDS)
    results = []
    for mesh_config in (None, tts.MESHES["fsdp4_tensor2"]):
        devices = jax.devices() if mesh_config else jax.devices()[:1]
        mesh = sharding.make_mesh(mesh_config or (("data", 1),), devices)
        graphdef, params = nnx.split(random_qwen2_vl(preset, seed=1), nnx.Param)
        config = tts.make_config()
        tx, schedule = optim.make_optimizer(config.optim, 10, params)
        state, shardings = steps.make_train_state(params, tx, mesh, ())
        fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings)
        update = fns.update_sft if kind == "sft" else fns.update_grpo
        before = jax.device_get(state["params"])
        state, metrics = update(state, steps.place_batch(batch, mesh))
        results.append((before, jax.device_get(state["params"]), steps.host_metrics(metrics)))
    (before, want_params, want), (_, params, got) = results
    deep = lambda p: p["visual"]["deepstack_mergers"]["fc2_kernel"]  # noqa: E731
    assert np.abs(deep(want_params) - deep(before)).max() > 0
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-6), params, want_params
    )
