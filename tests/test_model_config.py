"""Config parsing, presets, parameter counts (jax.eval_shape), buckets and the compile counter."""

import numpy as np
import pytest
import tiny_hf
from flax import nnx
from numerics import assert_close_to_scale

from vrft_jax import buckets
from vrft_jax.models import Qwen2VL, Qwen2VLConfig, count_params, get_preset, random_qwen2_vl
from vrft_jax.models import qwen2_vl as qwen2_vl_module

HUB_2B = {  # the flat 4.x layout of the hub config.json
    "model_type": "qwen2_vl",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "tie_word_embeddings": True,
    "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4,
                      "hidden_size": 1536, "in_chans": 3, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2},
}  # fmt: skip


@pytest.mark.parametrize(
    "preset,expected", [("2b", 2_208_985_600), ("7b", 8_291_375_616)], ids=["2b", "7b"]
)
def test_param_counts_eval_shape(preset, expected):
    abstract = nnx.eval_shape(lambda: Qwen2VL(get_preset(preset), rngs=nnx.Rngs(0)))
    assert count_params(nnx.state(abstract, nnx.Param)) == expected


def test_from_hf_flat_nested_and_round_trip():
    flat = Qwen2VLConfig.from_hf(HUB_2B)
    assert flat == get_preset("2b")
    assert Qwen2VLConfig.from_hf(flat.to_hf()) == flat
    hf_cfg = tiny_hf.tiny_hf_config(tie=False).to_dict()  # nested transformers-5 layout
    nested = Qwen2VLConfig.from_hf(hf_cfg)
    assert nested == get_preset("tiny", tie_word_embeddings=False)
    with pytest.raises(ValueError, match="unsupported rope"):
        Qwen2VLConfig.from_hf(dict(HUB_2B, rope_scaling={"type": "linear", "factor": 2.0}))
    with pytest.raises(ValueError, match="model_type"):
        Qwen2VLConfig.from_hf(dict(HUB_2B, model_type="llama"))
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("72b")


def test_bucket_helpers():
    assert buckets.bucket(65, (64, 128)) == 128
    with pytest.raises(ValueError, match="exceeds the largest bucket 128"):
        buckets.bucket(129, (64, 128))
    assert buckets.length_bucket(300, (64, 128)) == 384
    ids, mask = buckets.pad_left(np.array([[5, 6, 7]]), None, 5, pad_id=0)
    np.testing.assert_array_equal(ids, [[0, 0, 5, 6, 7]])
    np.testing.assert_array_equal(mask, [[0, 0, 1, 1, 1]])
    pv, grid = buckets.pad_images(np.ones((24, 4)), [[1, 4, 6]], (16, 32), (2,))
    assert pv.shape == (32, 4) and pv[24:].sum() == 0
    np.testing.assert_array_equal(grid, [[1, 4, 6], [0, 0, 0]])
    with pytest.raises(ValueError, match="image_grid_thw sums to 24"):
        buckets.pad_images(np.ones((20, 4)), [[1, 4, 6]])


def test_pad_images_layouts():
    """auto picks slots when they hold no more patches than the packed bucket, or when the packed
    patches exceed every bucket; each image starts its own slot."""
    grids = [[1, 4, 6], [1, 2, 8], [1, 4, 4]]  # 24 + 16 + 16 patches
    pv = np.arange(1, 57, dtype=np.float32)[:, None].repeat(2, 1)
    slots, grid = buckets.pad_images(pv, grids, (32,), (4,))
    assert slots.shape == (4, 32, 2)  # 56 packed patches exceed the 32 bucket: slots
    packed, _ = buckets.pad_images(pv, grids, (32, 64), (4,))
    assert packed.shape == (64, 2)  # 4 slots x 32 = 128 > 64 packed: packed
    np.testing.assert_array_equal(slots[0, :24, 0], np.arange(1, 25))
    np.testing.assert_array_equal(slots[1, :16, 0], np.arange(25, 41))
    np.testing.assert_array_equal(slots[2, :16, 0], np.arange(41, 57))
    assert slots[0, 24:].sum() == 0 and slots[3].sum() == 0
    np.testing.assert_array_equal(grid[3], [0, 0, 0])
    same_size, _ = buckets.pad_images(np.ones((64, 2)), [[1, 4, 4]] * 4, (16, 64), (4,))
    assert same_size.shape == (4, 16, 2)  # 4 x 16 == 64: slots
    forced, _ = buckets.pad_images(np.ones((64, 2)), [[1, 4, 4]] * 4, (16, 64), (4,), "packed")
    assert forced.shape == (64, 2)
    with pytest.raises(ValueError, match="patches of one image 24 exceeds the largest bucket 16"):
        buckets.pad_images(pv, grids, (16,), (4,))
    with pytest.raises(ValueError, match="auto, packed or slots"):
        buckets.pad_images(pv, grids, layout="ragged")


def test_defaults_mirror_base_config():
    from configs.base import get_config

    c = get_config()
    assert tuple(c.input.prompt_buckets) == buckets.DEFAULT_PROMPT_BUCKETS
    assert tuple(c.input.patch_buckets) == buckets.DEFAULT_PATCH_BUCKETS


def test_twenty_batches_compile_at_most_bucket_count():
    """Varying image sizes and prompt lengths inside the buckets: <= #buckets programs."""
    prompt_b, patch_b, image_b = (48, 96), (64, 128), (2,)
    model = random_qwen2_vl(
        "tiny", seed=0, prompt_buckets=prompt_b, patch_buckets=patch_b, image_buckets=image_b
    )
    rng = np.random.default_rng(0)
    before = qwen2_vl_module.compile_count()
    used = set()
    for _ in range(20):
        grids = [(1, 2 * int(rng.integers(1, 5)), 2 * int(rng.integers(1, 5))) for _ in range(2)]
        rows = [tiny_hf.image_prompt(rng, int(rng.integers(1, 60)), [g], 2) for g in grids]
        ids, mask = tiny_hf.left_pad(rows)
        pv, grid = tiny_hf.random_pixels(rng, grids)
        logits = model(ids, mask, pv, grid)
        assert logits.shape == (*ids.shape, model.config.vocab_size)
        assert np.isfinite(np.asarray(logits[mask > 0])).all()
        used.add((buckets.length_bucket(ids.shape[1], prompt_b), buckets.bucket(len(pv), patch_b)))
    compiles = qwen2_vl_module.compile_count() - before
    print(f"20 batches: {compiles} compiles, {len(used)} bucket combinations used")
    assert len(used) >= 2  # the loop really crossed buckets
    assert compiles == len(used) <= len(prompt_b) * len(patch_b) * len(image_b)


def test_scan_unroll_and_remat_agree_with_gradients():
    """scan_layers=False and remat="dots" give the same loss and gradients as the default."""
    import jax
    import jax.numpy as jnp

    base = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=3), seed=3)
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 151000, (1, 12)))
    mask = jnp.ones_like(ids)
    state = nnx.state(base, nnx.Param)

    def run(**changes):
        config = base.config.replace(**changes)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0))))

        @jax.jit
        def loss_fn(params):
            logits = nnx.merge(graphdef, params).forward(ids, mask)
            return -jnp.mean(jax.nn.log_softmax(logits)[0, :-1, ids[0, 1:]].diagonal())

        loss, grads = jax.value_and_grad(loss_fn)(state)
        return loss, jax.tree.leaves(grads)

    ref_loss, ref_grads = run()
    for changes in ({"scan_layers": False}, {"remat": "dots"}):
        loss, grads = run(**changes)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            # Scan, unroll and remat may order float32 sums differently (remat re-fuses the
            # recomputed forward). A gradient element comes out of a chain of sums: the softmax
            # normaliser over V = 151,936 logits (~log2(V) = 17 ulps when reordered) and, for
            # each of the 2 layers forward and backward, dots of K <= 128 terms (~log2(K) = 7
            # ulps each): ~45 ulps of the leaf's largest gradient, so 64 (7.6e-6 relative).
            # Measured: 21 ulps on a Xeon; EPYC failed the old atol=1e-6 by 2.3e-6 (~10-20).
            assert_close_to_scale(g, r, ulps=64, err_msg=str(changes))
