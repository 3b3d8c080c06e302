"""Model set-up for a run: the model at its initial weights, the sampler bound to parameters, and
the frozen GRPO reference.

Mixed precision (config.model): the train state holds master weights in `master_dtype` (float32
by default, also for a bf16 Hugging Face checkpoint) and every forward runs in `compute_dtype`
on `policy.cast_params(master, compute_dtype)`:
  - the train step casts inside its jitted program (steps.py);
  - the sampler gets a compute-dtype copy made once per rollout / evaluation (`make_generate_fn`);
  - the reference is that same cast of the initial (or warmed-up) weights (`reference_params`),
    so at step 0 policy and reference log-probs are bit-identical (KL exactly 0).
bf16 master weights remain possible (`master_dtype="bfloat16"`, e.g. evaluation-only runs on a
small GPU); `master_precision_warning` says at start-up when lr is too small for them to move.

LoRA (config.lora.rank > 0, `lora_setup`): the weights are loaded in the compute dtype and become
the frozen base (int8 targets with lora.quantize="int8"); the train state holds float32 adapters.
With lora.full_warmup the weights are loaded as master weights, the SFT warm-up trains them all,
and its result replaces the base (`rebase`) before GRPO trains fresh adapters on it.
The sampler decodes with the adapters merged into a compute-dtype copy made once per rollout
(`make_generate_fn`): the decode loop fuses q/k/v and gate/up per layer (Decoder.split_layers) and
runs C steps per rollout, so one merge per rollout is cheaper than adding the two rank-r matmuls
(and int8 dequantisation) to every projection of every decode step (bench/lora_decode.py; the
numbers are in docs/ARCHITECTURE.md). The reference is the base with
the adapters off (`{}`), no second copy of the weights, unless the start adapters are not zero
(an SFT warm-up or lora.init): then a copy of those (megabytes).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from vrft_jax import lora, policy, sampler, sharding
from vrft_jax.models import get_preset, random_qwen2_vl

DTYPES = ("float32", "bfloat16")


def check_dtypes(model_config) -> None:
    """config.model's master_dtype and compute_dtype are float32 or bfloat16 (else an error
    naming the field)."""
    for field in ("master_dtype", "compute_dtype"):
        value = model_config[field]
        if value not in DTYPES:
            raise ValueError(f"config.model.{field}={value!r}: expected one of {DTYPES}")


def build_model(config):
    """The model at its initial weights in the master dtype: config.model_init's Hugging Face
    weights, else a random config.model.preset (a checkpoint's weights are restored later, into
    these). Warns when bf16 master weights cannot take config.optim.lr steps."""
    from vrft_jax import hf

    m = config.model
    check_dtypes(m)
    lora.check_config(config.lora)
    lora.check_full_warmup(config)
    # LoRA: the weights are the frozen base, never trained: load them in the compute dtype
    # (lora.full_warmup: the warm-up trains them first, in the master dtype).
    frozen = config.lora.rank and not config.lora.full_warmup
    dtype = m.compute_dtype if frozen else m.master_dtype
    kwargs = dict(
        prompt_buckets=tuple(config.input.prompt_buckets),
        patch_buckets=tuple(config.input.patch_buckets),
    )
    if config.model_init:  # also the shape source for checkpoints of a HF-initialised run
        model = hf.load_model(
            config.model_init, dtype=dtype, compute_dtype=m.compute_dtype, **kwargs
        )
        model.config = model.config.replace(
            attention=m.attention, remat=m.remat, vision_remat=m.vision_remat,
            scan_layers=m.scan_layers,
        )  # fmt: skip
    else:
        preset = get_preset(
            m.preset, param_dtype=dtype, compute_dtype=m.compute_dtype,
            attention=m.attention, remat=m.remat, vision_remat=m.vision_remat,
            scan_layers=m.scan_layers,
        )  # fmt: skip
        model = random_qwen2_vl(preset, seed=config.seed, **kwargs)
    message = None
    if not config.lora.rank:  # LoRA trains float32 adapters
        message = master_precision_warning(nnx.state(model, nnx.Param), config.optim.lr)
    if message:
        logging.warning(message)
    return model


def stuck_fraction(params, lr) -> float:
    """Fraction of the nonzero weights whose update of size lr rounds away in their own dtype.

    An AdamW step moves each weight by about lr (exactly lr on the first step). Near |w| = 2^e *
    m (0.5 <= m < 1) a float with p mantissa bits has spacing 2^(e - p), so w + lr rounds back to
    w when lr < 2^(e - p - 1). Zero weights (fresh biases) can always move and are not counted.
    """
    stuck = total = 0
    for leaf in jax.tree.leaves(params):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        bits = jnp.finfo(leaf.dtype).nmant  # bf16: 7, float32: 23
        s, n = _stuck_counts(leaf, float(lr), bits)
        stuck, total = stuck + int(s), total + int(n)
    return stuck / max(total, 1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _stuck_counts(w, lr, bits):
    _, e = jnp.frexp(jnp.abs(w).astype(jnp.float32))
    half_spacing = jnp.ldexp(jnp.float32(1.0), e - bits - 1)
    nonzero = w != 0
    return jnp.sum(nonzero & (lr < half_spacing)), jnp.sum(nonzero)


def master_precision_warning(params, lr) -> str | None:
    """A start-up warning when more than 10% of the master weights cannot move by lr (see
    stuck_fraction): bf16 masters at lr 1e-6 freeze nearly all of them. None otherwise."""
    dtypes = {x.dtype for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)}
    if all(jnp.finfo(d).nmant >= 23 for d in dtypes):
        return None  # float32 or wider: a 1e-6 step moves weights up to |w| ~ 8
    fraction = stuck_fraction(params, lr)
    if fraction <= 0.1:
        return None
    names = ", ".join(sorted(np.dtype(d).name for d in dtypes))
    return (
        f"model.master_dtype stores the weights in {names}: an AdamW step of optim.lr={lr:g} is "
        f"below half the spacing of {fraction:.1%} of the nonzero weights, so their updates round "
        "away and the model barely trains. Use model.master_dtype=float32 (the default; compute "
        "stays in model.compute_dtype) or a larger optim.lr."
    )


@dataclasses.dataclass
class LoraRun:
    """A LoRA run's frozen parts: spec (static), the base placed on the mesh (compute dtype or
    int8, see lora.make_base) and the initial adapters (nnx.State with logical names)."""

    spec: lora.LoraSpec
    base: dict
    adapters: nnx.State


def lora_setup(config, params_state, mesh, rules) -> LoraRun | None:
    """config.lora -> LoraRun (None when lora.rank is 0): the base from the model's params
    (`params_state`, which the caller may then drop) and fresh adapters, or config.lora.init's
    PEFT folder."""
    spec = lora.make_spec(config.lora, params_state)
    if spec is None:
        return None
    adapters = lora.init_adapters(spec, config.seed, config.model.master_dtype)
    if config.lora.init:
        from vrft_jax import peft_io

        adapters = peft_io.read_adapters(config.lora.init, spec, adapters, config)
    base = _make_base(config, spec, nnx.to_pure_dict(params_state), params_state, mesh, rules)
    return LoraRun(spec, base, adapters)


def rebase(lora_run, config, params, params_state, mesh, rules) -> None:
    """lora.full_warmup: `lora_run.base` becomes `params` (the warmed-up master weights, pure
    dict) made as lora_setup makes it (compute dtype, int8 targets with lora.quantize). In place:
    the train steps and the sampler read the base from this LoraRun at each call."""
    lora_run.base = None  # the initial base is freed before the new one is made
    lora_run.base = _make_base(config, lora_run.spec, params, params_state, mesh, rules)


def _make_base(config, spec, params, params_state, mesh, rules):
    """lora.make_base of `params` (pure dict), placed as the model's params (`params_state`)."""
    shardings = nnx.to_pure_dict(sharding.param_shardings(params_state, mesh, rules))
    out = lora.base_shardings(shardings, spec, mesh, rules)
    make = jax.jit(
        functools.partial(lora.make_base, spec=spec, dtype=config.model.compute_dtype),
        out_shardings=out,
    )
    return make(params)


def sampler_weights_fn(config, lora_run=None):
    """params -> the weights the sampler decodes with: a jitted cast to the compute dtype (the
    same arrays when already in it). With `lora_run` params are adapters: only the targets'
    effective weights are new arrays (lora.merge_targets), the rest are the base's own, and the
    base is read at each call (lora.full_warmup replaces it after the warm-up: `rebase`)."""
    compute = jnp.dtype(config.model.compute_dtype)
    if lora_run is not None:
        spec = lora_run.spec
        merge = jax.jit(functools.partial(lora.merge_targets, spec=spec, dtype=compute))

        def merged(adapters):
            base = lora_run.base
            return lora.with_targets(base, merge(base, adapters), spec)

        return merged
    cast = jax.jit(functools.partial(policy.cast_params, dtype=compute))

    def to_compute(params):
        floating = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
        return cast(params) if any(x.dtype != compute for x in floating) else params

    return to_compute


def make_generate_fn(graphdef, model_config, config, lora_run=None):
    """params -> generate(input_ids, attention_mask, pixel_values, image_grid_thw, **sampling),
    the sampler bound to `sampler_weights_fn`'s weights for those params (made once per call, i.e.
    per rollout or evaluation; freed with the returned function). Compiled sampler programs are
    shared across params."""
    to_compute = sampler_weights_fn(config, lora_run)
    options = dict(
        prompt_buckets=tuple(config.input.prompt_buckets),
        patch_buckets=tuple(config.input.patch_buckets),
        batch_buckets=tuple(config.sampler.batch_buckets),
        cache_dtype=jnp.dtype(config.model.compute_dtype),
    )

    def bind(params):
        weights = to_compute(params)

        def generate(*args, **kwargs):
            return sampler.generate_with_state(
                graphdef, weights, model_config, *args, sampler_options=options, **kwargs
            )

        return generate

    return bind


def reference_params(config, start_params, lora_run=None):
    """The frozen GRPO reference: `start_params` (initial or warmed-up master weights) cast to
    the compute dtype exactly as every train step casts the policy's, as a new copy (the train
    state's arrays are donated each step). None when the KL term is off (beta 0) or for SFT.
    LoRA: {} (adapters off: the base itself) when the start adapters are zero, else their copy."""
    if config.trainer != "grpo" or config.grpo.beta == 0:
        return None
    if lora_run is not None and lora.is_zero_delta(start_params):
        return {}
    cast = policy.cast_params(start_params, config.model.compute_dtype)
    return jax.tree.map(lambda x: jnp.array(x, copy=True), cast)
