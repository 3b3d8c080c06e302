"""What one compiled decode step costs: XLA's cost analysis and op census, no weights needed.

    PYTHONPATH=. python bench/decode_cost.py                       # Qwen2-VL-2B shapes, bf16
    PYTHONPATH=. python bench/decode_cost.py --preset cpu-small --time
    PYTHONPATH=. python bench/decode_cost.py --stacked             # Sampler(unroll_decode=False)
    PYTHONPATH=. python bench/decode_cost.py --both --dtype float32 # both forms, CPU-honest dtype

Builds the model and the sampler's loop state as shapes only (nnx.eval_shape / jax.eval_shape of
the prefill program), then lowers and compiles on the current backend (a) one decode step (the
sampler's `_step`) and (b) the whole `decode` while_loop, in the Sampler's per-layer form (its
default) or the stacked one (--stacked: stacked weights and cache, scanned layers), at N = B*G
rows, prompt bucket P and C new tokens (2b: N=64, P=384, C=256). Printed per step:
- cost_analysis flops and bytes accessed, beside the ideal bytes (LLM parameters incl. the tied LM
  head + the KV cache columns the masked attention reads) and their ratio;
- the op census of the while body (fusions, custom-calls, copies, dynamic-update-slices, sorts...),
  with a nested layer loop counted once per trip;
- results shaped like a cache layer or a weight (copies/transposes of the cache or the weights each
  step), the [N, V] results, and the instructions that move the most bytes (estimated: operands
  read + result written, a parameter only sliced inside a fusion counted as the slice, an in-place
  update as its update);
- memory_analysis() (arguments, outputs, temporaries) of both programs.
With --time (cpu-small only: it builds real random weights) it also runs the decode loop.

CPU XLA fuses differently from GPU XLA (fewer, larger loop fusions; dots as calls into YNNPACK /
Eigen), so op counts here are not GPU kernel counts. Excess *bytes* (cache copies, float32 upcasts
of the whole cache, full-vocab sorts, extra [N, V] float32 arrays) show up on both backends. CPU XLA
also computes bf16 dots and elementwise ops in float32 (it converts bf16 weights and cache in the
loop), so bf16 runs show CPU-only converts: `--dtype float32` shows the program's own structure.
This file imports no ml_collections / pycocotools / tfds.
"""

import argparse
import collections
import inspect
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax.generation.decode_loop import _step, decode, decode_step, prefill
from vrft_jax.generation.sampler import EOS_TOKEN_IDS, PAD_TOKEN_ID
from vrft_jax.generation.sampling_rules import SamplingRule
from vrft_jax.models import Qwen2VL, get_preset, random_qwen2_vl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout import PRESETS, Preset  # noqa: E402  (bench/rollout.py: the shared size presets)
from summary import row  # noqa: E402

PRESETS = dict(PRESETS)
# 2b widths and vocabulary, 4 layers, fp32: a decode step dominated by the layer weights (unlike
# cpu-small, whose step is mostly its tied LM head), small enough to --time on a CPU.
PRESETS["cpu-wide"] = Preset(
    prompts=2,
    samples=8,
    image_size=112,
    prompt_tokens=64,
    new_tokens=16,
    dtype="float32",
    config=dict(num_hidden_layers=4, vision_depth=2),
)
PROMPT_BUCKET = {"2b": 384, "cpu-small": 64, "cpu-wide": 64}
# HLO opcodes worth counting one by one; everything else lands in "other".
COUNTED = (
    "fusion",
    "custom-call",
    "copy",
    "dynamic-update-slice",
    "dynamic-slice",
    "sort",
    "dot",
    "convolution",
    "gather",
    "scatter",
    "reduce",
    "transpose",
    "broadcast",
    "while",
    "call",
    "conditional",
    "all-reduce",
)
FREE = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast")
BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4}
BYTES.update({"u32": 4, "f64": 8, "s64": 8, "u64": 8})


# ---- Abstract model and loop state ---------------------------------------------------------------


def abstract_setup(preset: str, per_layer: bool, dtype: str | None = None):
    """(config, graphdef, abstract params, abstract SamplingState, dims) without any weights."""
    p = PRESETS[preset]
    dtype = dtype or p.dtype
    config = get_preset("2b", **p.config).replace(
        param_dtype=dtype, compute_dtype=dtype, scan_layers=not per_layer
    )
    abstract = nnx.eval_shape(lambda: Qwen2VL(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract)
    n, plen, ctok = p.prompts * p.samples, PROMPT_BUCKET[preset], p.new_tokens
    ids = jax.ShapeDtypeStruct((p.prompts, plen), jnp.int32)
    kw = dict(
        num_samples=p.samples,
        max_new_tokens=ctok,
        pad_token_id=PAD_TOKEN_ID,
        cache_dtype=config.jnp_compute_dtype,
    )
    if "per_layer_cache" in inspect.signature(prefill).parameters:
        kw["per_layer_cache"] = per_layer  # Sampler(unroll_decode=per_layer)
    # The prefill's own output shapes (text-only prompts: the decode loop never sees images).
    state = jax.eval_shape(
        lambda prm, i, m, r, k: prefill(graphdef, prm, i, m, None, None, r, k, **kw),
        params,
        ids,
        ids,
        jax.ShapeDtypeStruct((p.prompts,), bool),
        jax.eval_shape(lambda: jax.random.key(0)),
    )
    return config, graphdef, params, state, dict(n=n, plen=plen, ctok=ctok)


def ideal_bytes(config, params, state, live_cols: float):
    """Bytes a decode step must read: LLM params (embedding counts once, as the tied LM head) and
    the KV cache, both for the full cache width (what masked attention reads) and the live part."""
    lm = params["language_model"]
    leaves = jax.tree.leaves(lm)
    param_b = sum(x.size * x.dtype.itemsize for x in leaves)
    if not config.tie_word_embeddings:
        emb = lm["embed_tokens"]
        param_b -= emb.size * emb.dtype.itemsize
    full_kv = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.cache))
    live_kv = full_kv * live_cols / state.kv_mask.shape[1]
    return param_b, full_kv, live_kv


# ---- HLO text parsing ----------------------------------------------------------------------------

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")


def shape_bytes(text: str) -> int:
    """Bytes of every array shape in an HLO result type (a tuple sums its parts)."""
    total = 0
    for dt, dims in _SHAPE.findall(text):
        size = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        total += size * BYTES.get(dt, 4)
    return total


def parse_hlo(text: str):
    """{computation: [(name, result type, opcode, rest of line)]} and the entry's name."""
    comps, entry, cur = {}, None, None
    for line in text.splitlines():
        if cur is None:
            m = _COMP.match(line)
            if m and "=" not in line.split("{")[0].split("(")[0]:
                cur = m.group(1)
                comps[cur] = []
                if line.startswith("ENTRY"):
                    entry = cur
            continue
        if line.strip() == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[cur].append(m.groups())
    return comps, entry


def _attr(rest: str, key: str):
    m = re.search(rf"\b{key}=%?([\w.\-]+)", rest)
    return m.group(1) if m else None


def _trip_count(rest: str):
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
    return int(m.group(1)) if m else None


def _operands(rest: str):
    """Operand names of an instruction (the text up to its closing parenthesis)."""
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", rest[:end])


_PASS_THROUGH = ("convert", "bitcast", "copy", "reshape", "broadcast")
_SLICERS = ("dynamic-slice", "slice", "gather")


def _param_read(comp, index: int, elements: int, itemsize: int) -> int:
    """Bytes a fused computation reads from its parameter `index`: only the slice when every use
    (through converts/bitcasts) is a (dynamic-)slice or gather, nothing when it is the buffer an
    in-place dynamic-update-slice writes into, else the whole operand."""
    users = collections.defaultdict(list)
    pname = None
    for iname, rtype, op, rest in comp:
        if op == "parameter" and rest.startswith(f"{index})"):
            pname = iname
        for o in _operands(rest):
            users[o].append((iname, rtype, op, rest))
    frontier, read = [pname], 0
    while frontier:
        name = frontier.pop()
        for iname, rtype, op, rest in users.get(name, []):
            if op in _PASS_THROUGH:
                frontier.append(iname)
            elif op in _SLICERS:
                if _operands(rest)[0] == name:  # else it is an index: a few bytes
                    read += int(np.prod(dims_of(rtype) or ())) * itemsize
            elif op == "dynamic-update-slice" and _operands(rest)[0] == name:
                continue
            else:
                return elements * itemsize
    return read


def traffic(comps, iname, rtype, op, rest, types):
    """Estimated bytes an instruction moves: operands read + result written. Inside a fusion a
    parameter only sliced is counted as the slice; an in-place dynamic-update-slice writes only its
    update."""
    ops = _operands(rest)
    fused = comps.get(_attr(rest, "calls")) if op == "fusion" else None
    reads = 0
    for i, o in enumerate(ops):
        if op == "dynamic-update-slice" and i == 0:
            continue  # the aliased buffer
        full = shape_bytes(types.get(o, ""))
        d = dims_of(types.get(o, ""))
        if fused is not None and d is not None and full:
            elements = int(np.prod(d)) if d else 1
            reads += _param_read(fused, i, elements, full // max(elements, 1))
        else:
            reads += full
    out = shape_bytes(rtype)
    if "dynamic-update-slice" in iname or op == "dynamic-update-slice":
        return 2 * reads  # the update (and indices) read, then written into the aliased buffer
    return out + reads


def census(comps, name, mult=1, counts=None, big=None, depth=0):
    """Op counts of one computation, nested while bodies multiplied by their trip counts.

    Returns (Counter opcode -> executions, [(result bytes, opcode, name, type, multiplicity,
    estimated traffic bytes)])."""
    counts = collections.Counter() if counts is None else counts
    big = [] if big is None else big
    types = {iname: rtype for iname, rtype, _, _ in comps[name]}
    for iname, rtype, op, rest in comps[name]:
        if op in FREE:
            continue
        if op == "while":
            trips = _trip_count(rest) or 1
            counts["while"] += mult
            census(comps, _attr(rest, "body"), mult * trips, counts, big, depth + 1)
            continue
        key = op if op in COUNTED else "other"
        if op == "custom-call":
            target = _attr(rest, "custom_call_target") or re.search(
                r'custom_call_target="([^"]+)"', rest
            )
            target = target.group(1) if hasattr(target, "group") else target
            key = f"custom-call:{target}"
        counts[key] += mult
        moved = traffic(comps, iname, rtype, op, rest, types)
        big.append((shape_bytes(rtype), op, iname, rtype.strip(), mult, moved))
    return counts, big


def loop_body(comps, entry):
    """Name of the outermost while body in the entry computation (the decode loop)."""
    for _, _, op, rest in comps[entry]:
        if op == "while":
            return _attr(rest, "body")
    return None


# ---- Reporting -----------------------------------------------------------------------------------


def cost(compiled):
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0))


def memory(compiled):
    try:
        m = compiled.memory_analysis()
    except Exception as e:  # noqa: BLE001 (some backends do not implement it)
        return f"memory_analysis unavailable ({type(e).__name__})"
    if m is None:
        return "memory_analysis unavailable"
    gb = 1e9
    return (
        f"args {m.argument_size_in_bytes / gb:.3f} GB, outputs {m.output_size_in_bytes / gb:.3f} "
        f"GB, aliased {m.alias_size_in_bytes / gb:.3f} GB, temporaries "
        f"{m.temp_size_in_bytes / gb:.3f} GB"
    )


def dims_of(rtype: str):
    """The dims of a single-array HLO type, e.g. "f32[8,96]{1,0}" -> (8, 96); None for tuples."""
    found = _SHAPE.findall(rtype)
    if len(found) != 1 or rtype.lstrip().startswith("("):
        return None
    return tuple(int(d) for d in found[0][1].split(",") if d)


def report_body(big, cache_dims, param_dims, nv_dims, top=12):
    """Lines naming cache/parameter-sized results and the instructions that move the most bytes."""
    lines = []
    found = collections.defaultdict(lambda: [0, 0, []])  # kind -> [count, bytes, examples]
    n, s, k, d = cache_dims[1:]
    layer_cache = {(n, s, k, d), (n, s * k, d), (n, s, k * d), (n, k, s, d), (n, k, d, s)}
    for size, _op, name, rtype, mult, _ in big:
        d = dims_of(rtype)
        if d is None or "dynamic-update-slice" in name:
            continue
        if d == cache_dims or d in layer_cache or sorted(d) == sorted(cache_dims[1:]):
            kind = "KV-cache (layer) sized results: copies/transposes of the cache"
        elif d in param_dims:
            kind = "parameter-sized results: weight copies (slices/converts) per step"
        else:
            continue
        f = found[kind]
        f[0], f[1] = f[0] + mult, f[1] + size * mult
        if len(f[2]) < 4:
            f[2].append(f"{name} {rtype.split('{')[0]} x{mult}")
    for kind, (count, size, examples) in found.items():
        eg = ", ".join(examples)
        lines.append(f"    {kind}: {count}, {size / 1e9:.3f} GB written; e.g. {eg}")
    nv = [b for b in big if dims_of(b[3]) and int(np.prod(dims_of(b[3]))) == int(np.prod(nv_dims))]
    nv_b = sum(b[0] * b[4] for b in nv)
    lines.append(
        f"    [N, V]-sized results per step: {sum(b[4] for b in nv)} ({nv_b / 1e6:.1f} MB "
        "written): " + ", ".join(f"{b[2]} {b[3].split('{')[0]}" for b in nv)
    )
    total = sum(b[5] * b[4] for b in big)
    lines.append(
        f"    estimated traffic of the body (operands + results, in-place updates counted as "
        f"their update only): {total / 1e9:.3f} GB per step; top instructions:"
    )
    for _size, op, name, rtype, mult, moved in sorted(big, key=lambda b: -b[5] * b[4])[:top]:
        lines.append(
            f"      {moved * mult / 1e6:9.1f} MB  {op:12s} x{mult:<3} {name}: {rtype[:70]}"
        )
    return lines


def presplit_step(graphdef, params, state, eos, kw):
    """One decode step compiled with the per-layer weights as arguments (no split inside)."""

    def split(prm):
        return nnx.merge(graphdef, prm).language_model.split_layers()

    def step(graphdef, prm, layers, s, eos_ids, **kw):
        return decode_step(nnx.merge(graphdef, prm), s, eos_ids, layers=layers, **kw)

    layers = jax.eval_shape(split, params)
    jit = jax.jit(step, static_argnums=0, static_argnames=tuple(kw), donate_argnums=3)
    return jit.lower(graphdef, params, layers, state, eos, **kw).compile()


def analyse(preset, per_layer, rule, donate, dump, dtype=None):
    """Compiles the step and loop programs and prints their costs (see the module docstring)."""
    config, graphdef, params, state, d = abstract_setup(preset, per_layer, dtype)
    eos = jax.ShapeDtypeStruct((len(EOS_TOKEN_IDS),), jnp.int32)
    kw = dict(rule=rule, pad_token_id=PAD_TOKEN_ID)
    donate_args = 2 if donate else ()
    jit = dict(static_argnums=0, static_argnames=("rule", "pad_token_id"))
    t0 = time.perf_counter()
    step = jax.jit(_step, donate_argnums=donate_args, **jit)
    step_c = step.lower(graphdef, params, state, eos, **kw).compile()
    t1 = time.perf_counter()
    loop = jax.jit(decode, donate_argnums=donate_args, **jit)
    loop_c = loop.lower(graphdef, params, state, eos, **kw).compile()
    t2 = time.perf_counter()

    live_cols = d["plen"] + d["ctok"] / 2  # mean over the C steps (prompt fully real)
    param_b, full_kv, live_kv = ideal_bytes(config, params, state, live_cols)
    flops, bytes_acc = cost(step_c)
    lflops, lbytes = cost(loop_c)
    ideal_full, ideal_live = param_b + full_kv, param_b + live_kv
    print(
        f"== {preset} {'per-layer unrolled' if per_layer else 'stacked scanned'} decode, {rule} "
        f"N={d['n']} P={d['plen']} "
        f"C={d['ctok']} {config.compute_dtype}; backend {jax.default_backend()}; "
        f"donated={donate}; compile step {t1 - t0:.1f}s, loop {t2 - t1:.1f}s"
    )
    print(
        f"  ideal per step: LLM params {param_b / 1e9:.3f} GB + KV cache read {full_kv / 1e9:.3f}"
        f" GB (all {state.kv_mask.shape[1]} columns; live mean {live_kv / 1e9:.3f} GB) = "
        f"{ideal_full / 1e9:.3f} GB (live {ideal_live / 1e9:.3f} GB)"
    )
    print(
        f"  step program: {flops / 1e9:.2f} GFLOP, bytes accessed {bytes_acc / 1e9:.3f} GB = "
        f"{bytes_acc / ideal_full:.2f}x ideal (full cache), {bytes_acc / ideal_live:.2f}x (live)"
    )
    moved = bytes_acc  # bytes of one step (the loop body's own work when pre-split, below)
    if per_layer and "layers" in inspect.signature(decode_step).parameters:
        print("  (per-layer: the step program also splits the layer weights, a one-off per loop)")
        pflops, pbytes = cost(presplit_step(graphdef, params, state, eos, kw))
        print(
            f"  step on pre-split layers (the loop body's work): {pflops / 1e9:.2f} GFLOP, bytes "
            f"accessed {pbytes / 1e9:.3f} GB = {pbytes / ideal_full:.2f}x ideal (full cache), "
            f"{pbytes / ideal_live:.2f}x (live)"
        )
        moved = pbytes
    row(
        f"decode step {preset} ({'per-layer' if per_layer else 'stacked'}, {config.compute_dtype}):"
        " GB moved per step, XLA cost analysis (roofline = ideal live bytes / moved)",
        moved / 1e9,
        roofline=ideal_live / moved,
    )
    print(
        f"  loop program (XLA counts the while body once): {lflops / 1e9:.2f} GFLOP, "
        f"{lbytes / 1e9:.3f} GB = {lbytes / ideal_full:.2f}x ideal"
    )
    print(f"  step memory: {memory(step_c)}")
    print(f"  loop memory: {memory(loop_c)}")

    text = loop_c.as_text()
    if dump:
        with open(dump, "w") as f:
            f.write(text)
    comps, entry = parse_hlo(text)
    body = loop_body(comps, entry)
    if body is None:
        print("  (no while loop found in the compiled decode program)")
        return
    counts, big = census(comps, body)
    ops = sum(v for k, v in counts.items() if k != "while")
    print(f"  decode while body {body}: {ops} top-level ops per step (nested loops unrolled)")
    print("    " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    layer0 = jax.tree.leaves(state.cache)[0]  # [L, N, S, K, D] stacked or [N, K, S, D] per layer
    n, s = state.logits.shape[0], state.kv_mask.shape[1]
    k, d = config.num_key_value_heads, config.head_dim
    cache_dims = tuple(layer0.shape) if layer0.ndim == 5 else (1, n, s, k, d)
    param_dims = {tuple(x.shape) for x in jax.tree.leaves(params["language_model"])}
    param_dims |= {s[1:] for s in param_dims if len(s) > 2}  # one layer's slice
    for line in report_body(big, cache_dims, param_dims, state.logits.shape):
        print(line)
    copies = [b for b in big if b[1] == "copy"]
    copy_b = sum(b[0] * b[4] for b in copies)
    print(f"  copies per step: {sum(b[4] for b in copies)} ({copy_b / 1e6:.1f} MB written)")


def time_decode(preset: str, rule: SamplingRule, per_layer: bool, repeats: int = 10):
    """Runs prefill + decode on random weights (small presets only) and prints ms/step."""
    from vrft_jax.generation.sampler import Sampler

    p = PRESETS[preset]
    config = get_preset("2b", **p.config).replace(scan_layers=not per_layer)
    model = random_qwen2_vl(config, seed=0, dtype=p.dtype)
    graphdef, params = nnx.split(model)
    kw = (
        {"unroll_decode": per_layer}
        if "unroll_decode" in inspect.signature(Sampler).parameters
        else {}
    )
    sampler = Sampler.for_model(model, **kw)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 151000, (p.prompts, p.prompt_tokens))
    kw = dict(max_new_tokens=p.new_tokens, num_samples=p.samples, rng=0)
    no_stop = (-1,)
    jax.block_until_ready(sampler.run(params, sampler.start(params, ids, **kw), rule, no_stop))
    wall, cpu = [], []
    for _ in range(repeats):
        state = jax.block_until_ready(sampler.start(params, ids, **kw))
        t0, c0 = time.perf_counter(), time.process_time()
        state = jax.block_until_ready(sampler.run(params, state, rule, no_stop))
        wall.append((time.perf_counter() - t0) / int(state.step))
        cpu.append((time.process_time() - c0) / int(state.step))
    print(
        f"  measured decode ({jax.default_backend()}, {repeats} runs): wall ms/step min "
        f"{1e3 * min(wall):.2f} median {1e3 * float(np.median(wall)):.2f}; process CPU ms/step "
        f"min {1e3 * min(cpu):.2f} median {1e3 * float(np.median(cpu)):.2f}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="2b")
    ap.add_argument("--stacked", action="store_true", help="stacked weights/cache, scanned layers")
    ap.add_argument("--both", action="store_true", help="per-layer and stacked decode")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--dtype", help="parameter/compute dtype (default: the preset's)")
    ap.add_argument("--no-donate", action="store_true", help="compile without donating the state")
    ap.add_argument("--dump", help="write the decode loop's compiled HLO text here")
    ap.add_argument("--time", action="store_true", help="also run the decode (not 2b on CPU)")
    ap.add_argument("--repeats", type=int, default=10, help="decode runs timed by --time")
    a = ap.parse_args()
    rule = SamplingRule(a.temperature, a.top_k, a.top_p)
    print(
        "NOTE: CPU XLA fuses differently from GPU XLA; op counts are not GPU kernel counts, but "
        "excess bytes (copies, upcasts, sorts) show up on both."
        if jax.default_backend() == "cpu"
        else f"backend {jax.default_backend()}: op counts approximate kernel launches per step"
    )
    variants = (True, False) if a.both else (not a.stacked,)
    for per_layer in variants:
        dump = a.dump and (a.dump if len(variants) == 1 else f"{a.dump}.{int(per_layer)}")
        analyse(a.preset, per_layer, rule, not a.no_donate, dump, a.dtype)
        if a.time:
            if a.preset == "2b" and jax.default_backend() == "cpu":
                print("  --time skipped: 2b weights do not fit a CPU run (use cpu-small)")
            else:
                time_decode(a.preset, rule, per_layer, a.repeats)


if __name__ == "__main__":
    main()
