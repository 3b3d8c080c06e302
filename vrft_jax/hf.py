"""Hugging Face Qwen-VL checkpoints (Qwen2-VL, Qwen2.5-VL) in and out.

- `load_model(path)` reads a local folder of any supported family (config.json's `model_type`;
  config.json + model.safetensors or a sharded index), with either key layout: the on-disk hub names
  (`visual.*`, `model.layers.*`, `lm_head.weight`) or the transformers-5 in-memory names
  (`model.visual.*`, `model.language_model.*`). It builds one parameter at a time (a layer-stacked
  parameter gathers its L slices), so host memory never holds two full copies, and can place each
  parameter straight into a sharding.
- `save_model(model, path)` writes config.json + safetensors with the hub names, which the family's
  transformers class (`Qwen2VLForConditionalGeneration`, ...) `from_pretrained` loads.
- `load_qwen2_vl` / `save_qwen2_vl` are the same functions under their older names.

The key table is the decoder's (shared) plus the family's vision tower (`_VISION_TABLES`).

Torch Linear weights are (out, in); ours are (in, out) with heads split out, hence the reshapes.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from vrft_jax import hf_qwen3
from vrft_jax.jsonio import read_json
from vrft_jax.models.config import SUPPORTED_MODEL_TYPES, QwenVLConfig
from vrft_jax.models.qwen2_vl import Qwen2VL, random_qwen2_vl

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "load_model",
    "load_qwen2_vl",
    "random_qwen2_vl",
    "read_config",
    "save_model",
    "save_qwen2_vl",
]

SHARD_BYTES = 4 * 1024**3  # max safetensors file size on save


# ---- Key table: our parameter path -> (hub key template, to_ours, to_hf) ------------------------
# Templates with {i} are per layer; our arrays then carry a leading `layers` axis.


def _transforms(c: QwenVLConfig):
    """(to_ours, to_hf) pairs for the layouts the tables use."""
    same = (lambda w: w, lambda w: w)
    linear = (lambda w: w.T, lambda w: w.T)

    def heads_in(n, dim):  # torch (n*dim, E) <-> ours (E, n, dim)
        return (lambda w: w.T.reshape(-1, n, dim), lambda w: w.reshape(w.shape[0], -1).T)

    def heads_out(n, dim):  # torch (E, n*dim) <-> ours (n, dim, E)
        return (lambda w: w.T.reshape(n, dim, -1), lambda w: w.reshape(n * dim, -1).T)

    def split(shape):  # bias (n*dim,) <-> (n, dim)
        return (lambda w: w.reshape(shape), lambda w: w.reshape(-1))

    return same, linear, heads_in, heads_out, split


def _vision_attention_table(c: QwenVLConfig) -> dict:
    """Patch embedding and the vision attention (the same keys in Qwen2-VL and Qwen2.5-VL)."""
    ve, vh, vd = c.vision_embed_dim, c.vision_num_heads, c.vision_head_dim
    same, linear, _, heads_out, split = _transforms(c)
    vb = "visual.blocks.{i}."
    return {
        "visual/patch_embed": (
            "visual.patch_embed.proj.weight",
            lambda w: w.reshape(w.shape[0], -1).T,
            lambda w: w.T.reshape(
                -1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size
            ),
        ),
        "visual/blocks/qkv_kernel": (
            vb + "attn.qkv.weight",
            lambda w: w.T.reshape(ve, 3, vh, vd),
            lambda w: w.reshape(ve, -1).T,
        ),
        "visual/blocks/qkv_bias": (vb + "attn.qkv.bias", *split((3, vh, vd))),
        "visual/blocks/proj_kernel": (vb + "attn.proj.weight", *heads_out(vh, vd)),
        "visual/blocks/proj_bias": (vb + "attn.proj.bias", *same),
        "visual/merger/ln_scale": ("visual.merger.ln_q.weight", *same),
        "visual/merger/fc1_kernel": ("visual.merger.mlp.0.weight", *linear),
        "visual/merger/fc1_bias": ("visual.merger.mlp.0.bias", *same),
        "visual/merger/fc2_kernel": ("visual.merger.mlp.2.weight", *linear),
        "visual/merger/fc2_bias": ("visual.merger.mlp.2.bias", *same),
    }


def _qwen2_vl_vision_table(c: QwenVLConfig) -> dict:
    """LayerNorm blocks with a fc1/fc2 MLP and a LayerNorm merger."""
    same, linear, *_ = _transforms(c)
    vb = "visual.blocks.{i}."
    return {
        **_vision_attention_table(c),
        "visual/blocks/norm1_scale": (vb + "norm1.weight", *same),
        "visual/blocks/norm1_bias": (vb + "norm1.bias", *same),
        "visual/blocks/norm2_scale": (vb + "norm2.weight", *same),
        "visual/blocks/norm2_bias": (vb + "norm2.bias", *same),
        "visual/blocks/fc1_kernel": (vb + "mlp.fc1.weight", *linear),
        "visual/blocks/fc1_bias": (vb + "mlp.fc1.bias", *same),
        "visual/blocks/fc2_kernel": (vb + "mlp.fc2.weight", *linear),
        "visual/blocks/fc2_bias": (vb + "mlp.fc2.bias", *same),
        "visual/merger/ln_bias": ("visual.merger.ln_q.bias", *same),
    }


def _qwen2_5_vl_vision_table(c: QwenVLConfig) -> dict:
    """RMSNorm blocks with a gate/up/down MLP (all with biases) and an RMSNorm merger."""
    same, linear, *_ = _transforms(c)
    vb = "visual.blocks.{i}."
    table = {
        **_vision_attention_table(c),
        "visual/blocks/norm1_scale": (vb + "norm1.weight", *same),
        "visual/blocks/norm2_scale": (vb + "norm2.weight", *same),
    }
    for name in ("gate", "up", "down"):
        table[f"visual/blocks/{name}_kernel"] = (vb + f"mlp.{name}_proj.weight", *linear)
        table[f"visual/blocks/{name}_bias"] = (vb + f"mlp.{name}_proj.bias", *same)
    return table


_VISION_TABLES = {
    "qwen2_vl": _qwen2_vl_vision_table,
    "qwen2_5_vl": _qwen2_5_vl_vision_table,
    "qwen3_vl": hf_qwen3.table,  # its vision tower and the Qwen3 layers' q/k norms
}


def _decoder_table(c: QwenVLConfig) -> dict:
    h, k, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    same, linear, heads_in, heads_out, split = _transforms(c)
    lb = "model.layers.{i}."
    return {
        "language_model/embed_tokens": ("model.embed_tokens.weight", *same),
        "language_model/norm": ("model.norm.weight", *same),
        "language_model/lm_head": ("lm_head.weight", *linear),
        "language_model/layers/input_norm": (lb + "input_layernorm.weight", *same),
        "language_model/layers/post_norm": (lb + "post_attention_layernorm.weight", *same),
        "language_model/layers/q_kernel": (lb + "self_attn.q_proj.weight", *heads_in(h, d)),
        "language_model/layers/q_bias": (lb + "self_attn.q_proj.bias", *split((h, d))),
        "language_model/layers/k_kernel": (lb + "self_attn.k_proj.weight", *heads_in(k, d)),
        "language_model/layers/k_bias": (lb + "self_attn.k_proj.bias", *split((k, d))),
        "language_model/layers/v_kernel": (lb + "self_attn.v_proj.weight", *heads_in(k, d)),
        "language_model/layers/v_bias": (lb + "self_attn.v_proj.bias", *split((k, d))),
        "language_model/layers/o_kernel": (lb + "self_attn.o_proj.weight", *heads_out(h, d)),
        "language_model/layers/gate_kernel": (lb + "mlp.gate_proj.weight", *linear),
        "language_model/layers/up_kernel": (lb + "mlp.up_proj.weight", *linear),
        "language_model/layers/down_kernel": (lb + "mlp.down_proj.weight", *linear),
    }


def _table(c: QwenVLConfig) -> dict:
    """Our parameter path -> (hub key template, to_ours, to_hf) for the config's family."""
    if c.model_type not in _VISION_TABLES:
        raise ValueError(f"no checkpoint key table for model_type {c.model_type!r}")
    return {**_VISION_TABLES[c.model_type](c), **_decoder_table(c)}


def _hub_name(key: str) -> str:
    """transformers-5 in-memory names -> hub names (identity for hub names)."""
    key = re.sub(r"^model\.visual\.", "visual.", key)
    return re.sub(r"^model\.language_model\.", "model.", key)


# ---- Reading ------------------------------------------------------------------------------------


class _Checkpoint:
    """Lazy access to the tensors of a folder's safetensors files, by hub name."""

    def __init__(self, path: str):
        self.path = path
        index = os.path.join(path, "model.safetensors.index.json")
        single = os.path.join(path, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = {k: os.path.join(path, v) for k, v in weight_map.items()}
        elif os.path.exists(single):
            with safe_open(single, "np") as f:
                files = {k: single for k in f.keys()}
        else:
            raise FileNotFoundError(
                f"{path}: no model.safetensors or model.safetensors.index.json (not a Qwen-VL "
                "safetensors checkpoint)"
            )
        self.files = {_hub_name(k): (v, k) for k, v in files.items()}
        self._open = {}

    def __contains__(self, key):
        return key in self.files

    def get(self, key: str, hf_shape) -> np.ndarray:
        """One tensor as a host numpy array (bf16 kept as ml_dtypes bfloat16)."""
        if key not in self.files:
            raise KeyError(
                f"{self.path}: checkpoint is missing tensor {key!r} (expected shape {hf_shape})"
            )
        file, raw_key = self.files[key]
        if file not in self._open:
            # The "flax" reader handles bf16, which plain numpy cannot.
            self._open[file] = safe_open(file, "flax")
        arr = np.asarray(self._open[file].get_tensor(raw_key))
        if tuple(arr.shape) != tuple(hf_shape):
            raise ValueError(
                f"{file}: checkpoint tensor {key!r} has shape {tuple(arr.shape)}, "
                f"expected {tuple(hf_shape)}"
            )
        return arr


def _torch_shape(to_hf, shape):
    return tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(shape, jnp.float32)).shape)


def _read(ckpt: _Checkpoint, entry, shape, dtype):
    """Our array for one parameter; layer-stacked ones gather template.format(i) for each layer."""
    template, to_ours, to_hf = entry
    if "{i}" not in template:
        return np.asarray(to_ours(ckpt.get(template, _torch_shape(to_hf, shape)))).astype(dtype)
    out = np.empty(shape, dtype)
    hf_shape = _torch_shape(to_hf, shape[1:])
    for i in range(shape[0]):
        out[i] = to_ours(ckpt.get(template.format(i=i), hf_shape)).astype(dtype)
    return out


# preprocessor_config.json key -> the QwenVLConfig field it must equal
PROCESSOR_KEYS = (
    ("patch_size", "patch_size"),
    ("merge_size", "spatial_merge_size"),
    ("temporal_patch_size", "temporal_patch_size"),
)


def check_processor_config(path: str, config: QwenVLConfig) -> None:
    """A folder's preprocessor_config.json (when present) cuts images into the patches the model
    embeds: its patch_size, merge_size and temporal_patch_size must equal the model's (else a
    ValueError naming the file and the key)."""
    file = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(file):
        return
    processor = read_json(file)
    if not isinstance(processor, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(processor).__name__}")
    for key, field in PROCESSOR_KEYS:
        if key in processor and processor[key] != getattr(config, field):
            raise ValueError(
                f"{file}: {key} is {processor[key]!r} but the model (config.json) has "
                f"{field}={getattr(config, field)!r}; the processor must cut the patches the "
                "model embeds"
            )


def read_config(path: str) -> QwenVLConfig:
    """The QwenVLConfig of a Hugging Face folder (family from its `model_type`), checked against
    the folder's preprocessor_config.json; ValueError naming the file and the field (an
    unsupported model_type names the supported ones)."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a folder (expected a Hugging Face Qwen-VL folder)")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face Qwen-VL folder)")
    hf_config = read_json(cfg_path)
    if not isinstance(hf_config, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(hf_config).__name__}")
    try:
        config = QwenVLConfig.from_hf(hf_config)
    except (ValueError, KeyError, TypeError) as e:  # from_hf names the field, we add the file
        detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{cfg_path}: {detail.removeprefix('config.json: ')}") from e
    check_processor_config(path, config)
    return config


def torch_dtype(path: str) -> str | None:
    """The weight dtype a Hugging Face folder's config.json declares ("torch_dtype", "dtype" in
    transformers 5), e.g. "bfloat16"; None when absent or not a float dtype JAX knows."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    with open(cfg_path) as f:
        hf = json.load(f)
    name = hf.get("torch_dtype") or hf.get("dtype") or (hf.get("text_config") or {}).get("dtype")
    if not isinstance(name, str):
        return None
    try:
        return jnp.dtype(name).name if jnp.issubdtype(jnp.dtype(name), jnp.floating) else None
    except TypeError:
        return None


def _path_str(path) -> str:
    return "/".join(str(p) for p in path)


def load_model(
    path: str, *, dtype=jnp.float32, compute_dtype=None, sharding=None, **model_kwargs
) -> Qwen2VL:
    """The model of a local Hugging Face folder, of the family its config.json's `model_type`
    names (SUPPORTED_MODEL_TYPES; any other fails naming it). Parameters are stored in `dtype`
    whatever the files hold (hub files are bf16; the trainer loads them as float32 master
    weights), compute in `compute_dtype` (default: `dtype`).

    sharding: None (default device), a function (logical_names, shape) -> jax.sharding.Sharding
    (see models.partitioning.path_sharding_fn), or a (mesh, rules) pair. Each parameter is read,
    converted and placed on its own, so peak host memory is about one (layer-stacked) parameter.
    """
    name = jnp.dtype(dtype).name
    compute = jnp.dtype(compute_dtype or dtype).name
    config = read_config(path).replace(param_dtype=name, compute_dtype=compute)
    ckpt = _Checkpoint(path)
    if isinstance(sharding, tuple):
        from vrft_jax.models.partitioning import path_sharding_fn

        sharding = path_sharding_fn(*sharding)
    table = _table(config)
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0), **model_kwargs))
    graphdef, state = nnx.split(abstract)
    filled = []
    for p, var in nnx.to_flat_state(state):
        key = _path_str(p)
        if key not in table:
            raise ValueError(f"internal: no checkpoint mapping for parameter {key}")
        host = _read(ckpt, table[key], var.shape, jnp.dtype(dtype))
        names = var.get_metadata().get("out_sharding")
        target = sharding(names, var.shape) if sharding is not None else None
        value = jax.device_put(host, target) if target is not None else jnp.asarray(host)
        del host
        filled.append((p, var.replace(value=value)))
    return nnx.merge(graphdef, nnx.from_flat_state(filled))


# ---- Writing ------------------------------------------------------------------------------------


def _hub_tensors(model: Qwen2VL):
    """Yields (hub key, numpy array in torch layout), one tensor at a time."""
    table = _table(model.config)
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        template, _, to_hf = table[_path_str(p)]
        if model.config.is_qwen3:  # Qwen3-VL files use the transformers-5 names
            template = hf_qwen3.saved_name(template)
        value = var[...]
        if "{i}" not in template:
            # Contiguous copy: safetensors.numpy writes a transposed view's memory, not its values.
            yield template, np.ascontiguousarray(to_hf(np.asarray(value)))
            continue
        for i in range(value.shape[0]):
            yield template.format(i=i), np.ascontiguousarray(to_hf(np.asarray(value[i])))


def save_model(model: Qwen2VL, path: str, *, shard_bytes: int = SHARD_BYTES) -> None:
    """Writes config.json (the family's hub layout) + safetensors (hub key names, split into files
    of <= shard_bytes)."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(model.config.to_hf(), f, indent=2)
    shards, current, size = [], {}, 0
    for key, arr in _hub_tensors(model):
        if current and size + arr.nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = arr
        size += arr.nbytes
    shards.append(current)
    if len(shards) == 1:
        _save(save_file, shards[0], os.path.join(path, "model.safetensors"))
        return
    weight_map, total = {}, 0
    for n, shard in enumerate(shards):
        fname = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        _save(save_file, shard, os.path.join(path, fname))
        weight_map.update({k: fname for k in shard})
        total += sum(a.nbytes for a in shard.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


load_qwen2_vl = load_model  # the names before the families; they load/save every family
save_qwen2_vl = save_model


def _save(save_file, tensors, file):
    # safetensors.numpy has no bf16; store such arrays through the flax writer.
    if any(a.dtype == jnp.bfloat16 for a in tensors.values()):
        from safetensors.flax import save_file as save_flax

        save_flax({k: jnp.asarray(v) for k, v in tensors.items()}, file, metadata={"format": "pt"})
    else:
        save_file(tensors, file, metadata={"format": "pt"})
