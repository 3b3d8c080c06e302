r"""Benchmark: LoRA in the sampler, adapters merged once per rollout vs applied on the fly.

    PYTHONPATH=. python bench/lora_decode.py [--preset cpu-small] [--ranks 16 64] [--new_tokens C]

The trainer's sampler decodes with the adapters merged into a compute-dtype copy of the adapted
weights, once per rollout (model_setup.make_generate_fn, lora.merge_targets). The alternative keeps
the base and adds (alpha / r) * (x @ A) @ B to every adapted projection of every decode step. This
times, on bench/rollout.py's inputs (`--preset`, random weights, exactly C new tokens per row):

  (a) merged:     the targets' effective weights (jitted lora.merge_targets, after compiling)
                  + a rollout (prefill + C decode steps) on the base with them in place: what
                  the trainer runs (model_setup.make_generate_fn);
  (b) on the fly: the same rollout on the base weights (the same program on arrays of the same
                  shapes) + C x one decode step's adapter products for every layer and target
                  ((x [N, in] @ A [in, r]) @ B [r, out], N rows, timed in a jitted C-step loop).
                  A lower bound: in the decode loop these small matmuls would also be separate
                  ops per layer, and they cannot join the fused qkv / gate-up matmuls.
  int8 (QLoRA):   on the fly also dequantises each target's int8 base in every step, unless the
                  matmul reads int8 directly (no such kernel on CPU): the time of dequantising all
                  targets once is printed, i.e. its cost per decode step.

Then the analytic comparison for the Qwen2-VL 2B and 7B decoder shapes (bench/rollout.py's 2b /
7b rollouts: N = 64 / 32 rows, C = 256): per target matrix [in, out] in L layers, a merge does
2 L in out r FLOPs and reads + writes the weights once per rollout; on the fly does
2 N (in + out) r FLOPs per layer per decode step and reads A and B every step; both against the
decode's own 2 N in out FLOPs and in-out weight reads per layer per step. Numbers, no pass/fail.
"""

import argparse
import dataclasses
import functools
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax import lora
from vrft_jax.generation.sampler import Sampler, SamplingRule
from vrft_jax.models import Qwen2VL, get_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout import PRESETS, build_model, make_inputs  # noqa: E402


def lora_fields(rank: int, quantize: str = "none"):
    """config.lora's fields (configs/base.py) for lora.make_spec; alpha = 2 r (scale 2)."""
    return types.SimpleNamespace(
        rank=rank, alpha=2.0 * rank, quantize=quantize, targets=lora.DEFAULT_TARGETS, init=""
    )


def best_of(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls (after one call that compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def random_adapters(spec, seed: int):
    """Adapters with B != 0 (a trained state), as a pure dict."""
    rng = np.random.default_rng(seed)
    fresh = nnx.to_pure_dict(lora.init_adapters(spec, seed))
    return jax.tree.map(lambda x: rng.normal(0, 0.01, x.shape).astype(np.float32), fresh)


def side_products(spec, adapters, n: int, steps: int, dtype):
    """A jitted C-step loop of one decode step's adapter products: for every target and layer,
    (x [N, in] @ A [in, r]) @ B [r, out] * scale. x changes every step (scaled by the step
    index), so nothing is hoisted out of the loop; a sum keeps every product live."""
    mats = []
    for t in spec.targets:
        node = lora._get(adapters, t.path)
        a = jnp.asarray(node["a"], dtype).reshape(-1, *node["a"].shape[-(t.in_axes + 1) :])
        b = jnp.asarray(node["b"], dtype).reshape(a.shape[0], spec.rank, -1)
        mats.append((a.reshape(a.shape[0], -1, spec.rank), b))
    xs = [jnp.ones((n, a.shape[1]), dtype) for a, _ in mats]

    @jax.jit
    def run(mats, xs):
        def body(i, acc):
            s = 1 + i.astype(dtype) * 1e-6
            for (a, b), x in zip(mats, xs):
                u = jnp.einsum("ni,lir->lnr", x * s, a)  # all L layers: [L, N, r]
                acc = acc + jnp.sum(jnp.einsum("lnr,lro->lno", u, b)) * spec.scale
            return acc

        return jax.lax.fori_loop(0, steps, body, jnp.zeros((), dtype))

    return lambda: run(mats, xs)


def rollout_fn(sampler, params, inputs, p, seed: int):
    """Prefill + exactly C decode steps on `params` (pure dict), sampled at temperature 1."""
    rule, no_stop = SamplingRule(temperature=1.0), (-1,)
    kw = dict(max_new_tokens=p.new_tokens, num_samples=p.samples, rng=seed)

    def run():
        state = sampler.start(params, *inputs, **kw)
        return sampler.run(params, state, rule, no_stop).tokens

    return run


def measure(preset: str, ranks, repeats: int, new_tokens: int = 0, seed: int = 0):
    """Rows of times (ms) per rank and base format on `preset` (bench/rollout.py's presets; C =
    `new_tokens` when given)."""
    p = PRESETS[preset]
    if new_tokens:
        p = dataclasses.replace(p, new_tokens=new_tokens)
    config = get_preset("2b", **p.config)
    model = build_model(config, seed, p.dtype)
    inputs = make_inputs(p, seed)
    n = p.prompts * p.samples
    params_state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(params_state)  # the sampler takes pure dicts (as in the trainer)
    sampler = Sampler.for_model(model)  # one set of programs for every params of this structure
    rollout_s = best_of(rollout_fn(sampler, pure, inputs, p, seed), repeats)
    print(f"{preset}: N = {n} rows, C = {p.new_tokens} new tokens, {p.dtype}; "
          f"rollout on the base (prefill + C steps) {1e3 * rollout_s:.0f} ms")  # fmt: skip
    rows = []
    for rank in ranks:
        for quantize in ("none", "int8"):
            spec = lora.make_spec(lora_fields(rank, quantize), params_state)
            adapters = random_adapters(spec, seed)
            base = lora.make_base(pure, spec, p.dtype)
            # The sampler's merge (model_setup.make_generate_fn): only the targets are new arrays.
            targets = jax.jit(functools.partial(lora.merge_targets, spec=spec, dtype=p.dtype))
            merge_s = best_of(lambda: targets(base, adapters), repeats)  # noqa: B023
            merged = lora.with_targets(base, targets(base, adapters), spec)
            merged_s = best_of(rollout_fn(sampler, merged, inputs, p, seed), repeats)
            side_s = best_of(side_products(spec, adapters, n, p.new_tokens, p.dtype), repeats)
            deq_s = 0.0
            if quantize == "int8":
                deq_s = best_of(lambda: targets(base, {}), repeats)  # noqa: B023
            # (b) - (a): the rollouts on the base and on the merged weights are the same program
            # on arrays of the same shapes, so the difference is what each adds to it (timing
            # the two rollouts apart would compare load noise, +-15% on a shared machine).
            extra_s = side_s + p.new_tokens * deq_s
            rows.append(dict(rank=rank, quantize=quantize, merge_ms=1e3 * merge_s,
                             merged_rollout_ms=1e3 * merged_s, side_ms=1e3 * side_s,
                             dequant_step_ms=1e3 * deq_s, fly_extra_ms=1e3 * extra_s,
                             net_ms=1e3 * (extra_s - merge_s)))  # fmt: skip
    return rows


def analytic(name: str, ranks, rows_n: int, new_tokens: int):
    """Per-rollout cost of merging vs on-the-fly adapters for preset `name`'s decoder targets,
    as fractions of the decode's own projection FLOPs and weight bytes (bf16 weights)."""
    model = nnx.eval_shape(lambda: Qwen2VL(get_preset(name), rngs=nnx.Rngs(0)))
    spec = lora.make_spec(lora_fields(max(ranks)), nnx.state(model, nnx.Param))
    dims = []  # (layers, in, out) per target
    for t in spec.targets:
        in_, out = int(np.prod(t.in_shape)), int(np.prod(t.out_shape))
        dims.append((t.shape[0] if t.stacked else 1, in_, out))
    weights = sum(L * i * o for L, i, o in dims)
    decode_flops = 2 * rows_n * new_tokens * weights
    decode_bytes = 2 * new_tokens * weights  # bf16 weights read once per step
    out = []
    for r in ranks:
        merge_flops = 2 * r * weights
        merge_bytes = (2 + 2) * weights  # read the bf16 base (int8: 1 + scales), write the copy
        fly_flops = 2 * rows_n * new_tokens * r * sum(L * (i + o) for L, i, o in dims)
        fly_bytes = 2 * new_tokens * r * sum(L * (i + o) for L, i, o in dims)  # bf16 A, B
        out.append(dict(name=name, rank=r, weights=weights, merged_copy_gb=2 * weights / 1e9,
                        merge_flops=merge_flops / decode_flops,
                        merge_bytes=merge_bytes / decode_bytes,
                        fly_flops=fly_flops / decode_flops,
                        fly_bytes=fly_bytes / decode_bytes))  # fmt: skip
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=0, help="C (default: the preset's)")
    args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}")
    rows = measure(args.preset, args.ranks, args.repeats, args.new_tokens)
    print("\nmeasured (ms, best of repeats): (a) adds the merge to the rollout, (b) adds C steps")
    print("of adapter products (+ C int8 dequantisations: a lower bound); net = (b) - (a)")
    print(" rank  base  rollout  (a) merge  products/C steps  dequant/step  (b) extra  net (b-a)")
    for r in rows:
        print(f" {r['rank']:4d}  {r['quantize']:>4}  {r['merged_rollout_ms']:7.0f}  "
              f"{r['merge_ms']:9.1f}  {r['side_ms']:16.1f}  {r['dequant_step_ms']:12.2f}  "
              f"{r['fly_extra_ms']:9.1f}  {r['net_ms']:+9.1f}")  # fmt: skip
    print("\nanalytic, per rollout, as a fraction of the decode's own projection FLOPs / bf16")
    print("weight bytes read (2b: N = 64, 7b: N = 32; C = 256):")
    print(" model  rank  merged copy  merge FLOPs  merge bytes  on-the-fly FLOPs  on-the-fly bytes")
    for name, n in (("2b", 64), ("7b", 32)):
        for a in analytic(name, args.ranks, n, 256):
            print(f" {name:>5}  {a['rank']:4d}  {a['merged_copy_gb']:8.2f} GB  "
                  f"{a['merge_flops']:11.2%}  {a['merge_bytes']:11.2%}  "
                  f"{a['fly_flops']:16.2%}  {a['fly_bytes']:16.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
