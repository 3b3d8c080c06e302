"""The one forward shared by GRPO, SFT and the reference model: log-probs of completion tokens.

Sequences are a left-padded prompt (P columns) followed by a completion (C columns). The B prompts
are encoded once; the N = B*G sequences (the G samples of prompt b are rows b*G .. b*G+G-1) index
into the prompt-level arrays by row, so nothing is computed on G copies of an image:

  prompt_layout(...)    -> per-prompt arrays: which columns are <|image_pad|>, which image feature
                           each takes, M-RoPE positions [3, B, P] and the next position [B]
  rows_logprobs(...)    -> for any subset of sequences (a micro-batch), given their prompt index:
                           embeddings (text embed + gathered image features), positions (completion
                           column j continues at next_position + j on all 3 streams, as the full
                           forward and the sampler's decode steps do), decode, logits only at the
                           C completion positions, log-prob of each completion token
  completion_logprobs() -> the convenience of both on a model, for tests and simple callers

Only C rows of the 151,936-wide LM head are ever computed per sequence (hidden[:, P-1:P+C-1]).
All functions are jittable; `params` is an nnx.State or its pure dict, `graphdef` from nnx.split.

Mixed precision: the trainer keeps float32 master weights and runs every forward on
`cast_params(params, compute_dtype)`: the policy's training forward, the reference and old-policy
log-probs and the sampler all see the same rounded weights (the frozen reference IS that cast of
the initial weights), so at step 0 policy and reference log-probs are bit-identical.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from vrft_jax import grpo
from vrft_jax.models.qwen2_vl import deepstack_slots, merge_image_features
from vrft_jax.models.rope import get_rope_index


def cast_params(params, dtype):
    """Every floating-point leaf of a params pytree in `dtype` (integer leaves untouched).

    The one cast from master weights to compute weights (round to nearest even). An identity
    (the same arrays) when the leaves already have that dtype.
    """
    dtype = jnp.dtype(dtype)

    def cast(x):
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        return x.astype(dtype) if floating and x.dtype != dtype else x

    return jax.tree.map(cast, params)


def prompt_layout(config, prompt_ids, prompt_mask, image_grid_thw):
    """Prompt-level arrays needed to rebuild any sequence's inputs (no parameters involved).

    prompt_ids, prompt_mask int [B, P] (left padded); image_grid_thw int [I, 3] or None.
    Returns dict: is_image bool [B, P], feature int32 [B, P] (row of the packed image features the
    k-th <|image_pad|> in flat order takes, as Qwen2VL.embed does), positions int32 [3, B, P],
    next_position int32 [B] (max prompt position + 1: where the completion starts).
    """
    real = prompt_mask > 0
    is_image = (prompt_ids == config.image_token_id) & real
    feature = jnp.cumsum(is_image.reshape(-1)).reshape(is_image.shape) - 1
    positions, _ = get_rope_index(prompt_ids, prompt_mask, image_grid_thw, config)
    next_position = jnp.max(jnp.where(real[None], positions, -1), axis=(0, 2)) + 1
    return {
        "is_image": is_image,
        "feature": jnp.maximum(feature, 0).astype(jnp.int32),
        "positions": positions,
        "next_position": next_position.astype(jnp.int32),
    }


def encode_images(graphdef, params, pixel_values, image_grid_thw):
    """Packed image features [F, E] (None without images)."""
    if pixel_values is None:
        return None
    return nnx.merge(graphdef, params).encode_images(pixel_values, image_grid_thw)


def rows_logprobs(
    graphdef,
    params,
    prompt_ids,
    prompt_mask,
    layout,
    image_embeds,
    completion_ids,
    rows,
    *,
    with_entropy=False,
):
    """Log-probs of completion tokens for a set of sequences.

    prompt_ids, prompt_mask [B, P]; layout from `prompt_layout`; image_embeds [F, E] or None;
    completion_ids int [M, C]; rows int [M]: the prompt index of each sequence.
    Returns (logp float32 [M, C], entropy float32 [M, C] or None).
    """
    model = nnx.merge(graphdef, params)
    P = prompt_ids.shape[1]
    M, C = completion_ids.shape
    ids = jnp.concatenate([jnp.take(prompt_ids, rows, axis=0), completion_ids], axis=1)
    x = model.embed(ids, None)
    if image_embeds is not None:
        is_image = jnp.take(layout["is_image"], rows, axis=0)
        feats = jnp.take(image_embeds.astype(x.dtype), layout["feature"][rows], axis=0)
        prompt_x = merge_image_features(x[:, :P], is_image, feats)
        rest = x[:, P:]
        if prompt_x.ndim > rest.ndim:  # Qwen3-VL DeepStack slots (zero on the completion)
            rest = deepstack_slots(rest, prompt_x.shape[2] - 1)
        x = jnp.concatenate([prompt_x, rest], axis=1)
    prompt_pos = jnp.take(layout["positions"], rows, axis=1)  # [3, M, P]
    completion_pos = layout["next_position"][rows][:, None] + jnp.arange(C, dtype=jnp.int32)
    completion_pos = jnp.broadcast_to(completion_pos[None], (3, M, C))
    positions = jnp.concatenate([prompt_pos, completion_pos], axis=2)
    # The completion is attended in full; tokens after the stop token are masked in the loss.
    kv_mask = jnp.concatenate(
        [jnp.take(prompt_mask, rows, axis=0) > 0, jnp.ones((M, C), bool)], axis=1
    )
    hidden, _ = model.decode(x, positions, kv_mask)
    logits = model.lm_logits(hidden[:, P - 1 : P + C - 1])  # prediction of completion column j
    logp = grpo.token_logprobs(logits, completion_ids)
    return logp, (grpo.entropy(logits) if with_entropy else None)


def completion_logprobs(
    model,
    prompt_ids,
    prompt_mask,
    pixel_values,
    image_grid_thw,
    completion_ids,
    *,
    with_entropy=False,
):
    """logp [N, C] (and entropy [N, C] or None) of N = B*G completions of B prompts.

    model: a Qwen2VL, or a (graphdef, params) pair. pixel_values ([S, 1176] packed or [I, Q, 1176]
    slots) / image_grid_thw [I, 3] as the model's encode_images takes them (pad with
    vrft_jax.buckets.pad_images), or None.
    """
    if isinstance(model, tuple):
        graphdef, params = model
        config = nnx.merge(graphdef, params).config
    else:
        graphdef, params = nnx.split(model)
        config = model.config
    B, N = prompt_ids.shape[0], completion_ids.shape[0]
    if N % B:
        raise ValueError(f"policy: {N} completions do not split into {B} prompts")
    layout = prompt_layout(config, prompt_ids, prompt_mask, image_grid_thw)
    image_embeds = encode_images(graphdef, params, pixel_values, image_grid_thw)
    rows = jnp.repeat(jnp.arange(B, dtype=jnp.int32), N // B)
    return rows_logprobs(
        graphdef,
        params,
        prompt_ids,
        prompt_mask,
        layout,
        image_embeds,
        completion_ids,
        rows,
        with_entropy=with_entropy,
    )
