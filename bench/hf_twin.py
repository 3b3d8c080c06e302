"""transformers' model of our model's family (Qwen2VLForConditionalGeneration,
Qwen2_5_VLForConditionalGeneration, ...: config.json's `architectures`) holding our model's weights,
built in memory.

    twin = hf_twin.torch_model(model, dtype="bfloat16", device="cuda")

The benchmarks compare our programs with transformers on identical weights. Writing a Hugging Face
folder and reading it back (hf.save_qwen2_vl + from_pretrained) takes a minute or more for 7B on
the GPU machine; here each tensor is put in torch's layout on our device (hf's own name and layout
table, the one save_qwen2_vl writes with) and handed to torch through DLPack, one tensor at a time:
no host copy, no file. torch is imported only when called.
"""

import contextlib

import jax.numpy as jnp
from flax import nnx

from vrft_jax import hf


def memory_name(hub_key: str) -> str:
    """Hub checkpoint names -> transformers-5 module names (visual.* -> model.visual.*,
    model.* -> model.language_model.*; lm_head.* unchanged)."""
    if hub_key.startswith("visual."):
        return "model." + hub_key
    if hub_key.startswith("model."):
        return "model.language_model." + hub_key[len("model.") :]
    return hub_key


def hub_tensors(model):
    """Yields (hub key, jax array in torch's layout) on the model's device, one at a time (what
    hf.save_qwen2_vl writes, without the trip to the host)."""
    table = hf._table(model.config)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        template, _, to_hf = table[hf._path_str(path)]
        value = var[...]
        if "{i}" not in template:
            yield template, jnp.copy(to_hf(value))  # a fresh array: a transpose's own layout
            continue
        for i in range(value.shape[0]):
            yield template.format(i=i), jnp.copy(to_hf(value[i]))


def _no_init():
    """transformers' context that skips the random init of new modules (minutes for the 152k-row
    embedding on a CPU), or a no-op where this release has none."""
    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights  # 4.x
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def torch_model(model, dtype: str, device: str):
    """transformers' model of `model`'s family (eval mode) on `device` in `dtype` with `model`'s
    weights.

    Attention is transformers' "sdpa" (flash / memory-efficient kernels on GPU)."""
    import torch
    import transformers

    hf_config = model.config.to_hf()
    config = transformers.AutoConfig.for_model(**hf_config)
    config._attn_implementation = "sdpa"
    model_class = getattr(transformers, hf_config["architectures"][0])
    torch_dtype = getattr(torch, dtype)
    with torch.device(device):
        try:
            twin = model_class._from_config(config, dtype=torch_dtype)
        except TypeError:  # transformers 4.x
            twin = model_class._from_config(config, torch_dtype=torch_dtype)
    targets = twin.state_dict()
    filled = set()
    with torch.no_grad():
        for key, array in hub_tensors(model):
            name = memory_name(key)
            if name not in targets:
                raise KeyError(f"hf_twin: transformers' model has no tensor {name} (from {key})")
            target = targets[name]
            if tuple(target.shape) != array.shape:
                raise ValueError(f"hf_twin: {name} is {tuple(target.shape)}, ours {array.shape}")
            target.copy_(torch.from_dlpack(array))  # converts the dtype if needed
            del array
            filled.add(name)
    missing = set(targets) - filled
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")  # tied to the embedding, filled through it
    if missing:
        raise ValueError(f"hf_twin: tensors without our weights: {sorted(missing)[:5]}")
    if model.config.tie_word_embeddings:
        twin.tie_weights()
    return twin.eval()
