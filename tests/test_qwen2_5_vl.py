"""Qwen2.5-VL: float32 parity with transformers' Qwen2_5_VLForConditionalGeneration on tiny random
models (tied and untied heads), the window order against transformers' get_vision_window_index,
packed == slots, save_model -> from_pretrained, config.json and presets (parameter counts against
transformers'), and bad inputs at load."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import tiny_hf  # noqa: E402
from flax import nnx  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from vrft_jax import buckets, hf  # noqa: E402
from vrft_jax.models import QwenVL, QwenVLConfig, count_params, get_preset, windows  # noqa: E402

# max |diff| / max |logits| in float32: the window attention sums over its keys in another order
# than torch's per-window calls (and over masked-out keys that add exact zeros), a few ulps per
# layer; 1e-5 is ~80 ulps of the largest logit.
TOL = 1e-5
BUCKETS = dict(prompt_buckets=(64,), patch_buckets=(512,), image_buckets=(4,))
# Row 0: two images (5x7 and 3x2 merged tokens: 2x3 and 1x1 windows of 3x3, partial at the right
# and bottom edges), row 1: text only, row 2: one image (6x5 merged: 2x2 windows, partial right).
GRIDS = ([(1, 10, 14), (1, 6, 4)], [], [(1, 12, 10)])


def rel_err(ours, ref, mask=None):
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    if mask is not None:
        ours, ref = ours[mask > 0], ref[mask > 0]
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tied" if request.param else "untied")
    torch_model = tiny_hf.make_tiny_hf(
        path, tie=request.param, seed=11 + request.param, family="qwen2_5_vl"
    )
    return torch_model, hf.load_model(str(path), **BUCKETS), str(path)


def batch(seed):
    """A left-padded batch of the GRIDS rows -> (ids, mask, pixel_values, image_grid_thw)."""
    rng = np.random.default_rng(seed)
    rows = [tiny_hf.image_prompt(rng, 3 + i, g, 4 - i) for i, g in enumerate(GRIDS)]
    ids, mask = tiny_hf.left_pad(rows)
    return (ids, mask, *tiny_hf.random_pixels(rng, [g for row in GRIDS for g in row]))


def test_window_order_matches_transformers():
    """Our window order and window boundaries equal transformers' (window_index,
    cu_window_seqlens) for several window sizes, image shapes and a two-frame grid, in the packed
    layout; the slots layout orders each image the same way inside its slot."""
    from transformers.vision_utils import get_vision_window_index

    grids = np.array([[1, 10, 14], [2, 6, 4], [1, 12, 10], [1, 2, 2], [1, 16, 8]])
    sizes = grids.prod(axis=1)
    for window_px, win in ((28, 1), (56, 2), (84, 3), (112, 4)):
        index, cu = get_vision_window_index(torch.as_tensor(grids), 2, window_px, 14)
        num = int(sizes.sum()) + 12  # 12 padding patches after the images
        padded = np.concatenate([grids, np.zeros((1, 3), int)])
        _, window, _, _, dest = windows.window_layout(padded, num, 2, win, slots=False)
        src = np.asarray(windows.inverse_order(dest))[0]
        real = int(sizes.sum())
        # Merged-token order: patch 4k of the window order is merged token window_index[k].
        np.testing.assert_array_equal(src[:real:4] // 4, index.numpy())
        np.testing.assert_array_equal(src[real:], np.arange(real, num))
        in_order = np.asarray(window)[0][src][:real]
        starts = np.flatnonzero(np.diff(in_order, prepend=-1)) if real else []
        np.testing.assert_array_equal(np.append(starts, real), cu.numpy())

        q = 256  # slots: every image in its own slot of 256 patches
        _, _, _, _, dest_s = windows.window_layout(padded, q, 2, win, slots=True)
        src_s = np.asarray(windows.inverse_order(dest_s))
        for i, size in enumerate(sizes):
            one, cu_one = get_vision_window_index(
                torch.as_tensor(grids[i : i + 1]), 2, window_px, 14
            )
            np.testing.assert_array_equal(src_s[i, :size:4] // 4, one.numpy())
            np.testing.assert_array_equal(src_s[i, size:], np.arange(size, q))


def test_logits_match_transformers_packed_and_slots(pair):
    """Left-padded batch with a text-only row, a one-image row and a two-image row of different
    sizes: logits equal transformers' in the packed layout (the call contract) and in the
    per-image slots layout, and the two layouts agree."""
    torch_model, model, path = pair
    ids, mask, pv, grid = batch(0)
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    packed = np.asarray(model(ids, mask, pv, grid))
    err = rel_err(packed, ref, mask)
    print(f"qwen2.5-vl packed logits rel err {err:.2e}")
    assert err <= TOL
    if "untied" in path:
        return  # the image layout does not depend on the head (slots checked on the tied model)

    slots, slot_grid = buckets.pad_images(pv, grid, (64, 256), (4,), layout="slots")
    assert slots.shape == (4, 256, 1176)  # 3 images + one padding slot; the largest needs 140
    ids_b, mask_b = buckets.pad_left(ids, mask, 64, tiny_hf.PAD)
    forward = nnx.jit(lambda m, *a: m.forward(*a))
    logits = forward(model, jnp.asarray(ids_b), jnp.asarray(mask_b), slots, slot_grid)
    logits = np.asarray(logits)[:, -ids.shape[1] :]
    err = rel_err(logits, ref, mask)
    print(f"qwen2.5-vl slots logits rel err {err:.2e}")
    assert err <= TOL
    assert rel_err(logits, packed, mask) <= TOL


def test_vision_tower_matches_transformers(pair):
    torch_model, model, path = pair
    if "untied" in path:
        pytest.skip("the vision tower does not depend on the head (checked on the tied model)")
    _, _, pv, grid = batch(1)
    with torch.no_grad():
        ref = torch_model.model.get_image_features(torch.as_tensor(pv), torch.as_tensor(grid))
    ref = torch.cat(ref.pooler_output).numpy()
    packed, packed_grid = buckets.pad_images(pv, grid, (512,), (4,), layout="packed")
    encode = nnx.jit(lambda m, p, g: m.encode_images(p, g))
    ours = np.asarray(encode(model, jnp.asarray(packed), jnp.asarray(packed_grid)))
    err = rel_err(ours[: ref.shape[0]], ref)
    print(f"qwen2.5-vl vision tower rel err {err:.2e}")
    assert err <= TOL


def test_save_model_loads_in_transformers(pair, tmp_path):
    """save_model writes a folder transformers' Qwen2_5_VLForConditionalGeneration loads with the
    same logits; load_model reads it back to the same parameters."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, model, path = pair
    if "untied" in path:
        pytest.skip("one round trip is enough (tied model)")
    hf.save_model(model, str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "qwen2_5_vl"
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    ids, mask, pv, grid = batch(2)
    err = rel_err(tiny_hf.hf_logits(back, ids, mask, pv, grid), model(ids, mask, pv, grid), mask)
    print(f"qwen2.5-vl save_model -> from_pretrained rel err {err:.2e}")
    assert err <= TOL
    again = hf.load_model(str(tmp_path), **BUCKETS)
    assert again.config == model.config
    for a, b in zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.state(model))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


HUB = {  # the flat hub config.json of Qwen/Qwen2.5-VL-7B-Instruct (keys as published)
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}  # fmt: skip
HUB_3B = dict(HUB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
              num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True,
              vocab_size=151936,
              vision_config=dict(HUB["vision_config"], out_hidden_size=2048))  # fmt: skip


def test_hub_configs_presets_and_class_defaults():
    """The hub files read as the presets and round-trip; keys a file leaves out take the values
    transformers' configuration classes give them."""
    from transformers import Qwen2_5_VLConfig

    for hub, name in ((HUB, "qwen2_5_vl-7b"), (HUB_3B, "qwen2_5_vl-3b")):
        config = QwenVLConfig.from_hf(hub)
        assert config == get_preset(name)
        assert QwenVLConfig.from_hf(config.to_hf()) == config
    # A sparse file: transformers fills the vision tower and the rest from its class defaults.
    sparse = {"model_type": "qwen2_5_vl", "vocab_size": 1000, "hidden_size": 3584,
              "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 28}  # fmt: skip
    ours, theirs = QwenVLConfig.from_hf(sparse), Qwen2_5_VLConfig(**sparse)
    v, t = theirs.vision_config, theirs.text_config
    assert (ours.vision_depth, ours.vision_embed_dim, ours.vision_num_heads) == (
        v.depth, v.hidden_size, v.num_heads)  # fmt: skip
    assert ours.vision_mlp_dim == v.intermediate_size and ours.window_size == v.window_size
    assert ours.fullatt_block_indexes == tuple(v.fullatt_block_indexes)
    assert ours.tokens_per_second == v.tokens_per_second
    assert ours.vision_rope_theta == v.rope_parameters["rope_theta"]
    assert ours.rms_norm_eps == t.rms_norm_eps and ours.num_key_value_heads == 28
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.rope_theta == t.rope_parameters["rope_theta"]


@pytest.mark.parametrize("name", ["qwen2_5_vl-3b", "qwen2_5_vl-7b"])
def test_param_counts_equal_transformers(name):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = get_preset(name)
    abstract = nnx.eval_shape(lambda: QwenVL(config, rngs=nnx.Rngs(0)))
    ours = count_params(nnx.state(abstract, nnx.Param))
    with torch.device("meta"):
        ref = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config.to_hf()))
    theirs = sum(p.numel() for p in ref.parameters())  # tied weights counted once
    print(f"{name}: {ours:,} parameters")
    assert ours == theirs


def test_bad_inputs_fail_at_load_naming_file_and_key(pair, tmp_path, tokenizer_dir):
    _, _, path = pair
    if "untied" in path:
        pytest.skip("checked on the tied model's files")
    tensors = load_file(f"{path}/model.safetensors")
    config = json.loads(open(f"{path}/config.json").read())

    def folder(name, tensors, config, processor=None):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        if processor is not None:
            (d / "preprocessor_config.json").write_text(json.dumps(processor))
        return str(d)

    bad = folder("llava", tensors, dict(config, model_type="llava"))
    with pytest.raises(ValueError, match=r"config\.json.*'llava'.*qwen2_vl, qwen2_5_vl"):
        hf.load_model(bad)
    # Block 0 attends in windows; its attention and SwiGLU gate tensors are required.
    for key in ("visual.blocks.0.attn.qkv.weight", "visual.blocks.0.mlp.gate_proj.bias"):
        assert key in tensors
        short = {k: v for k, v in tensors.items() if k != key}
        name = key.replace(".", "_")
        with pytest.raises(KeyError, match=rf"{name}.*{key.replace('.', chr(92) + '.')}"):
            hf.load_model(folder(name, short, config))
    processor = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    bad = folder("patch16", tensors, config, processor)
    with pytest.raises(ValueError, match=r"preprocessor_config\.json: patch_size is 16.*=14"):
        hf.load_model(bad)
    ok = folder("patch14", tensors, config, dict(processor, patch_size=14))
    assert hf.read_config(ok).patch_size == 14

    # The trainer's start-up check: the tokenizer folder's processor against the model.
    import shutil

    from configs import base
    from vrft_jax import main

    run = base.get_config()
    run.model_init = ok
    run.tokenizer = str(tmp_path / "tokenizer")
    shutil.copytree(tokenizer_dir, run.tokenizer)
    main.check_model_files(run)  # the shipped Qwen2-VL processor: 14 px patches, merge 2
    with open(f"{run.tokenizer}/preprocessor_config.json", "w") as f:
        json.dump(dict(json.load(open(f"{tokenizer_dir}/preprocessor_config.json")),
                       merge_size=4), f)  # fmt: skip
    with pytest.raises(ValueError, match=r"tokenizer/preprocessor_config\.json: merge_size is 4"):
        main.check_model_files(run)


def test_model_init_folder_gives_the_family(pair):
    """The trainer's model set-up reads the family from model_init's config.json."""
    from configs import base
    from vrft_jax import model_setup

    _, model, path = pair
    if "untied" in path:
        pytest.skip("checked on the tied model's folder")
    config = base.get_config()
    config.model_init = path  # config.model.preset stays "tiny" (a Qwen2-VL): the folder decides
    built = model_setup.build_model(config)
    assert built.config.model_type == "qwen2_5_vl" and built.config.window_size == 84
    assert type(built.visual).__name__ == "WindowVisionTower"
    np.testing.assert_array_equal(
        np.asarray(built.visual.blocks.gate_kernel[...]),
        np.asarray(model.visual.blocks.gate_kernel[...]),
    )
