"""LoRA and QLoRA adapters as pure functions over the parameter pytree (config.lora).

A target is a weight matrix of the model picked by `lora.targets` (a regex over parameter paths such
as "language_model/layers/q_kernel"). Its adapter is a pair A [L?, in..., r], B [L?, r, out...] (L:
the stacked layers axis when the weight has one; in / out: the weight's own input and output axes,
with their logical names, so A and B are sharded as the weight is; the rank axis r has no mesh rule
and stays replicated). The effective weight is W + (alpha / r) * A @ B.

How it reaches the model without changing the model code: `attach(base, adapters)` returns the
model's params pytree with an `Adapted` node in place of each target. The layers read every weight
as `p[name].astype(compute_dtype)` (llm.py, vision.py); `Adapted.astype` computes the effective
weight there, i.e. per layer inside the layer scan, so only one layer's merged weight exists at a
time and only A and B are differentiated (the base is a closed-over, non-differentiated input).
QLoRA: the base of a target is stored as int8 with one float scale per output channel and
dequantised in the same place.

Why not Qwix's LoRA provider: it finds the weight of an intercepted einsum by tracing the operand
back to an nnx.Param attribute of the calling module and creates its LoRA params next to it. Our
layers take per-layer slices of stacked [L, ...] params inside lax.scan (the tracer's history ends
at the scan boundary, and the slice's shape matches no module attribute), so no weight is found and
no adapter applied; params cannot be created inside the scan body either.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

QUANTIZE = ("none", "int8")
EFFECTIVE_WEIGHT = "lora_effective_weight"  # checkpoint name of W + (alpha/r) A @ B
RANK_AXIS = "lora_rank"  # logical name without a mesh rule: the rank axis is replicated
# The decoder's attention and MLP projections (q, k, v, o, gate, up, down), by path; the vision
# tower and merger are opt-in (e.g. "^(language_model/layers|visual/blocks)/\w+_kernel$").
DEFAULT_TARGETS = r"^language_model/layers/\w+_kernel$"


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted weight: its path, shape, logical axis names and how its axes split."""

    path: tuple[str, ...]
    shape: tuple[int, ...]
    names: tuple
    stacked: bool  # leading `layers` axis
    in_axes: int  # input axes after the layers axis

    @property
    def key(self) -> str:
        return "/".join(self.path)

    @property
    def in_shape(self):
        lead = 1 if self.stacked else 0
        return self.shape[lead : lead + self.in_axes]

    @property
    def out_shape(self):
        return self.shape[(1 if self.stacked else 0) + self.in_axes :]


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What the adapters are (static: hashable, bound into the jitted steps)."""

    rank: int
    alpha: float
    quantize: str
    targets: tuple[Target, ...]

    @property
    def scale(self) -> float:
        return float(self.alpha) / int(self.rank)


# ---- Config -------------------------------------------------------------------------------------


def check_config(lora) -> None:
    """config.lora's fields (an error naming the field)."""
    if int(lora.rank) != lora.rank or lora.rank < 0:
        raise ValueError(f"config.lora.rank={lora.rank!r}: expected an integer >= 0 (0 = off)")
    if lora.rank and not lora.alpha > 0:
        raise ValueError(f"config.lora.alpha={lora.alpha!r}: expected a number > 0")
    if lora.quantize not in QUANTIZE:
        raise ValueError(f"config.lora.quantize={lora.quantize!r}: expected one of {QUANTIZE}")
    try:
        re.compile(lora.targets)
    except re.error as e:
        raise ValueError(f"config.lora.targets={lora.targets!r} is not a regex: {e}") from None
    if not lora.rank and (lora.quantize != "none" or lora.init):
        raise ValueError(
            "config.lora.quantize / config.lora.init need adapters: set config.lora.rank > 0"
        )


def check_full_warmup(config) -> None:
    """config.lora.full_warmup (the SFT warm-up trains every weight; its result is the frozen
    base of the adapters GRPO then trains) needs adapters, a GRPO warm-up and fresh adapters:
    an error naming the fields otherwise."""
    if not config.lora.full_warmup:
        return
    if not config.lora.rank:
        raise ValueError(
            "config.lora.full_warmup=True needs adapters: set config.lora.rank > 0 (without "
            "LoRA the SFT warm-up already trains every weight)"
        )
    if config.trainer != "grpo" or config.sft.warmup_steps <= 0:
        raise ValueError(
            "config.lora.full_warmup=True needs an SFT warm-up before GRPO: set "
            f"config.sft.warmup_steps > 0 with config.trainer='grpo' (now sft.warmup_steps="
            f"{config.sft.warmup_steps}, trainer={config.trainer!r})"
        )
    if config.lora.init:
        raise ValueError(
            "config.lora.full_warmup=True starts fresh adapters on the warmed-up base; "
            f"config.lora.init={config.lora.init!r} holds adapters trained on another base"
        )


def _input_axes(names) -> int:
    """How many leading axes of a (per-layer) weight are its input: a projection out of attention
    heads reads (heads, head_dim), every other weight reads one axis (the layers contract their
    activation's last axes with the leading axes of each weight)."""
    n = 0
    while n < len(names) - 1 and names[n] and "heads" in str(names[n]):
        n += 1
    return n + 1


def find_targets(params_state, pattern: str) -> tuple[Target, ...]:
    """The weight matrices of `params_state` (an nnx.State of Params, abstract or concrete) whose
    path matches `pattern`. Errors name a few real paths."""
    regex = re.compile(pattern)
    found, matrices = [], []
    for path, var in nnx.to_flat_state(params_state):
        key = "/".join(map(str, path))
        names = tuple(var.get_metadata().get("out_sharding") or (None,) * len(var.shape))
        stacked = bool(names) and names[0] == "layers"
        own = names[1:] if stacked else names
        # A weight matrix has input and output axes; biases and norms get no adapter. An
        # embedding table [vocab, embed] may (a row per token; read by index through
        # Adapted.__jax_array__), e.g. a tied embedding that is also the output layer.
        name = key.rsplit("/", 1)[-1]
        is_matrix = (
            len(own) >= 2
            and _input_axes(own) < len(own)
            and not any(word in name for word in ("bias", "norm", "scale"))
        )
        if is_matrix:
            matrices.append(key)
        if not regex.search(key):
            continue
        if not is_matrix:
            raise ValueError(
                f"config.lora.targets={pattern!r} matches {key!r} (shape {tuple(var.shape)}), "
                "which is not a weight matrix (biases, norms and embedding tables get no adapter)"
            )
        found.append(Target(tuple(map(str, path)), tuple(var.shape), names, stacked,
                            _input_axes(own)))  # fmt: skip
    if not found:
        raise ValueError(
            f"config.lora.targets={pattern!r} matches no weight matrix; some paths: "
            f"{matrices[:3] + matrices[-3:]}"
        )
    return tuple(found)


def make_spec(lora, params_state) -> LoraSpec | None:
    """config.lora + the model's params -> LoraSpec, or None when lora.rank is 0."""
    check_config(lora)
    if not lora.rank:
        return None
    targets = find_targets(params_state, lora.targets)
    return LoraSpec(int(lora.rank), float(lora.alpha), lora.quantize, targets)


# ---- The effective weight -----------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Adapted:
    """A target weight as the layers see it: base (float, or int8 with per-output-channel
    `qscale`), optional adapters a, b and the LoRA scale. `astype(dtype)` gives the effective
    weight; indexing with `...` returns itself (nnx reads a Variable as `var[...]`)."""

    def __init__(self, w, qscale, a, b, scale: float):
        self.w, self.qscale, self.a, self.b, self.scale = w, qscale, a, b, scale

    def tree_flatten(self):
        return (self.w, self.qscale, self.a, self.b), self.scale

    @classmethod
    def tree_unflatten(cls, scale, children):
        return cls(*children, scale)

    def __getitem__(self, key):
        if key is not Ellipsis:
            raise TypeError("an adapted weight is read whole (`[...]`), then sliced")
        return self

    @property
    def shape(self):
        return self.w.shape

    @property
    def dtype(self):
        return self.qscale.dtype if self.qscale is not None else self.w.dtype

    def astype(self, dtype):
        w = self.w.astype(dtype)
        if self.qscale is not None:
            w = w * self.qscale.astype(dtype)
        if self.a is None:
            return w
        lead = self.a.ndim + self.b.ndim - w.ndim - 2  # a [lead, in, r], b [lead, r, out]
        # Named so that the layer scan can recompute it in the backward (layers.scan_layers).
        return checkpoint_name(w + lora_delta(self.a, self.b, self.scale, dtype, lead),
                               EFFECTIVE_WEIGHT)  # fmt: skip

    def __jax_array__(self):
        return self.astype(self.dtype)


def lora_delta(a, b, scale, dtype, lead: int):
    """(alpha / r) * A @ B in the weight's shape: a [lead..., in..., r], b [lead..., r, out...]
    (lead: the number of leading layers axes, 0 for a per-layer slice). The product keeps a batch
    axis (even of size 1): a plain matrix product would be saved for the backward pass by the
    "dots" remat policy, i.e. one merged weight per layer."""
    a, b = a.astype(dtype), b.astype(dtype)
    r, batch = a.shape[-1], math.prod(a.shape[:lead])
    d = jax.lax.dot_general(
        a.reshape(batch, -1, r), b.reshape(batch, r, -1), (((2,), (1,)), ((0,), (0,)))
    )  # [batch, in, out]
    return (d * jnp.asarray(scale, dtype)).reshape(*a.shape[:-1], *b.shape[lead + 1 :])


# ---- Pytrees: adapters, the frozen base, and the model's params from both ------------------------


def _get(tree, path, default=None):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _replace(tree, path, value):
    """A copy of the nested dict `tree` with tree[path] = value (dicts along the path copied)."""
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _replace(tree[path[0]], path[1:], value)
    return out


def adapter_names(t: Target):
    """Logical axis names of (A, B): the weight's input / output names and the replicated rank."""
    lead = ("layers",) if t.stacked else ()
    own = t.names[len(lead) :]
    return lead + own[: t.in_axes] + (RANK_AXIS,), lead + (RANK_AXIS,) + own[t.in_axes :]


def init_adapters(spec: LoraSpec, seed: int, dtype="float32") -> nnx.State:
    """Fresh adapters as an nnx.State of Params (with logical names): A ~ U(-1/sqrt(in),
    1/sqrt(in)) (PEFT's kaiming-uniform default), B = 0, so the effective weights start equal to
    the base. {path...: {"a": [L?, in..., r], "b": [L?, r, out...]}}."""
    rng = np.random.default_rng(seed)
    tree = {}
    for t in spec.targets:
        lead = t.shape[:1] if t.stacked else ()
        bound = 1.0 / math.sqrt(math.prod(t.in_shape))
        a = rng.uniform(-bound, bound, lead + t.in_shape + (spec.rank,)).astype(np.float32)
        b = np.zeros(lead + (spec.rank,) + t.out_shape, np.float32)
        names_a, names_b = adapter_names(t)
        node = {
            "a": nnx.Param(jnp.asarray(a, dtype), out_sharding=names_a, eager_sharding=False),
            "b": nnx.Param(jnp.asarray(b, dtype), out_sharding=names_b, eager_sharding=False),
        }
        tree = _replace_or_add(tree, t.path, node)
    return nnx.State(tree)


def adapter_shapes(spec: LoraSpec, dtype="float32") -> dict:
    """ShapeDtypeStructs of init_adapters' arrays (pure dict), e.g. to read a checkpoint."""
    tree = {}
    for t in spec.targets:
        lead = t.shape[:1] if t.stacked else ()
        node = {
            "a": jax.ShapeDtypeStruct(lead + t.in_shape + (spec.rank,), jnp.dtype(dtype)),
            "b": jax.ShapeDtypeStruct(lead + (spec.rank,) + t.out_shape, jnp.dtype(dtype)),
        }
        tree = _replace_or_add(tree, t.path, node)
    return tree


def _replace_or_add(tree, path, value):
    if not path:
        return value
    out = dict(tree)
    out[path[0]] = _replace_or_add(tree.get(path[0], {}), path[1:], value)
    return out


def quantize_int8(w, t: Target):
    """Symmetric int8 with one scale per output channel (max |w| over the input axes / 127).
    Returns {"q": int8 like w, "qscale": float32 [L?, 1..., out...]}; |w - q * qscale| <=
    qscale / 2 elementwise."""
    lead = 1 if t.stacked else 0
    axes = tuple(range(lead, lead + t.in_axes))
    absmax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axes, keepdims=True)
    qscale = jnp.where(absmax > 0, absmax / 127.0, 1.0)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / qscale), -127, 127).astype(jnp.int8)
    return {"q": q, "qscale": qscale}


def make_base(params, spec: LoraSpec, dtype):
    """The frozen base the adapters sit on: params (pure dict) in the compute `dtype`; with
    quantize="int8" every target as quantize_int8's {"q", "qscale"} instead."""
    from vrft_jax.policy import cast_params

    base = cast_params(params, dtype)
    if spec.quantize == "int8":
        for t in spec.targets:
            base = _replace(base, t.path, quantize_int8(_get(params, t.path), t))
    return base


def base_shardings(param_shardings, spec: LoraSpec, mesh, rules):
    """Shardings of make_base's result from the model's parameter shardings (pure dict)."""
    from vrft_jax import sharding

    out = param_shardings
    if spec.quantize == "int8":
        for t in spec.targets:
            lead = 1 if t.stacked else 0
            shape = tuple(1 if lead <= i < lead + t.in_axes else n for i, n in enumerate(t.shape))
            scale = jax.sharding.NamedSharding(
                mesh, sharding.logical_to_mesh_spec(t.names, shape, mesh, rules)
            )
            out = _replace(out, t.path, {"q": _get(param_shardings, t.path), "qscale": scale})
    return out


def attach(base, adapters, spec: LoraSpec):
    """The model's params pytree (for nnx.merge): `base` with an `Adapted` node at each target
    that has adapters or a quantised base. adapters None or {} = adapters off (the base model)."""
    out = base
    for t in spec.targets:
        node, ad = _get(base, t.path), _get(adapters or {}, t.path)
        quantised = isinstance(node, dict)
        if ad is None and not quantised:
            continue
        w, qscale = (node["q"], node["qscale"]) if quantised else (node, None)
        a, b = (None, None) if ad is None else (ad["a"], ad["b"])
        out = _replace(out, t.path, Adapted(w, qscale, a, b, spec.scale))
    return out


def merge(base, adapters, spec: LoraSpec, dtype):
    """Plain arrays in `dtype`: every target's effective weight (dequantised base + delta), the
    other params cast. What export writes; the sampler decodes with the same values
    (merge_targets + with_targets)."""
    from vrft_jax.policy import cast_params

    tree = attach(base, adapters, spec)
    merged = jax.tree.map(
        lambda x: x.astype(dtype) if isinstance(x, Adapted) else x,
        tree,
        is_leaf=lambda x: isinstance(x, Adapted),
    )
    return cast_params(merged, dtype)


def merge_targets(base, adapters, spec: LoraSpec, dtype) -> dict:
    """{target key: its effective weight in `dtype`} (dequantised base + delta). Jitted by the
    sampler, which puts them into the base with `with_targets`: a jitted `merge` would also copy
    every other parameter (embedding, vision tower) into new buffers, each rollout."""
    tree = attach(base, adapters, spec)
    return {t.key: _get(tree, t.path).astype(dtype) for t in spec.targets}  # as `merge` does


def with_targets(base, targets: dict, spec: LoraSpec):
    """`base` (its other leaves already in the compute dtype, as make_base leaves them) with each
    target replaced by targets[key]: the model's params, sharing the base's arrays."""
    out = base
    for t in spec.targets:
        out = _replace(out, t.path, targets[t.key])
    return out


def is_zero_delta(adapters) -> bool:
    """True when every B is exactly 0 (fresh adapters): the adapted model IS the base model."""
    bs = [ad for path, ad in jax.tree_util.tree_leaves_with_path(adapters)
          if str(getattr(path[-1], "key", "")) == "b"]  # fmt: skip
    return all(not bool(jnp.any(b != 0)) for b in bs)
