"""The rollout sampler's two jitted programs: `prefill` and the `decode` while_loop.

Pure functions of (graphdef, params, arrays); the host side (shape buckets, padding, the compiled
programs, the public `generate`) is vrft_jax.generation.sampler.
- `prefill`: encode each prompt's images once, run the B prompts through the decoder into a KV
  cache [L, B, P, K, D], fork it G times (jnp.repeat on the batch axis: the G copies never get
  their own prefill) and pad it to P + C columns. With per_layer_cache it is handed on as L
  per-layer buffers [N, K, P + C, D].
- `decode` (state donated): a while_loop that samples a token from the current logits, records it
  with its raw-policy log-prob, feeds it back through the decoder with the cache, and stops when C
  tokens are written or every row has emitted an EOS id. With a per-layer cache the layer weights
  are split out of their stacked arrays once, before the loop (bench/decode_cost.py shows what a
  step costs).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from vrft_jax.generation.sampling_rules import SamplingRule
from vrft_jax.models.qwen2_vl import init_cache
from vrft_jax.models.rope import get_rope_index


@struct.dataclass
class SamplingState:
    """Loop state of the decode while_loop (a pytree; donated to the decode program).

    step: int32 [] next completion column to fill (= decode steps done).
    logits: float32 [N, V] raw next-token logits of each row.
    tokens: int32 [N, C] sampled tokens, pad after a row's stop token.
    mask: bool [N, C] True up to and including the stop token.
    logprobs: float32 [N, C] raw-policy log-prob of each sampled token (0 where mask is False).
    done: bool [N] the row has emitted an EOS id (dummy rows start done).
    cache: {"k", "v"} [L, N, P + C, K, D] KV cache; prompt at columns 0..P-1.
    kv_mask: bool [N, P + C] real prompt columns and all completion columns.
    next_pos: int32 [N] M-RoPE position of the token fed next (real length + rope delta + step).
    rng: the sampling key; step k draws with fold_in(rng, k).
    """

    step: jax.Array
    logits: jax.Array
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    done: jax.Array
    cache: dict
    kv_mask: jax.Array
    next_pos: jax.Array
    rng: jax.Array


def prefill(
    graphdef,
    params,
    input_ids,
    attention_mask,
    pixel_values,
    image_grid_thw,
    real_rows,
    rng,
    *,
    num_samples: int,
    max_new_tokens: int,
    pad_token_id: int,
    cache_dtype,
    per_layer_cache: bool = False,
    row_sharding=None,
):
    """Padded prompts [B, P] (+ packed images) -> SamplingState of N = B*G rows.

    per_layer_cache: hand decode L separate cache buffers per k/v (see `decode`).
    row_sharding: a NamedSharding splitting the N rows over the mesh's batch axes, or None. The
    state (the KV cache above all) is then split by rows, so each device reads only its rows'
    cache every decode step instead of all of it."""
    model = nnx.merge(graphdef, params)
    c, g = model.config, num_samples
    bsz, plen = input_ids.shape
    image_embeds = None
    if pixel_values is not None:
        image_embeds = model.encode_images(pixel_values, image_grid_thw)
    x = model.embed(input_ids, image_embeds)
    positions, deltas = get_rope_index(input_ids, attention_mask, image_grid_thw, c)
    prompt_mask = attention_mask > 0
    cache = init_cache(c, bsz, plen, cache_dtype)
    hidden, cache = model.decode(x, positions, prompt_mask, cache, 0)
    logits = model.lm_logits(hidden[:, -1])  # [B, V]; left padding puts every last token at P-1

    # Fork: G copies of each prompt's cache, logits and positions; room for C new columns.
    def fork(a, axis=0):
        return jnp.repeat(a, g, axis=axis)

    cols = ((0, 0), (0, 0), (0, max_new_tokens), (0, 0), (0, 0))
    cache = {k: jnp.pad(fork(v, axis=1), cols) for k, v in cache.items()}
    if per_layer_cache:  # L buffers [N, K, P + C, D] each (Decoder's per-layer form)
        cache = {
            k: tuple(v[i].transpose(0, 2, 1, 3) for i in range(c.num_hidden_layers))
            for k, v in cache.items()
        }
    n, ctok = bsz * g, max_new_tokens
    kv_mask = jnp.concatenate([fork(prompt_mask), jnp.ones((n, ctok), bool)], axis=1)
    state = SamplingState(
        step=jnp.zeros((), jnp.int32),
        logits=fork(logits),
        tokens=jnp.full((n, ctok), pad_token_id, jnp.int32),
        mask=jnp.zeros((n, ctok), bool),
        logprobs=jnp.zeros((n, ctok), jnp.float32),
        done=fork(~real_rows),
        cache=cache,
        kv_mask=kv_mask,
        next_pos=fork(jnp.sum(prompt_mask, axis=1).astype(jnp.int32) + deltas),
        rng=rng,
    )
    return state if row_sharding is None else split_rows(state, row_sharding)


def split_rows(state: SamplingState, rows):
    """Constrains every [N, ...] array of the state to `rows` (a stacked cache [L, N, ...] on its
    second axis)."""
    n = state.tokens.shape[0]
    spec = rows.spec[0]

    def constrain(x, axis=0):
        parts = [None] * x.ndim
        parts[axis] = spec
        target = jax.sharding.NamedSharding(rows.mesh, jax.sharding.PartitionSpec(*parts))
        return jax.lax.with_sharding_constraint(x, target)

    stacked = not isinstance(state.cache["k"], (tuple, list))
    cache = jax.tree.map(lambda x: constrain(x, 1 if stacked else 0), state.cache)
    arrays = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    others = {
        k: constrain(x) for k, x in arrays.items() if k != "cache" and x.ndim and x.shape[0] == n
    }
    return state.replace(cache=cache, **others)


def decode_step(
    model, s: SamplingState, eos_ids, *, rule: SamplingRule, pad_token_id: int, layers=None
):
    """One step: pick a token per row from s.logits, record it, run it through the decoder.

    eos_ids: int32 [E] stop ids (traced, so changing them does not recompile). layers: the
    decoder's per-layer parameters (Decoder.split_layers) when the cache is per-layer."""
    plen = s.kv_mask.shape[1] - s.tokens.shape[1]
    tok, logp = rule.next_tokens_and_logprobs(s.logits, jax.random.fold_in(s.rng, s.step))
    active = ~s.done
    tok = jnp.where(active, tok, pad_token_id)
    logp = jnp.where(active, logp, 0.0)
    at = (0, s.step)
    done = s.done | jnp.any(tok[:, None] == eos_ids[None, :], axis=1)

    x = model.embed(tok[:, None])
    n = tok.shape[0]
    pos = jnp.broadcast_to(s.next_pos[None, :, None], (3, n, 1))  # same value on t/h/w streams
    hidden, cache = model.language_model(x, pos, s.kv_mask, s.cache, plen + s.step, layers)
    return s.replace(
        step=s.step + 1,
        logits=model.lm_logits(hidden[:, 0]),
        tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], at),
        mask=jax.lax.dynamic_update_slice(s.mask, active[:, None], at),
        logprobs=jax.lax.dynamic_update_slice(s.logprobs, logp[:, None].astype(jnp.float32), at),
        done=done,
        cache=cache,
        next_pos=s.next_pos + 1,
    )


def _layers(model, state: SamplingState):
    """Per-layer parameters, split once outside the loop, when the cache is per-layer."""
    per_layer = isinstance(state.cache["k"], (tuple, list))
    return model.language_model.split_layers() if per_layer else None


def decode(graphdef, params, state: SamplingState, eos_ids, *, rule, pad_token_id):
    """Runs decode_step until C tokens are written or every row is done (early exit).

    With a per-layer cache (prefill's per_layer_cache) the layer weights are sliced out of their
    stacked arrays once, here, and the loop body runs an unrolled layer loop that reads each
    weight and cache buffer in place: no per-step slice copies (one extra copy of the layer
    weights lives for the duration of the loop)."""
    model = nnx.merge(graphdef, params)
    ctok = state.tokens.shape[1]
    layers = _layers(model, state)

    def cond(s):
        return (s.step < ctok) & ~jnp.all(s.done)

    def body(s):
        return decode_step(model, s, eos_ids, rule=rule, pad_token_id=pad_token_id, layers=layers)

    return jax.lax.while_loop(cond, body, state)


def _step(graphdef, params, state, eos_ids, **kwargs):
    model = nnx.merge(graphdef, params)
    return decode_step(model, state, eos_ids, layers=_layers(model, state), **kwargs)
