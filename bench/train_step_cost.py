"""Does one GRPO update of Qwen2-VL or Qwen2.5-VL fit on one GPU, and what does it cost? No weights.

    PYTHONPATH=. python bench/train_step_cost.py                    # 2b, the paper's step
    PYTHONPATH=. python bench/train_step_cost.py --remat full --micro-batch-size 32
    PYTHONPATH=. python bench/train_step_cost.py --preset 7b --freeze-vision
    PYTHONPATH=. python bench/train_step_cost.py --preset qwen2_5_vl-3b   # (or qwen2_5_vl-7b)
    PYTHONPATH=. python bench/train_step_cost.py --preset qwen3_vl-8b     # (or qwen3_vl-2b/-4b)
    PYTHONPATH=. python bench/train_step_cost.py --sweep            # micro-batch x remat table
    PYTHONPATH=. python bench/train_step_cost.py --fsdp 1,2,4,8     # per device over FSDP sizes
    PYTHONPATH=. python bench/train_step_cost.py --lora 64 --fsdp 1,8  # full vs LoRA vs QLoRA

--lora R: the same step with LoRA adapters of rank R on the decoder's projections (float32
adapters and moments as the train state; the frozen base in bf16, or int8 for QLoRA, is an
argument of the step; no reference copy: the reference is the base with the adapters off).

Builds the real jitted GRPO update (vrft_jax.steps.TrainSteps(...).update_grpo, state donated)
with the parameters (float32 master weights), the AdamW state (optim.make_optimizer) and the step
batch as jax.ShapeDtypeStruct (nnx.eval_shape / jax.eval_shape: nothing is allocated), placed as
the trainer places them on a mesh of --fsdp devices (fake CPU devices; parameters and moments
split over fsdp, sequence rows and image slots over the batch axes), lowers and compiles it on
the local backend (CPU), and prints, per device:
- memory_analysis(): argument, output, aliased (donated) and temporary bytes; the step's peak
  estimate = arguments + temporaries + outputs - aliased, plus the frozen reference copy that stays
  resident beside it when beta != 0 (the initial weights in the compute dtype, split like the
  parameters; it computes ref_logps before the update). The step's own compute-dtype copy of the
  weights is among the temporaries;
- the largest arrays of the compiled program (what dominates the temporaries);
- flops of the step: matmul flops counted on the jaxpr with every scan multiplied by its length
  (XLA's cost_analysis() counts a loop body once, so its number for this scanned program is far
  too low; it is printed beside, for reference), per completion token, and the time one step
  would take at the GPU's dense bf16 peak;
- a floor: train state + batch + the accumulated gradients (master dtype) + the current
  micro-batch's gradients and the cast weights (compute dtype) + what JAX saves for the backward
  (jax._src.ad_checkpoint.saved_residuals of the vision tower over all images and of one
  micro-batch, divided over the devices) + the reference copy.
CPU XLA's memory plan (buffer assignment, fusion, rematerialisation) is only an estimate of what
GPU XLA will do: CPU XLA also computes bf16 elementwise work in float32 and keeps float32 copies
of bf16 arrays (weight-sized ones in the optimizer update), so with bf16 it overestimates; expect
GPU XLA between the floor and the CPU plan (with float32 params the two agree within 6%). cudnn
attention (model.attention="cudnn") is not compiled here (XLA attention keeps [H, T, T] scores).

Measured before float32 master weights (bf16 params and Adam state; one device; jax 0.10.2 CPU;
2b, B=16 x G=8, C=256; GiB incl. the 4.1 GiB reference):
    micro  remat  CPU plan  floor      micro  remat  CPU plan  floor
        8  none     217.8   144.9          8  full      41.4   28.2
       16  none     270.7   172.7         16  full      46.9   29.8
       32  none     368.4   228.4         32  full      58.0   33.1
       64  none     569.1   339.7         64  full      80.2   39.8
(that table: model.vision_remat = model.remat.) With remat none for the whole model the vision
tower's VJP over the step's 16 images keeps 92 GiB (float32 and bf16 attention probabilities
[32 layers, 16 images, 16 heads, 1024, 1024]: 48 GiB); hence the default model.vision_remat="full":
remat none + vision full, micro 8: CPU plan 86.0 GiB with the reference (fits an H200), floor 54.3,
vision residuals 1.74 GiB, 804.5 TFLOP (+2% over 788). Flops per step 788 TFLOP (remat none) /
965 TFLOP (full), 24.1 / 29.5 GFLOP per completion token. 7b (G=4, remat full): CPU plan
132.5 GiB, 2166 TFLOP. Each compile takes 25-70 s on 2 cores.

Defaults are configs/base.py with the paper's settings (configs/common.reference_training: bf16,
16 prompts per step, G 8 for 2b / 4 for 7b, beta 0.04, 256 completion tokens); the batch is what
the trainer feeds the update: B prompts in the 384 prompt bucket, one 448x448 image each
(buckets.pad_images' auto layout: per-image slots [B, 1024, 1176]), N = B*G completions of C
tokens with sampler and reference log-probs. main() imports configs.base, hence ml_collections;
the module itself imports without it.
"""

import argparse
import functools
import os
import re
import time
import types

if __name__ == "__main__" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    # --fsdp N compiles for N devices: fake CPU devices (set before jax is imported).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax import buckets, lora, optim, policy, sharding, steps
from vrft_jax.models import Qwen2VL, get_preset

GiB = 2**30
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak (SXM)
GPU_GIB = {"H100": 80, "H200": 141}
CARDS_GIB = (24, 48, 80, 141)  # the --lora table: 24 GB (RTX 4090), 48 (A6000/L40S), 80, 141
FITS_NOTE = (
    "yes = within JAX's default 75% of the card (XLA_PYTHON_CLIENT_MEM_FRACTION), 0.95 = only "
    "with XLA_PYTHON_CLIENT_MEM_FRACTION=0.95, NO = not at all"
)


def step_config(args):
    """configs/base.py + the paper's settings + the command line -> ConfigDict."""
    from configs import base, common

    c = base.get_config()
    common.reference_training(c, args.preset if args.preset in common.MODELS else "2b")
    c.model_init = ""  # shapes only
    c.model.preset = args.preset
    c.model.remat = args.remat or c.model.remat
    c.model.vision_remat = getattr(args, "vision_remat", None) or c.model.vision_remat
    c.model.master_dtype = getattr(args, "master_dtype", None) or c.model.master_dtype
    c.model.compute_dtype = args.compute_dtype or c.model.compute_dtype
    c.optim.mu_dtype = getattr(args, "mu_dtype", None) or c.optim.mu_dtype
    c.input.batch_size = args.prompts or c.input.batch_size
    c.grpo.G = args.G or c.grpo.G
    c.sampler.max_new_tokens = args.completion or c.sampler.max_new_tokens
    if args.micro_batch_size:
        c.grpo.micro_batch_size = args.micro_batch_size
    if args.beta is not None:
        c.grpo.beta = args.beta
    if args.freeze_vision:
        c.optim.freeze = "^visual/"
    if getattr(args, "lora_rank", 0):
        c.lora.rank, c.lora.alpha = args.lora_rank, 2.0 * args.lora_rank
        c.lora.quantize = getattr(args, "quantize", "none")
    return c


def abstract_batch(model_config, B, G, P, C, side, with_ref):
    """The update's batch as ShapeDtypeStructs (the shapes place_batch gives the update).

    prompt_ids / prompt_mask int32 [B, P]; pixel_values float32 in pad_images' auto layout for B
    images of side x side pixels, image_grid_thw int32 [I, 3]; completion_ids / completion_mask
    int32 [N, C], advantages float32 [N], sampler_logps (and ref_logps) float32 [N, C].
    """
    side = side // model_config.patch_size
    grid = np.asarray([(1, side, side)] * B)
    patches = np.zeros((B * side * side, model_config.patch_dim), np.float32)
    pixels, grid = buckets.pad_images(patches, grid, layout="auto")
    sds = jax.ShapeDtypeStruct
    N = B * G
    batch = {
        "prompt_ids": sds((B, P), jnp.int32),
        "prompt_mask": sds((B, P), jnp.int32),
        "pixel_values": sds(pixels.shape, jnp.float32),
        "image_grid_thw": sds(grid.shape, jnp.int32),
        "completion_ids": sds((N, C), jnp.int32),
        "completion_mask": sds((N, C), jnp.int32),
        "advantages": sds((N,), jnp.float32),
        "sampler_logps": sds((N, C), jnp.float32),
    }
    if with_ref:
        batch["ref_logps"] = sds((N, C), jnp.float32)
    return batch


def _on(sds_tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sds_tree, shardings
    )


def _device_bytes(sds_tree):
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree.leaves(sds_tree)
    )


def place_abstract_batch(batch, mesh):
    """steps.place_batch's placement on ShapeDtypeStructs: prompt side replicated, sequence rows
    (and per-image slots when their count divides) split over the batch axes."""
    split, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    ways = sharding.batch_ways(mesh)

    def where(key, x):
        if key == "pixel_values":
            return split if len(x.shape) == 3 and x.shape[0] % ways == 0 else replicated
        return replicated if key in steps.PROMPT_KEYS else split

    sds = jax.ShapeDtypeStruct
    return {k: sds(x.shape, x.dtype, sharding=where(k, x)) for k, x in batch.items()}


def build(c, P, side, fsdp=1):
    """ConfigDict, prompt bucket P, image side (pixels), devices on the fsdp axis -> namespace of
    the jitted `update` (the trainer's, with its out_shardings), abstract `state` and `batch`
    placed as the trainer places them, `graphdef`, `model_config`, `ref_bytes` (the frozen
    reference copy's bytes per device: the initial weights in the compute dtype, sharded like the
    parameters)."""
    m = c.model
    model_config = get_preset(
        m.preset, param_dtype=m.master_dtype, compute_dtype=m.compute_dtype,
        attention=m.attention, remat=m.remat, vision_remat=m.vision_remat,
        scan_layers=m.scan_layers,
    )  # fmt: skip
    if len(jax.devices()) < fsdp:
        raise SystemExit(f"--fsdp {fsdp}: only {len(jax.devices())} devices (set XLA_FLAGS)")
    mesh = sharding.make_mesh((("data", 1), ("fsdp", fsdp), ("tensor", 1)), jax.devices()[:fsdp])
    abstract = nnx.eval_shape(lambda: Qwen2VL(model_config, rngs=nnx.Rngs(0)))
    graphdef, params_state = nnx.split(abstract, nnx.Param)
    param_shardings = nnx.to_pure_dict(sharding.param_shardings(params_state, mesh))
    params = nnx.to_pure_dict(params_state)
    params = _on(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params),
                 param_shardings)  # fmt: skip
    # Built over the pure dict the train state holds: with optim.freeze, labels built over the
    # nnx.State (as train.py passes) do not match the pure-dict params tx.init receives.
    lora_run = None
    if c.lora.rank:  # the train state holds the adapters; the base is an argument of the step
        spec = lora.make_spec(c.lora, params_state)
        rules = sharding.make_rules(())
        base = jax.eval_shape(
            functools.partial(lora.make_base, spec=spec, dtype=m.compute_dtype), params
        )
        base = _on(base, lora.base_shardings(param_shardings, spec, mesh, rules))
        shapes = lora.adapter_shapes(spec, m.master_dtype)
        param_shardings = _adapter_shardings(spec, shapes, mesh, rules)
        params = _on(shapes, param_shardings)
        lora_run = types.SimpleNamespace(spec=spec, base=base)
    tx, schedule = optim.make_optimizer(c.optim, max(int(c.total_steps), 1), params)
    # The moments follow their parameter's sharding (as steps.make_train_state places them).
    opt_shardings = steps.opt_state_shardings(tx, params, param_shardings, mesh)
    replicated = sharding.replicated(mesh)
    state = {
        "params": params,
        "opt_state": _on(jax.eval_shape(tx.init, params), opt_shardings),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
    }
    with_ref = float(c.grpo.beta) != 0.0
    batch = abstract_batch(
        model_config, int(c.input.batch_size), int(c.grpo.G), P,
        int(c.sampler.max_new_tokens), side, with_ref,
    )  # fmt: skip
    batch = place_abstract_batch(batch, mesh)
    ref_bytes = 0
    if with_ref and lora_run is None:  # reference_params: the initial weights, compute dtype
        ref = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(m.compute_dtype),
                                                          sharding=x.sharding), params)  # fmt: skip
        ref_bytes = _device_bytes(ref)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    fns = steps.TrainSteps(graphdef, c, tx, schedule, shardings, lora_run)
    return types.SimpleNamespace(
        update=fns.update_grpo_jit, state=state, batch=batch, graphdef=graphdef,
        model_config=model_config, ref_bytes=ref_bytes, fsdp=fsdp,
        base=None if lora_run is None else lora_run.base,
    )  # fmt: skip


def _adapter_shardings(spec, shapes, mesh, rules):
    """NamedShardings of the adapters: the weight's input / output axes' rules, rank replicated."""
    out = shapes
    for t in spec.targets:
        node = lora._get(shapes, t.path)
        names_a, names_b = lora.adapter_names(t)
        sh = {
            k: jax.sharding.NamedSharding(
                mesh, sharding.logical_to_mesh_spec(names, node[k].shape, mesh, rules)
            )
            for k, names in (("a", names_a), ("b", names_b))
        }
        out = lora._replace(out, t.path, sh)
    return out


def saved_for_backward(b, micro_batch_size):
    """What JAX keeps for the backward pass, before any backend's memory planning.

    Returns {"vision": rows, "micro": rows} for the vision tower's VJP over all the step's images
    and one micro-batch's LLM forward; rows [(bytes, "dtype[shape]", where)] largest first.
    Residuals that are the function's own arguments (parameters, inputs) are left out. Uses
    jax._src.ad_checkpoint.saved_residuals (what jax.ad_checkpoint.print_saved_residuals prints);
    None where that private helper is missing.
    """
    if b.base is not None:
        return None  # LoRA: the compiled plan only (the residual breakdown reads full params)
    try:
        from jax._src.ad_checkpoint import saved_residuals
    except ImportError:
        return None

    def rows(res):
        out = [
            (aval.size * aval.dtype.itemsize, f"{aval.str_short()}", why)
            for aval, why in res
            if "argument" not in why
        ]
        return sorted(out, key=lambda row: -row[0])

    batch, g = b.batch, b.graphdef
    # The step runs on the compute-dtype cast of the master weights (steps.accumulate).
    to_compute = functools.partial(policy.cast_params, dtype=b.model_config.compute_dtype)
    params = jax.eval_shape(to_compute, b.state["params"])
    images = (batch["pixel_values"], batch["image_grid_thw"])
    vision = saved_residuals(functools.partial(policy.encode_images, g), params, *images)
    feats = jax.eval_shape(functools.partial(policy.encode_images, g), params, *images)
    B, N = batch["prompt_ids"].shape[0], batch["completion_ids"].shape[0]
    M = min(int(micro_batch_size), N) if micro_batch_size > 0 else N
    ids = jax.ShapeDtypeStruct((M, batch["completion_ids"].shape[1]), jnp.int32)

    def micro(p, f, prompt_ids, prompt_mask, grid, completion_ids):
        layout = policy.prompt_layout(b.model_config, prompt_ids, prompt_mask, grid)
        rows = jnp.arange(M, dtype=jnp.int32) % B  # any valid prompt rows: sizes only
        logp, ent = policy.rows_logprobs(
            g, p, prompt_ids, prompt_mask, layout, f, completion_ids, rows, with_entropy=True
        )
        return logp, jax.lax.stop_gradient(ent)  # the GRPO loss only logs the entropy

    prompt = (batch["prompt_ids"], batch["prompt_mask"], batch["image_grid_thw"])
    llm = saved_residuals(micro, params, feats, *prompt, ids)
    return {"vision": rows(vision), "micro": rows(llm)}


# ---- Flops on the jaxpr -------------------------------------------------------------------------


def _sub_jaxprs(value):
    """The jaxprs held in one equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    for v in items:
        if hasattr(v, "eqns"):
            yield v
        elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
            yield v.jaxpr


def matmul_flops(jaxpr) -> float:
    """2 * multiply-adds of every dot_general / conv in a jaxpr, loops included.

    scan bodies count `length` times; cond counts its costliest branch; a while loop counts its
    body once (the GRPO update has none). Elementwise work (softmax, norms, Adam) is not counted:
    it is a few percent of a transformer step's flops.
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]  # lhs's contracted dims first
            lhs = eqn.invars[0].aval.shape
            k = np.prod([lhs[d] for d in contract]) if contract else 1
            total += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * float(k)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # kernel: output features x the rest
            per_output = np.prod(rhs) / rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * float(per_output)
        subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
        if not subs:
            continue
        if name == "cond":
            total += max(matmul_flops(j) for j in subs)
        else:
            times = eqn.params.get("length", 1) if name == "scan" else 1
            total += times * sum(matmul_flops(j) for j in subs)
    return total


# ---- Compiled-program facts ---------------------------------------------------------------------

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip
_RESULT = re.compile(r"^\s*(?:ROOT )?(%?[\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* ([\w\-]+)\(")


def largest_arrays(hlo_text, top):
    """The `top` largest array results in the compiled HLO: [(bytes, dtype[shape], op, name)].

    A stand-in for the buffer assignment: the arrays named here are the ones that dominate the
    temporaries (each distinct shape once, with how many instructions produce it).
    """
    seen = {}
    for line in hlo_text.splitlines():
        match = _RESULT.match(line)
        if not match or match.group(2) not in _DTYPE_BYTES:
            continue
        name, dtype, dims, op = match.groups()
        if op in ("parameter", "get-tuple-element", "bitcast", "tuple"):
            continue  # views, not new buffers
        shape = tuple(int(d) for d in dims.split(",") if d)
        size = int(np.prod(shape)) * _DTYPE_BYTES[dtype]
        key = f"{dtype}[{','.join(map(str, shape))}]"
        count, first_op, _ = seen.get(key, (0, op, size))
        seen[key] = (count + 1, first_op, size)
    rows = sorted(((size, key, op, n) for key, (n, op, size) in seen.items()), reverse=True)
    return rows[:top]


def measure(c, P=384, side=448, top=0, fsdp=1):
    """Compile one configuration -> dict of memory (bytes per device), flops and timings."""
    t0 = time.perf_counter()
    b = build(c, P, side, fsdp)
    update, state, batch = b.update, b.state, b.batch
    jaxpr = jax.make_jaxpr(update)(state, batch, b.base)
    flops = matmul_flops(jaxpr.jaxpr)
    saved = saved_for_backward(b, int(c.grpo.micro_batch_size))
    t1 = time.perf_counter()
    compiled = update.lower(state, batch, b.base).compile()
    seconds = time.perf_counter() - t1
    mem = compiled.memory_analysis()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0] if analysis else {}
    out = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "ref_params": b.ref_bytes,
        "saved": saved,
        "flops": flops,
        "xla_flops": (analysis or {}).get("flops", float("nan")),
        "trace_s": t1 - t0,
        "compile_s": seconds,
        "params": sum(x.size for x in jax.tree.leaves(state["params"])),
        "state_sds": state,
        "frozen": b.ref_bytes if b.base is None else _device_bytes(b.base),
        "batch": {k: (tuple(v.shape), v.dtype.name) for k, v in batch.items()},
        "config": b.model_config,
        "P": P,
        "fsdp": fsdp,
    }
    out["peak"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"]
    out["resident_peak"] = out["peak"] + b.ref_bytes
    out["floor"] = None
    if saved is not None:
        # What no backend can avoid, per device: the train state and batch, the accumulated
        # gradients (master dtype), the current micro-batch's gradients and the cast weights
        # (compute dtype), the saved residuals (rows and images split over the batch axes),
        # the reference copy.
        master = _device_bytes(state["params"])
        compute = (
            master
            * jnp.dtype(c.model.compute_dtype).itemsize
            // jnp.dtype(c.model.master_dtype).itemsize
        )
        cast_copy = compute if c.model.compute_dtype != c.model.master_dtype else 0
        residuals = sum(row[0] for rows in saved.values() for row in rows) // fsdp
        out["floor"] = out["arguments"] + master + compute + cast_copy + residuals + b.ref_bytes
    if top:
        out["largest"] = largest_arrays(compiled.as_text(), top)
    return out


def fits(nbytes):
    """bytes -> "H100:yes H200:yes" (see FITS_NOTE)."""

    def one(gib):
        if nbytes <= 0.75 * gib * GiB:
            return "yes"
        return "0.95" if nbytes <= 0.95 * gib * GiB else "NO"

    return " ".join(f"{gpu}:{one(gib)}" for gpu, gib in GPU_GIB.items())


def report(c, r):
    g, m = c.grpo, c.model
    B, G, C = int(c.input.batch_size), int(g.G), int(c.sampler.max_new_tokens)
    N = B * G
    num_micro = steps.num_micro_batches(N, int(g.micro_batch_size))
    print(
        f"{m.preset} ({r['params'] / 1e9:.2f}B params, {m.master_dtype} master weights"
        f" and Adam state (first moment {c.optim.mu_dtype or m.master_dtype}), "
        f"{m.compute_dtype} compute, remat {m.remat} (vision {m.vision_remat}), "
        f"freeze {c.optim.freeze or 'none'}); "
        f"backend {jax.default_backend()}, traced in {r['trace_s']:.0f} s, compiled in "
        f"{r['compile_s']:.0f} s"
    )
    print(
        f"step batch: B={B} prompts x G={G} = N={N} completions of C={C} tokens, prompt bucket "
        f"{r['P']}, beta {g.beta}; {num_micro} micro-batches of {N // num_micro}; fsdp "
        f"{r['fsdp']} (memory per device)"
    )
    for k, (shape, dtype) in r["batch"].items():
        print(f"  {k:15s} {dtype:8s} {shape}")
    print("memory_analysis (CPU XLA's plan: an estimate of GPU XLA's, about +-20%):")
    for k in ("arguments", "outputs", "aliased", "temporaries"):
        print(f"  {k:12s} {r[k] / GiB:8.2f} GiB")
    print(f"  step peak    {r['peak'] / GiB:8.2f} GiB  (arguments + temporaries + outputs - alias)")
    if r["ref_params"]:
        print(f"  + reference  {r['ref_params'] / GiB:8.2f} GiB  (frozen {m.compute_dtype} copy)")
    print(f"  = resident   {r['resident_peak'] / GiB:8.2f} GiB  fits {fits(r['resident_peak'])}")
    print(f"  ({FITS_NOTE})")
    if r["floor"] is not None:
        print(
            f"  floor        {r['floor'] / GiB:8.2f} GiB  (state + batch + 2 gradient copies + "
            "saved residuals + reference; expect GPU XLA between the floor and the CPU plan, "
            "which also holds float32 copies of bf16 arrays)"
        )
    if r["saved"] is not None:
        print("saved for the backward by JAX (before XLA's planning, the same on every backend):")
        parts = {
            "vision": f"vision tower VJP, all {B} images",
            "micro": f"one micro-batch of {N // num_micro} sequences",
        }
        for part, what in parts.items():
            rows = r["saved"][part]
            print(f"  {what}: {sum(row[0] for row in rows) / GiB:.2f} GiB, largest:")
            for size, shape, why in rows[:3]:
                print(f"    {size / GiB:7.3f} GiB  {shape:36s} {why.split(' from ')[0]}")
    if r.get("largest"):
        print("largest arrays in the compiled program (count = instructions of that shape):")
        for size, key, op, n in r["largest"]:
            print(f"  {size / GiB:8.3f} GiB  {key:32s} {op:22s} x{n}")
    per_token = r["flops"] / (N * C)
    peak = PEAK_BF16_FLOPS["H100"]
    print(
        f"flops per step {r['flops'] / 1e12:.1f} TFLOP (matmuls, loops counted; XLA "
        f"cost_analysis, loop bodies once: {r['xla_flops'] / 1e12:.2f} TFLOP)"
    )
    print(
        f"  per completion token {per_token / 1e9:.2f} GFLOP; per sequence token "
        f"{r['flops'] / (N * (r['P'] + C)) / 1e9:.2f} GFLOP (6 x params = "
        f"{6 * r['params'] / 1e9:.2f} GFLOP)"
    )
    print(
        f"  at the H100/H200 dense bf16 peak ({peak / 1e12:.0f} TFLOP/s): "
        f"{r['flops'] / peak:.2f} s per step; at 40% MFU {r['flops'] / peak / 0.4:.2f} s "
        "(the rollout's sampling not included)"
    )


def sweep(args):
    """micro_batch_size {8, 16, 32, 64} x remat {none, full}: one compile each, one line each."""
    print(
        f"one GRPO update of {args.preset} on one device, GiB. step = CPU XLA's plan (arguments +"
        " temporaries + outputs - aliased), an estimate of GPU XLA's; +ref = step + the frozen "
        "reference copy; temp = temporaries; floor = state + batch + 2 gradient copies + saved "
        "residuals + reference (a floor: little room below it on any backend)"
    )
    print(f"fits: {FITS_NOTE}")
    print(
        f"{'micro':>5s} {'remat':>5s} {'step':>7s} {'+ref':>7s} {'temp':>7s} {'floor':>7s} "
        f"{'TFLOP':>7s} {'compile':>7s}  fits +ref (80 / 141 GiB)  fits floor"
    )
    for remat in ("none", "full"):
        for micro in (8, 16, 32, 64):
            args.remat, args.micro_batch_size = remat, micro
            c = step_config(args)
            r = measure(c, args.prompt_len, args.image_side)
            floor = r["floor"] or float("nan")
            print(
                f"{micro:5d} {remat:>5s} {r['peak'] / GiB:7.1f} {r['resident_peak'] / GiB:7.1f} "
                f"{r['temporaries'] / GiB:7.1f} {floor / GiB:7.1f} {r['flops'] / 1e12:7.1f} "
                f"{r['compile_s']:6.0f}s  {fits(r['resident_peak']):24s}  {fits(floor)}",
                flush=True,
            )


def fsdp_sweep(args, sizes):
    """The configuration at fsdp = each of `sizes` devices: one compile each, one line each."""
    print(
        f"one GRPO update of {args.preset} per device, GiB: step = CPU XLA's plan (arguments + "
        "temporaries + outputs - aliased), +ref = with the frozen reference copy, floor = state "
        "+ batch + gradients + cast weights + saved residuals + reference"
    )
    print(f"fits: {FITS_NOTE}")
    print(
        f"{'fsdp':>4s} {'state':>7s} {'step':>7s} {'+ref':>7s} {'temp':>7s} {'floor':>7s} "
        f"{'compile':>7s}  fits +ref (80 / 141 GiB)  fits floor"
    )
    for fsdp in sizes:
        c = step_config(args)
        r = measure(c, args.prompt_len, args.image_side, fsdp=fsdp)
        floor = r["floor"] or float("nan")
        print(
            f"{fsdp:4d} {r['arguments'] / GiB:7.1f} {r['peak'] / GiB:7.1f} "
            f"{r['resident_peak'] / GiB:7.1f} {r['temporaries'] / GiB:7.1f} {floor / GiB:7.1f} "
            f"{r['compile_s']:6.0f}s  {fits(r['resident_peak']):24s}  {fits(floor)}",
            flush=True,
        )


def lora_table(args, sizes):
    """full / LoRA / QLoRA (int8) x fsdp sizes of the --preset's paper step: one compile each."""
    print(
        f"one GRPO update of {args.preset} per device, GiB (CPU XLA's plan + the resident "
        f"reference copy for full fine-tuning; LoRA rank {args.lora_rank}, decoder projections)"
    )
    cards = " ".join(f"{g:>4d}" for g in CARDS_GIB)
    print(f"{'mode':>6s} {'fsdp':>4s} {'state':>7s} {'frozen':>7s} {'args':>7s} {'temp':>7s} "
          f"{'total':>7s}  fits (75% of) {cards} GB")  # fmt: skip
    rank = args.lora_rank
    for mode, r, quantize in (("full", 0, "none"), ("lora", rank, "none"), ("qlora", rank, "int8")):
        for fsdp in sizes:
            args.lora_rank, args.quantize = r, quantize
            c = step_config(args)
            out = measure(c, args.prompt_len, args.image_side, fsdp=fsdp)
            total = out["resident_peak"]
            state_bytes = _device_bytes(out["state_sds"])
            marks = " ".join(f"{'yes' if total <= 0.75 * g * 1e9 else 'NO':>4s}" for g in CARDS_GIB)
            print(
                f"{mode:>6s} {fsdp:4d} {state_bytes / GiB:7.2f} {out['frozen'] / GiB:7.2f} "
                f"{out['arguments'] / GiB:7.2f} "
                f"{out['temporaries'] / GiB:7.2f} {total / GiB:7.2f}  {'':14s}{marks}",
                flush=True,
            )
    args.lora_rank = rank


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    presets = ("tiny", "2b", "7b", "qwen2_5_vl-3b", "qwen2_5_vl-7b")
    presets += ("qwen3_vl-2b", "qwen3_vl-4b", "qwen3_vl-8b")
    ap.add_argument("--preset", choices=presets, default="2b")
    ap.add_argument("--prompts", type=int, help="B prompts per step (default input.batch_size)")
    ap.add_argument("--G", type=int, help="samples per prompt (default grpo.G)")
    ap.add_argument("--completion", type=int, help="completion length C (sampler.max_new_tokens)")
    ap.add_argument("--micro-batch-size", type=int, help="default grpo.micro_batch_size")
    ap.add_argument("--remat", choices=("none", "full", "dots"), help="default model.remat")
    ap.add_argument(
        "--vision-remat", choices=("none", "full", "dots"), help="default model.vision_remat"
    )
    ap.add_argument("--prompt-len", type=int, default=384, help="prompt bucket P")
    ap.add_argument("--image-side", type=int, default=448, help="pixels of each square image")
    ap.add_argument("--master-dtype", choices=("float32", "bfloat16"), help="model.master_dtype")
    ap.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
    ap.add_argument("--mu-dtype", choices=("float32", "bfloat16"), help="optim.mu_dtype")
    ap.add_argument(
        "--fsdp", default="1", help="devices on the fsdp axis; a list (1,2,4,8) prints a table"
    )
    ap.add_argument("--beta", type=float, help="KL weight (0 drops ref_logps and the ref copy)")
    ap.add_argument("--freeze-vision", action="store_true", help="optim.freeze='^visual/'")
    ap.add_argument("--top", type=int, default=12, help="largest compiled arrays to list")
    ap.add_argument("--sweep", action="store_true", help="micro-batch {8..64} x remat table (2b)")
    ap.add_argument(
        "--lora", dest="lora_rank", type=int, default=0,
        help="LoRA rank: a full / LoRA / QLoRA table over the --fsdp sizes",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.lora_rank:
        lora_table(args, [int(x) for x in args.fsdp.split(",")])
        return
    if args.sweep:
        sweep(args)
        return
    sizes = [int(x) for x in args.fsdp.split(",")]
    if len(sizes) > 1:
        fsdp_sweep(args, sizes)
        return
    c = step_config(args)
    report(c, measure(c, args.prompt_len, args.image_side, top=args.top, fsdp=sizes[0]))


if __name__ == "__main__":
    main()
