"""Rollout sampler: one jitted prefill, then one jitted `lax.while_loop` decode over a KV cache.

Flow for B prompts and G samples each (N = B*G rows; rows i*G .. i*G+G-1 belong to prompt i):
1. Host: pad to shape buckets (prompt length P, packed patches S, image count I, prompt count B) so
   a run compiles a bounded number of programs; dummy prompts are dropped from the output.
2. `prefill` (jitted): encode each prompt's images once, run the B prompts through the decoder into
   a KV cache [L, B, P, K, D], then fork it G times (jnp.repeat on the batch axis) and pad it to
   P + C columns. The G copies never get their own prefill. By default (unroll_decode) the cache
   is handed on as L per-layer buffers [N, K, P + C, D].
3. `decode` (jitted, state donated): a while_loop that samples a token from the current logits,
   records it with its raw-policy log-prob, feeds it back through the decoder with the cache, and
   stops when C tokens are written or every row has emitted an EOS id. The layer weights are split
   out of their stacked arrays once, before the loop (bench/decode_cost.py shows the step's cost).

Parameters are arguments of both programs (graphdef static, state traced), so new parameters every
training step reuse the compiled programs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vrft_jax import buckets
from vrft_jax.models.qwen2_vl import init_cache
from vrft_jax.models.rope import get_rope_index
from vrft_jax.sampling import SamplingRule

DEFAULT_BATCH_BUCKETS = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
)  # mirrors configs/base.py sampler.batch_buckets
EOS_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PAD_TOKEN_ID = 151643


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


@dataclasses.dataclass
class SampleOutput:
    """Completions of N = B*G rows (rows i*G .. i*G+G-1 from prompt i); C = max_new_tokens.

    tokens int32 [N, C], mask bool [N, C], logprobs float32 [N, C]; steps = decode steps run.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    steps: int


# ---- Jitted programs (pure functions of graphdef, params and arrays) -----------------------------


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
):
    """Padded prompts [B, P] (+ packed images) -> SamplingState of N = B*G rows.

    per_layer_cache: hand decode L separate cache buffers per k/v (see `decode`)."""
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
    return SamplingState(
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


# ---- Host-side sampler ---------------------------------------------------------------------------


class Sampler:
    """Holds the jitted prefill/decode programs of one model structure (graphdef) and the buckets.

    Call it with the current parameters every step: `sampler(params, input_ids, ...)`; parameters
    are traced arguments, so changing them never recompiles. unroll_decode (default True) runs the
    decode over per-layer weights and cache buffers (see `decode`); False keeps the stacked ones.
    `compile_count()` counts programs compiled by this sampler (prefill and decode together).
    """

    def __init__(
        self,
        graphdef,
        config,
        *,
        prompt_buckets=buckets.DEFAULT_PROMPT_BUCKETS,
        patch_buckets=buckets.DEFAULT_PATCH_BUCKETS,
        image_buckets=buckets.DEFAULT_IMAGE_BUCKETS,
        batch_buckets=DEFAULT_BATCH_BUCKETS,
        cache_dtype=None,
        unroll_decode=True,
    ):
        self.graphdef = graphdef
        self.config = config
        self.prompt_buckets = tuple(prompt_buckets)
        self.patch_buckets = tuple(patch_buckets)
        self.image_buckets = tuple(image_buckets)
        self.batch_buckets = tuple(batch_buckets)
        # The cache is kept in the compute dtype (bf16 for real runs); a float32 model keeps a
        # float32 cache so its decode matches its full forward exactly.
        self.cache_dtype = jnp.dtype(cache_dtype or config.jnp_compute_dtype)
        # Decode over per-layer weights and cache buffers (an unrolled layer loop that reads
        # every buffer in place; costs one extra copy of the layer weights while the loop runs),
        # or over the stacked ones (config.scan_layers picks a scanned or unrolled layer loop,
        # both of which slice the stacked weights and cache every step; copies on CPU XLA).
        self.unroll_decode = bool(unroll_decode)
        self._compiles = 0
        static = ("num_samples", "max_new_tokens", "pad_token_id", "cache_dtype", "per_layer_cache")
        self._prefill = jax.jit(self._counted(prefill), static_argnums=0, static_argnames=static)
        # Donating the loop state lets XLA update the KV cache in place (no second copy).
        self._decode = jax.jit(
            self._counted(decode),
            static_argnums=0,
            static_argnames=("rule", "pad_token_id"),
            donate_argnums=2 if jax.default_backend() != "cpu" else (),
        )
        self.step = jax.jit(
            self._counted(_step),
            static_argnums=0,
            static_argnames=("rule", "pad_token_id"),
        )

    @classmethod
    def for_model(cls, model, **kwargs):
        """A Sampler for `model`'s structure, with the model's own prompt/patch/image buckets."""
        kw = dict(
            prompt_buckets=model.prompt_buckets,
            patch_buckets=model.patch_buckets,
            image_buckets=model.image_buckets,
        )
        kw.update(kwargs)
        return cls(nnx.graphdef(model), model.config, **kw)

    def _counted(self, fn):
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            self._compiles += 1  # Python side effect: runs once per trace, i.e. per compile
            buckets.note_trace(f"sampler.{fn.__name__}")
            return fn(*args, **kwargs)

        return traced

    def compile_count(self) -> int:
        return self._compiles

    def prepare(
        self,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        pad_token_id=PAD_TOKEN_ID,
    ):
        """Host padding to the buckets -> (ids [Bb, Pb], mask, pixel_values, grid, real_rows [Bb]).

        Dummy prompts (rows B..Bb-1) hold one real pad token so no attention row is empty.
        """
        c = self.config
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"sampler: input_ids must be [B, T], got shape {ids.shape}")
        bsz, seq = ids.shape
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"sampler: attention_mask {mask.shape} != input_ids {ids.shape}")
        if np.any(mask.sum(axis=1) == 0):
            raise ValueError("sampler: a prompt has no real token (attention_mask all 0)")
        if np.any(mask[:, -1] == 0):
            raise ValueError("sampler: prompts must be left-padded (attention_mask[:, -1] == 0)")
        ids, mask = buckets.pad_left(
            ids, mask, buckets.length_bucket(seq, self.prompt_buckets), pad_token_id
        )
        nb = buckets.bucket(bsz, self.batch_buckets, "prompt count")
        ids = np.concatenate([ids, np.full((nb - bsz, ids.shape[1]), pad_token_id, ids.dtype)])
        dummy_mask = np.zeros((nb - bsz, mask.shape[1]), mask.dtype)
        dummy_mask[:, -1] = 1
        mask = np.concatenate([mask, dummy_mask])
        real_rows = np.arange(nb) < bsz
        n_img_tokens = int(((ids == c.image_token_id) & (mask > 0)).sum())
        pv = grid = None
        if pixel_values is not None:
            pv, grid = buckets.pad_images(
                pixel_values, image_grid_thw, self.patch_buckets, self.image_buckets
            )
            expected = int(np.prod(grid, axis=1).sum()) // c.merge_unit
            if n_img_tokens != expected:
                raise ValueError(
                    f"sampler: {n_img_tokens} <|image_pad|> tokens but image_grid_thw "
                    f"gives {expected} image features"
                )
            pv, grid = jnp.asarray(pv, jnp.float32), jnp.asarray(grid)
        elif n_img_tokens:
            raise ValueError(f"sampler: {n_img_tokens} <|image_pad|> tokens but no pixel_values")
        return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), pv, grid, real_rows

    def start(
        self,
        params,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        *,
        max_new_tokens,
        num_samples=1,
        pad_token_id=PAD_TOKEN_ID,
        rng=None,
    ) -> SamplingState:
        """Pads, prefills once per prompt and forks: the SamplingState before the first token."""
        ids, mask, pv, grid, real_rows = self.prepare(
            input_ids, attention_mask, pixel_values, image_grid_thw, pad_token_id
        )
        return self._prefill(
            self.graphdef,
            params,
            ids,
            mask,
            pv,
            grid,
            jnp.asarray(real_rows),
            _key(rng),
            num_samples=int(num_samples),
            max_new_tokens=int(max_new_tokens),
            pad_token_id=int(pad_token_id),
            cache_dtype=self.cache_dtype,
            per_layer_cache=self.unroll_decode,
        )

    def run(
        self,
        params,
        state: SamplingState,
        rule: SamplingRule,
        eos_token_ids=EOS_TOKEN_IDS,
        pad_token_id=PAD_TOKEN_ID,
    ) -> SamplingState:
        """The decode while_loop from a `start` state (donated off CPU) -> the final state."""
        eos, pad = eos_array(eos_token_ids), int(pad_token_id)
        return self._decode(self.graphdef, params, state, eos, rule=rule, pad_token_id=pad)

    def __call__(
        self,
        params,
        input_ids,
        attention_mask=None,
        pixel_values=None,
        image_grid_thw=None,
        *,
        max_new_tokens,
        num_samples=1,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        eos_token_ids=EOS_TOKEN_IDS,
        pad_token_id=PAD_TOKEN_ID,
        rng=None,
    ) -> SampleOutput:
        if max_new_tokens < 1 or num_samples < 1:
            raise ValueError("sampler: max_new_tokens and num_samples must be >= 1")
        rule = SamplingRule(float(temperature), int(top_k), float(top_p))
        state = self.start(
            params,
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            max_new_tokens=max_new_tokens,
            num_samples=num_samples,
            pad_token_id=pad_token_id,
            rng=rng,
        )
        state = self.run(params, state, rule, eos_token_ids, pad_token_id)
        n = np.asarray(input_ids).shape[0] * num_samples  # dummy prompts' rows come last: drop them
        return SampleOutput(state.tokens[:n], state.mask[:n], state.logprobs[:n], int(state.step))


def eos_array(eos_token_ids):
    """int32 [E] stop ids (at least one)."""
    ids = np.asarray(list(eos_token_ids), np.int32).reshape(-1)
    if ids.size == 0:
        raise ValueError("sampler: eos_token_ids is empty (give at least one stop id)")
    return jnp.asarray(ids)


def _key(rng):
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, int):
        return jax.random.key(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)  # a raw uint32 [2] key (jax.random.PRNGKey)


# ---- Public contract -----------------------------------------------------------------------------

_SAMPLERS: dict = {}


def get_sampler(graphdef, config, **kwargs) -> Sampler:
    """A Sampler shared by every call with the same structure and options (its programs too)."""
    key = (graphdef, config, tuple(sorted(kwargs.items())))
    if key not in _SAMPLERS:
        _SAMPLERS[key] = Sampler(graphdef, config, **kwargs)
    return _SAMPLERS[key]


def compile_count() -> int:
    """Programs compiled by every shared Sampler (those of generate / generate_with_state)."""
    return sum(s.compile_count() for s in _SAMPLERS.values())


def generate_with_state(
    graphdef,
    params,
    config,
    input_ids,
    attention_mask,
    pixel_values=None,
    image_grid_thw=None,
    *,
    sampler_options=None,
    **kwargs,
) -> SampleOutput:
    """`generate` on already split (graphdef, params), e.g. the trainer's sharded parameters."""
    sampler = get_sampler(graphdef, config, **(sampler_options or {}))
    return sampler(params, input_ids, attention_mask, pixel_values, image_grid_thw, **kwargs)


def generate(
    model,
    input_ids,
    attention_mask,
    pixel_values=None,
    image_grid_thw=None,
    *,
    max_new_tokens,
    num_samples=1,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    eos_token_ids=EOS_TOKEN_IDS,
    pad_token_id=PAD_TOKEN_ID,
    rng=None,
) -> SampleOutput:
    """Samples num_samples completions per prompt from a Qwen2VL (hf.load_qwen2_vl's result).

    input_ids / attention_mask [B, T] (left-padded), pixel_values [S, 1176] and image_grid_thw
    [I, 3] as the processor returns them for the B prompts. temperature 0 is greedy.
    Returns SampleOutput with tokens int32 [N, C], mask bool [N, C], logprobs float32 [N, C],
    N = B * num_samples, C = max_new_tokens, rows i*G .. i*G+G-1 from prompt i.
    """
    graphdef, params = nnx.split(model)
    opts = dict(
        prompt_buckets=model.prompt_buckets,
        patch_buckets=model.patch_buckets,
        image_buckets=model.image_buckets,
    )
    return generate_with_state(
        graphdef,
        params,
        model.config,
        input_ids,
        attention_mask,
        pixel_values,
        image_grid_thw,
        sampler_options=opts,
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_ids=eos_token_ids,
        pad_token_id=pad_token_id,
        rng=rng,
    )
