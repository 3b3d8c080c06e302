"""LoRA adapters in and out of PEFT's folder format (adapter_config.json +
adapter_model.safetensors), for the Hugging Face model that `hf.save_qwen2_vl` writes.

PEFT stores, per adapted torch Linear (weight [out, in]) named MODULE in the transformers model,
`base_model.model.MODULE.lora_A.weight` [r, in] and `...lora_B.weight` [out, r], and adds
(lora_alpha / r) * B @ A to the weight. Our adapter of a target is A [L?, in..., r], B [L?, r,
out...] (vrft_jax/lora.py), and the hub layout of every adaptable weight is
`w.reshape(in, out).T` (checked per target), so PEFT's lora_A = A.reshape(in, r).T and lora_B =
B.reshape(r, out).T, layer by layer. MODULE is the transformers-5 in-memory name
(`model.language_model.layers.{i}.self_attn.q_proj`), from the hub key of hf's table.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from flax import nnx

from vrft_jax import hf, lora

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def module_name(hub_key: str) -> str:
    """Hub weight key (`model.layers.0.mlp.up_proj.weight`) -> the transformers-5 module name
    (`model.language_model.layers.0.mlp.up_proj`); the inverse of hf._hub_name without
    `.weight`."""
    name = hub_key[: -len(".weight")] if hub_key.endswith(".weight") else hub_key
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name[len("model.") :]
    return name


def _templates(model_config, spec):
    """{target key: hub key template} for spec's targets; an error for a target whose hub layout
    is not a plain Linear (e.g. the patch embedding's Conv3d)."""
    table = hf._table(model_config)
    out = {}
    for t in spec.targets:
        template, _, to_hf = table[t.key]
        shape = t.shape[1:] if t.stacked else t.shape
        w = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
        n_in = math.prod(t.in_shape)
        if not np.array_equal(to_hf(w), w.reshape(n_in, -1).T):
            raise ValueError(f"lora target {t.key!r} is not a Linear in the Hugging Face model")
        out[t.key] = template
    return out


def _per_layer(t, x):
    """The L per-layer slices of a stacked adapter array (one slice when not stacked)."""
    return [x[i] for i in range(x.shape[0])] if t.stacked else [x]


def peft_tensors(adapters, spec, model_config) -> dict:
    """Adapters (pure dict of arrays) -> {PEFT key: numpy float32 array in torch layout}."""
    out = {}
    for t in spec.targets:
        template = _templates(model_config, spec)[t.key]
        node = lora._get(adapters, t.path)
        pairs = zip(_per_layer(t, np.asarray(node["a"])), _per_layer(t, np.asarray(node["b"])))
        for i, (a, b) in enumerate(pairs):
            name = PREFIX + module_name(template.format(i=i))
            out[name + ".lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, spec.rank).T)
            out[name + ".lora_B.weight"] = np.ascontiguousarray(b.reshape(spec.rank, -1).T)
    return {k: v.astype(np.float32) for k, v in out.items()}


def adapter_config(spec, model_config, base_model: str = "") -> dict:
    """adapter_config.json: target_modules as one regex over the module names (full match), so
    a weight of the same name elsewhere (e.g. a vision MLP's down_proj) is not adapted."""
    templates = _templates(model_config, spec)
    names = sorted({module_name(t).replace(".", r"\.").replace("{i}", r"\d+")
                    for t in templates.values()})  # fmt: skip
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model or None,
        "r": int(spec.rank),
        "lora_alpha": float(spec.alpha),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "target_modules": "^(" + "|".join(names) + ")$",
    }


def write_adapters(folder, adapters, spec, model_config, base_model: str = "") -> None:
    """Writes the PEFT folder's two files into `folder` (which must exist)."""
    from safetensors.numpy import save_file

    tensors = peft_tensors(adapters, spec, model_config)
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(adapter_config(spec, model_config, base_model), f, indent=2)


def read_adapters(folder, spec, like: nnx.State, config) -> nnx.State:
    """A PEFT adapter folder -> adapters shaped as `like` (lora.init_adapters' result), checked
    against config.lora and the model before anything is trained: rank, alpha, the set of adapted
    modules and every tensor's shape (a base model of another size) must agree."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config.lora.init={folder!r} has no {CONFIG_FILE} (not a PEFT adapter folder)"
        )
    from vrft_jax.jsonio import read_json

    meta = read_json(path)
    where = f"config.lora.init={folder!r} ({CONFIG_FILE})"
    if meta.get("peft_type", "LORA") != "LORA" or meta.get("use_dora"):
        raise ValueError(f"{where}: peft_type {meta.get('peft_type')!r}; only plain LoRA is read")
    if int(meta.get("r", -1)) != spec.rank:
        raise ValueError(f"{where}: r={meta.get('r')} but config.lora.rank={spec.rank}")
    if float(meta.get("lora_alpha", -1)) != spec.alpha:
        raise ValueError(
            f"{where}: lora_alpha={meta.get('lora_alpha')} but config.lora.alpha={spec.alpha}"
        )
    from safetensors.numpy import load_file

    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"config.lora.init={folder!r} has no {WEIGHTS_FILE}")
    stored = load_file(weights)
    model_config = _model_config(config)
    want = peft_tensors(nnx.to_pure_dict(like), spec, model_config)
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    if missing or extra:
        raise ValueError(
            f"config.lora.init={folder!r}: its adapted modules differ from config.lora.targets="
            f"{config.lora.targets!r}: missing {missing[:3]}, not targeted {extra[:3]}"
        )
    for key, value in want.items():
        if stored[key].shape != value.shape:
            raise ValueError(
                f"config.lora.init={folder!r}: {key} has shape {stored[key].shape}, the model "
                f"needs {value.shape}: the adapters were trained on another base model"
            )
    return _from_tensors(stored, spec, like, model_config)


def _from_tensors(stored, spec, like, model_config):
    templates = _templates(model_config, spec)
    tree = nnx.to_pure_dict(like)
    for t in spec.targets:
        node = lora._get(tree, t.path)
        layers = node["a"].shape[0] if t.stacked else 1
        a_list, b_list = [], []
        for i in range(layers):
            name = PREFIX + module_name(templates[t.key].format(i=i))
            a_list.append(stored[name + ".lora_A.weight"].T.reshape(*t.in_shape, spec.rank))
            b_list.append(stored[name + ".lora_B.weight"].T.reshape(spec.rank, *t.out_shape))
        a, b = (np.stack(x) if t.stacked else x[0] for x in (a_list, b_list))
        dtype = node["a"].dtype
        tree = lora._replace(tree, t.path, {"a": a.astype(dtype), "b": b.astype(dtype)})
    state = jax.tree.map(lambda x: x, like)  # a copy that keeps the Params' logical names
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, tree))
    return state


def _model_config(config):
    """The run's model shape (model_init's config.json, else the preset)."""
    from vrft_jax.models import get_preset

    if config.model_init:
        return hf.read_config(os.path.expanduser(config.model_init))
    return get_preset(config.model.preset)
