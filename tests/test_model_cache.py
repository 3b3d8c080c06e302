"""KV-cache decoding equals the full forward (prefill with images, left padding, then steps)."""

import jax
import jax.numpy as jnp
import numpy as np
import tiny_hf
from flax import nnx

from vrft_jax.models import get_rope_index, init_cache, random_qwen2_vl


@nnx.jit
def _prefill(model, ids, pixel_values, grid, mask, kv_mask, cache):
    image_embeds = None if pixel_values is None else model.encode_images(pixel_values, grid)
    positions, deltas = get_rope_index(ids, mask, grid, model.config)
    hidden, cache = model.decode(model.embed(ids, image_embeds), positions, kv_mask, cache, 0)
    return model.lm_logits(hidden[:, -1]), cache, deltas


@nnx.jit
def _step(model, tokens, positions, kv_mask, cache, index):
    hidden, cache = model.decode(model.embed(tokens), positions, kv_mask, cache, index)
    return model.lm_logits(hidden), cache


def _batch(rng):
    g0, g1 = [(1, 4, 6)], [(1, 6, 4), (1, 4, 4)]
    rows = [tiny_hf.image_prompt(rng, 3, g0, 4), tiny_hf.image_prompt(rng, 2, g1, 2)]
    ids, mask = tiny_hf.left_pad(rows)
    pv, grid = tiny_hf.random_pixels(rng, g0 + g1)
    # Pad the packed patches/images as the buckets would (extra patches, a (0,0,0) grid row).
    pv = np.concatenate([pv, np.zeros((16, pv.shape[1]), np.float32)])
    grid = np.concatenate([grid, np.zeros((1, 3), np.int64)])
    return ids, mask, pv, grid


def test_cache_decode_matches_full_forward():
    model = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=0), seed=0)
    rng = np.random.default_rng(0)
    ids, mask, pv, grid = _batch(rng)
    bsz, plen = ids.shape
    steps = 4
    new = rng.integers(0, 151000, (bsz, steps))
    full_ids = np.concatenate([ids, new], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new)], axis=1)
    ref = np.asarray(nnx.jit(lambda m, *a: m.forward(*a))(model, full_ids, full_mask, pv, grid))

    cache = init_cache(model.config, bsz, plen + steps, dtype=jnp.float32)
    kv_mask = jnp.asarray(full_mask > 0)
    logits, cache, deltas = _prefill(model, ids, pv, grid, mask, kv_mask, cache)
    got = [np.asarray(logits)]
    want = [ref[:, plen - 1]]
    n_real = mask.sum(axis=1)

    for k in range(steps):
        pos = jnp.broadcast_to((n_real + np.asarray(deltas) + k)[None, :, None], (3, bsz, 1))
        tokens = jnp.asarray(new[:, k : k + 1])
        logits, cache = _step(model, tokens, pos.astype(jnp.int32), kv_mask, cache, plen + k)
        got.append(np.asarray(logits[:, 0]))
        want.append(ref[:, plen + k])
    got, want = np.stack(got), np.stack(want)
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"cache decode rel err {err:.2e}")
    assert err <= 1e-5
    assert cache["k"].shape == (model.config.num_hidden_layers, bsz, plen + steps, 2, 16)


def test_cache_without_images_and_bf16_cache():
    """Text-only rows, a bf16 cache (the default dtype) stays close to the float32 forward."""
    model = tiny_hf.rescale_params_(random_qwen2_vl("tiny", seed=1), seed=1)
    rng = np.random.default_rng(1)
    ids, mask = tiny_hf.left_pad([list(rng.integers(0, 151000, n)) for n in (9, 5)])
    ref = np.asarray(nnx.jit(lambda m, i, k: m.forward(i, k))(model, ids, mask))
    positions, _ = jax.jit(get_rope_index, static_argnums=(2, 3))(ids, mask, None, model.config)
    cache = init_cache(model.config, 2, ids.shape[1] + 3)
    assert cache["k"].dtype == jnp.bfloat16
    kv_mask = jnp.asarray(np.pad(mask, ((0, 0), (0, 3))) > 0)
    # Prefill in two chunks to exercise multi-token writes at a non-zero cache_index.
    half = ids.shape[1] // 2
    l1, cache = _step(model, ids[:, :half], positions[:, :, :half], kv_mask, cache, 0)
    l2, cache = _step(model, ids[:, half:], positions[:, :, half:], kv_mask, cache, half)
    got = np.asarray(jnp.concatenate([l1, l2], axis=1))
    m = mask > 0
    err = np.abs(got[m] - ref[m]).max() / np.abs(ref[m]).max()
    print(f"bf16-cache rel err {err:.2e}")
    assert err <= 2e-2
