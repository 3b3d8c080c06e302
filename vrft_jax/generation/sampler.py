"""Rollout sampler, host side: shape buckets, the compiled programs, and the public `generate`.

Flow for B prompts and G samples each (N = B*G rows; rows i*G .. i*G+G-1 belong to prompt i):
1. Host (`Sampler.prepare`): pad to shape buckets (prompt length P, images, prompt count B) so a
   run compiles a bounded number of programs; dummy prompts are dropped from the output.
2. `decode_loop.prefill` (jitted): encode each prompt's images once, prefill the B prompts into a KV
   cache and fork it G times (the G copies never get their own prefill).
3. `decode_loop.decode` (jitted, state donated): the `lax.while_loop` that samples, records each
   token's raw-policy log-prob and feeds it back through the cache until C tokens or every row
   has emitted an EOS id.

Parameters are arguments of both programs (graphdef static, state traced), so new parameters every
training step reuse the compiled programs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from vrft_jax import buckets, sharding
from vrft_jax.generation.decode_loop import SamplingState, _step, decode, prefill
from vrft_jax.generation.sampling_rules import SamplingRule

EOS_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PAD_TOKEN_ID = 151643


@dataclasses.dataclass
class SampleOutput:
    """Completions of N = B*G rows (rows i*G .. i*G+G-1 from prompt i); C = max_new_tokens.

    tokens int32 [N, C], mask bool [N, C], logprobs float32 [N, C]; steps = decode steps run.
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    steps: int


# ---- Host-side sampler ---------------------------------------------------------------------------


class Sampler:
    """Holds the jitted prefill/decode programs of one model structure (graphdef) and the buckets.

    Call it with the current parameters every step: `sampler(params, input_ids, ...)`; parameters
    are traced arguments, so changing them never recompiles. unroll_decode (default True) runs the
    decode over per-layer weights and cache buffers (see `decode`); False keeps the stacked ones.
    batch_buckets: padded prompt counts (the trainer passes config.sampler.batch_buckets); None
    pads nothing, so each distinct prompt count compiles its own programs.
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
        batch_buckets=None,
        cache_dtype=None,
        unroll_decode=True,
    ):
        self.graphdef = graphdef
        self.config = config
        self.prompt_buckets = tuple(prompt_buckets)
        self.patch_buckets = tuple(patch_buckets)
        self.image_buckets = tuple(image_buckets)
        self.batch_buckets = tuple(batch_buckets) if batch_buckets else None
        # The cache is kept in the compute dtype (bf16 for real runs); a float32 model keeps a
        # float32 cache so its decode matches its full forward exactly.
        self.cache_dtype = jnp.dtype(cache_dtype or config.jnp_compute_dtype)
        # Decode over per-layer weights and cache buffers (an unrolled layer loop that reads
        # every buffer in place; costs one extra copy of the layer weights while the loop runs),
        # or over the stacked ones (config.scan_layers picks a scanned or unrolled layer loop,
        # both of which slice the stacked weights and cache every step; copies on CPU XLA).
        self.unroll_decode = bool(unroll_decode)
        self._compiles = 0
        static = (
            "num_samples",
            "max_new_tokens",
            "pad_token_id",
            "cache_dtype",
            "per_layer_cache",
            "row_sharding",
        )
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
        nb = buckets.bucket(bsz, self.batch_buckets or (bsz,), "prompt count")
        ids = np.concatenate([ids, np.full((nb - bsz, ids.shape[1]), pad_token_id, ids.dtype)])
        dummy_mask = np.zeros((nb - bsz, mask.shape[1]), mask.dtype)
        dummy_mask[:, -1] = 1
        mask = np.concatenate([mask, dummy_mask])
        real_rows = np.arange(nb) < bsz
        pv, grid = buckets.pad_prompt_images(
            ids, mask, pixel_values, image_grid_thw, c, self.patch_buckets, self.image_buckets
        )
        if pv is not None:
            pv, grid = jnp.asarray(pv, jnp.float32), jnp.asarray(grid)
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
            row_sharding=row_sharding(params, ids.shape[0] * int(num_samples)),
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


def row_sharding(params, n: int):
    """The N sampled rows split over the batch axes ("data", "fsdp") of the mesh the parameters
    live on; None on one device or when N does not divide."""
    where = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if not isinstance(where, NamedSharding):
        return None
    ways = sharding.batch_ways(where.mesh)
    if ways <= 1 or n % ways:
        return None
    return sharding.batch_sharding(where.mesh)


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
    model, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, **sampling
) -> SampleOutput:
    """Samples num_samples completions per prompt from a Qwen2VL (hf.load_qwen2_vl's result).

    input_ids / attention_mask [B, T] (left-padded), pixel_values [S, 1176] and image_grid_thw
    [I, 3] as the processor returns them for the B prompts. `sampling` are Sampler.__call__'s
    keywords: max_new_tokens (required), num_samples=1, temperature=0.0 (greedy), top_k=0,
    top_p=1.0, eos_token_ids, pad_token_id, rng.
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
        **sampling,
    )
