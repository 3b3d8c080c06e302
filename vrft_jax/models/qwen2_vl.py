"""The Qwen-VL model: vision tower + image-feature scatter + M-RoPE decoder + LM head.

One class for every family: `config.model_type` picks the vision tower and the decoder
(FAMILY_PARTS), so the sampler, policy, trainer and checkpoints call the same methods whatever the
family.

Two levels of API:
- jittable pieces on padded arrays: `encode_images`, `embed`, `decode`, `lm_logits`, `forward` (what
  the sampler and trainer compose inside their own jitted steps);
- `__call__`, the convenience contract on the processor's raw arrays: pads on the host to shape
  buckets and runs a cached jitted forward (one compile per bucket combination, counted by
  `compile_count`).
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax import buckets
from vrft_jax.models.config import QwenVLConfig, get_preset
from vrft_jax.models.llm import Decoder
from vrft_jax.models.qwen3_vision import Qwen3VisionTower
from vrft_jax.models.rope import get_rope_index
from vrft_jax.models.vision import VisionTower
from vrft_jax.models.vision_qwen2_5 import WindowVisionTower

TRACE_NAME = "qwen2_vl.forward"

# model_type -> (vision tower class, decoder class), each built as cls(config, rngs).
FAMILY_PARTS = {
    "qwen2_vl": (VisionTower, Decoder),
    "qwen2_5_vl": (WindowVisionTower, Decoder),  # the same decoder as Qwen2-VL
    # Qwen3 decoder layers (config.is_qwen3) and DeepStack features: see llm.py, qwen3_vision.py
    "qwen3_vl": (Qwen3VisionTower, Decoder),
}


def family_parts(config: QwenVLConfig):
    if config.model_type not in FAMILY_PARTS:
        raise ValueError(
            f"model_type {config.model_type!r} has no model implementation; implemented: "
            f"{', '.join(FAMILY_PARTS)}"
        )
    return FAMILY_PARTS[config.model_type]


class Qwen2VL(nnx.Module):
    """Any supported Qwen-VL family (the name predates the others; `QwenVL` is the same class)."""

    def __init__(
        self,
        config: QwenVLConfig,
        *,
        rngs: nnx.Rngs,
        prompt_buckets=buckets.DEFAULT_PROMPT_BUCKETS,
        patch_buckets=buckets.DEFAULT_PATCH_BUCKETS,
        image_buckets=buckets.DEFAULT_IMAGE_BUCKETS,
    ):
        self.config = config
        tower, decoder = family_parts(config)
        self.visual = tower(config, rngs)
        self.language_model = decoder(config, rngs)
        self.prompt_buckets = tuple(prompt_buckets)
        self.patch_buckets = tuple(patch_buckets)
        self.image_buckets = tuple(image_buckets)

    # ---- jittable pieces ----------------------------------------------------------------------

    def encode_images(self, pixel_values, image_grid_thw):
        """Packed pixel_values [S, 1176] (padding patches at the end) -> [S/4, E], or per-image
        slots [I, Q, 1176] -> [I*Q/4, E] (see buckets.pad_images); grid int [I, 3]."""
        return self.visual(pixel_values, image_grid_thw)

    def embed(self, input_ids, image_embeds=None):
        """Token embeddings [B, T, E]; the k-th <|image_pad|> (flat row-major) gets
        image_embeds[k]. Qwen3-VL's image_embeds [F, 1 + Ld, E] carry DeepStack features: the
        result is then [B, T, 1 + Ld, E] (see merge_image_features), which `decode` takes."""
        dt = self.config.jnp_compute_dtype
        x = jnp.take(self.language_model.embed_tokens[...], input_ids, axis=0).astype(dt)
        if image_embeds is None:
            return x
        is_img = input_ids == self.config.image_token_id
        k = jnp.cumsum(is_img.reshape(-1)).reshape(is_img.shape) - 1
        feats = jnp.take(image_embeds.astype(dt), jnp.clip(k, 0, image_embeds.shape[0] - 1), axis=0)
        return merge_image_features(x, is_img, feats)

    def decode(self, x, positions, kv_mask=None, cache=None, cache_index=0):
        """x [B, T, E], positions int [3, B, T], kv_mask bool [B, Tk] (Tk = T without a cache, Tmax
        with one) -> (final-normed hidden [B, T, E], updated cache or None)."""
        return self.language_model(x, positions, kv_mask, cache, cache_index)

    def lm_logits(self, hidden):
        """float32 [..., V] from decode's hidden [..., E]."""
        return self.language_model.logits(hidden)

    def forward(self, input_ids, attention_mask, pixel_values=None, image_grid_thw=None):
        """Full forward on already padded arrays (jittable) -> float32 logits [B, T, V]."""
        image_embeds = None
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values, image_grid_thw)
        x = self.embed(input_ids, image_embeds)
        positions, _ = get_rope_index(input_ids, attention_mask, image_grid_thw, self.config)
        hidden, _ = self.decode(x, positions, attention_mask > 0)
        return self.lm_logits(hidden)

    # ---- processor-array contract -------------------------------------------------------------

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
        """logits float32 [B, T, V] for the processor's arrays (numpy or jax, left-padded batches,
        unpadded pixel_values [S, 1176] and image_grid_thw [I, 3]); padding happens here."""
        c = self.config
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {ids.shape}")
        seq = ids.shape[1]
        length = buckets.length_bucket(seq, self.prompt_buckets)
        ids, mask = buckets.pad_left(ids, attention_mask, length, c.pad_token_id)
        pv, grid = buckets.pad_prompt_images(
            ids, mask, pixel_values, image_grid_thw, c, self.patch_buckets, self.image_buckets
        )
        if pv is not None:
            pv = jnp.asarray(pv, jnp.float32)
        graphdef, state = nnx.split(self)
        logits = _forward_jit(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), pv, grid)
        return logits[:, length - seq :]


QwenVL = Qwen2VL


def deepstack_slots(x, num: int):
    """x [B, T, E] -> [B, T, 1 + num, E]: x in slot 0, zero DeepStack features after it."""
    pad = jnp.zeros((*x.shape[:-1], num, x.shape[-1]), x.dtype)
    return jnp.concatenate([x[..., None, :], pad], axis=-2)


def merge_image_features(x, is_image, feats):
    """Token embeddings x [B, T, E] with image tokens (is_image bool [B, T]) replaced by feats.

    feats [B, T, E] (each token's image feature) gives [B, T, E]; Qwen3-VL's feats [B, T, 1 + Ld, E]
    give [B, T, 1 + Ld, E]: slot 0 the merged embeddings, slots 1.. the DeepStack features the
    decoder adds after its first Ld layers (zero at text tokens, so adding them is exact there).
    """
    if feats.ndim == x.ndim:
        return jnp.where(is_image[..., None], feats, x)
    x = deepstack_slots(x, feats.shape[-2] - 1)
    return jnp.where(is_image[..., None, None], feats, x)


def _forward(graphdef, state, input_ids, attention_mask, pixel_values, image_grid_thw):
    buckets.note_trace(TRACE_NAME)  # Python side effect: runs once per compile
    model = nnx.merge(graphdef, state)
    return model.forward(input_ids, attention_mask, pixel_values, image_grid_thw)


_forward_jit = jax.jit(_forward, static_argnums=0)


def compile_count() -> int:
    """Programs compiled so far by Qwen2VL.__call__ (for tests and logs)."""
    return buckets.trace_count(TRACE_NAME)


def init_cache(config: QwenVLConfig, batch: int, max_len: int, dtype=jnp.bfloat16) -> dict:
    """Empty KV cache {"k", "v"}: [L, B, Tmax, K, D] each."""
    shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def random_qwen2_vl(
    config_or_preset="tiny", *, seed: int = 0, dtype=None, sharding=None, **kwargs
) -> Qwen2VL:
    """A randomly initialised model: kernels N(0, 0.02), norm weights 1, biases 0.

    Drawn on the host with numpy one parameter at a time (eager JAX initialisation of the
    151936-row embedding is slow on CPU), each placed straight onto `sharding(names, shape)` if
    given (see models.partitioning.path_sharding_fn). `Qwen2VL(config, rngs=...)` also works, e.g.
    under jax.jit with out_shardings.
    """
    config = get_preset(config_or_preset) if isinstance(config_or_preset, str) else config_or_preset
    if dtype is not None:
        name = jnp.dtype(dtype).name
        config = config.replace(param_dtype=name, compute_dtype=name)
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0), **kwargs))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(state):
        name = str(path[-1])
        if "norm" in name or name.endswith("scale"):
            host = np.ones(var.shape, np.float32)
        elif name.endswith("bias"):
            host = np.zeros(var.shape, np.float32)
        else:
            host = 0.02 * rng.standard_normal(var.shape, np.float32)
        host = host.astype(var.dtype)
        target = (
            None if sharding is None else sharding(var.get_metadata()["out_sharding"], var.shape)
        )
        value = jax.device_put(host, target) if target is not None else jnp.asarray(host)
        flat.append((path, var.replace(value=value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def count_params(model_or_state) -> int:
    state = (
        nnx.state(model_or_state, nnx.Param)
        if isinstance(model_or_state, nnx.Module)
        else model_or_state
    )
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
