"""Benchmark: the vision tower's packed layout vs per-image slots (vrft_jax.buckets.pad_images).

    PYTHONPATH=. python bench/vision_layouts.py                  # 2b shapes, compiled cost only
    PYTHONPATH=. python bench/vision_layouts.py --preset small --time
    PYTHONPATH=. python bench/vision_layouts.py --preset qwen2_5_vl-7b-1024   # window vs full
    XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. \
        python bench/vision_layouts.py --grad --split   # + slots split over 8 devices

For B images of one size (2b: 8 images of 448x448 = 1024 patches each, the Visual-RFT setting)
it compiles the vision tower forward (and, with --grad, forward + backward, what a GRPO step runs)
for both layouts WITHOUT materialising weights (abstract shapes), and prints XLA's cost analysis
(flops, bytes accessed) and memory analysis (temporaries) of each, and the ratios. The layers are
unrolled (scan_layers=False) because XLA's cost analysis counts a while-loop body only once.
--time also runs both on random weights and prints wall time (use a small preset on CPU).
Qwen2.5-VL presets (window attention) also compile the same tower with full attention in every
block and print the window / full ratios per layout (8 images of 448 px, or of 1036 px: 1024
rounded to the processor's 28 px grid, 74x74 patches).
Imports no ml_collections / pycocotools / tfds.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax import buckets
from vrft_jax.models import Qwen2VL, get_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rollout  # noqa: E402  (bench/rollout.py: the shared size presets)

PRESETS = {
    "2b": dict(config={}, images=8, side=448, dtype="bfloat16"),
    "qwen2_5_vl-7b-448": dict(
        config=rollout.overrides_of_2b("qwen2_5_vl-7b"), images=8, side=448, dtype="bfloat16"
    ),
    "qwen2_5_vl-7b-1024": dict(
        config=rollout.overrides_of_2b("qwen2_5_vl-7b"),
        images=8,
        side=1024,
        dtype="bfloat16",
        patch_buckets=(5632, 45056),  # one 74x74 image per slot; all 8 packed
    ),
    # rollout's cpu-small-qwen2_5_vl tower with the real 112 px windows, 8 images of 448 px
    "small-qwen2_5_vl": dict(
        config=dict(rollout.PRESETS["cpu-small-qwen2_5_vl"].config, window_size=112),
        images=8,
        side=448,
        dtype="float32",
    ),
    # rollout's cpu-small model (vision depth 2, width 128), 8 images of 224 px
    "small": dict(config=rollout.PRESETS["cpu-small"].config, images=8, side=224, dtype="float32"),
}


def cost(compiled):
    """(flops, bytes accessed, temporary bytes) of a compiled program (None where unknown)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returns one dict per device
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    try:
        temp = compiled.memory_analysis().temp_size_in_bytes
    except Exception:  # not every backend reports it
        temp = None
    return analysis.get("flops"), analysis.get("bytes accessed"), temp


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="2b")
    ap.add_argument("--images", type=int, help="override the image count")
    ap.add_argument("--grad", action="store_true", help="forward + backward (a GRPO step's VJP)")
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="none")
    ap.add_argument(
        "--split",
        action="store_true",
        help="also compile the slots split over all devices (what steps.place_batch does); on CPU "
        "run with XLA_FLAGS=--xla_force_host_platform_device_count=8",
    )
    ap.add_argument("--time", action="store_true", help="also run both on random weights")
    ap.add_argument(
        "--layouts", nargs="+", choices=("packed", "slots"), default=["packed", "slots"]
    )
    a = ap.parse_args()
    p = PRESETS[a.preset]
    images = a.images or p["images"]
    dtype = p["dtype"]
    config = get_preset("2b", **p["config"]).replace(
        param_dtype=dtype, compute_dtype=dtype, remat=a.remat
    )
    unit = config.patch_size * config.spatial_merge_size  # the processor's 28 px grid
    side = round(p["side"] / unit) * config.spatial_merge_size  # patches per side
    grid = np.asarray([(1, side, side)] * images)
    pixels = np.random.default_rng(0).standard_normal((images * side * side, config.patch_dim))
    pixels = pixels.astype(np.float32)
    patch_buckets = p.get("patch_buckets")
    layouts = {
        name: buckets.pad_images(pixels, grid, patch_buckets, layout=name) for name in a.layouts
    }

    def program(cfg, scan_layers: bool):
        """(jitted fn, abstract params). XLA's cost analysis counts a loop body once, so flops and
        bytes come from the unrolled tower; the memory plan from the scanned one (what runs)."""
        cfg = cfg.replace(scan_layers=scan_layers)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2VL(cfg, rngs=nnx.Rngs(0))))

        def forward(params, pv, g):
            return nnx.merge(graphdef, params).encode_images(pv, g)

        def loss(params, pv, g):
            return jnp.sum(forward(params, pv, g).astype(jnp.float32) ** 2)

        return jax.jit(jax.grad(loss) if a.grad else forward), state

    print(
        f"preset {a.preset}: {images} images of {side}x{side} patches, vision depth "
        f"{config.vision_depth}, width {config.vision_embed_dim}, {p['dtype']}, "
        f"{'forward + backward' if a.grad else 'forward'}, remat {a.remat}; "
        f"backend {jax.default_backend()}"
    )

    def measure(cfg, label):
        """{layout: (flops, bytes, temporaries)} of the tower of `cfg`, printed."""
        (unrolled, state), (scanned, _) = program(cfg, False), program(cfg, True)
        results = {}
        for name, (pv, g) in layouts.items():
            t0 = time.perf_counter()
            arg = jax.ShapeDtypeStruct(pv.shape, pv.dtype)
            flops, nbytes, _ = cost(unrolled.lower(state, arg, g).compile())
            temp = cost(scanned.lower(state, arg, g).compile())[2]
            results[name] = (flops, nbytes, temp)
            temp_s = "n/a" if temp is None else f"{temp / 2**30:.2f} GiB"
            print(
                f"  {label}{name:6s} pixel_values {tuple(pv.shape)}: {flops / 1e9:.1f} GFLOP, "
                f"{nbytes / 1e9:.1f} GB accessed, temporaries {temp_s} "
                f"(compiled in {time.perf_counter() - t0:.1f}s)"
            )
        if len(results) == 2:
            (f0, b0, t0_), (f1, b1, t1) = results["packed"], results["slots"]
            ratio_t = f" temporaries {t0_ / t1:.1f}x" if t0_ and t1 else ""
            print(f"  {label}packed / slots: flops {f0 / f1:.1f}x, bytes {b0 / b1:.1f}x,{ratio_t}")
        return results, unrolled, scanned, state

    variants = {"": config}
    if config.window_size:  # also the same tower with full attention in every block
        every = tuple(range(config.vision_depth))
        variants = {"window ": config, "full   ": config.replace(fullatt_block_indexes=every)}
    measured = {label: measure(cfg, label) for label, cfg in variants.items()}
    results, unrolled, scanned, state = measured[next(iter(variants))]
    if len(variants) == 2:
        full = measured["full   "][0]
        for name in layouts:
            (fw, bw, tw), (ff, bf, tf) = results[name], full[name]
            temp = f", temporaries {tw / tf:.2f}x" if tw and tf else ""
            print(
                f"window / full attention, {name}: flops {fw / ff:.2f}x, bytes {bw / bf:.2f}x{temp}"
            )

    if a.split and jax.device_count() > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        pv, g = layouts["slots"]
        split = NamedSharding(mesh, PartitionSpec("data"))
        rep = NamedSharding(mesh, PartitionSpec())
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
        for name, where in (("replicated", rep), ("split", split)):
            arg = jax.ShapeDtypeStruct(pv.shape, pv.dtype, sharding=where)
            compiled = unrolled.lower(params, arg, jax.device_put(g, rep)).compile()
            flops, nbytes, _ = cost(compiled)
            print(
                f"  slots {name:10s} over {jax.device_count()} devices: per device "
                f"{flops / 1e9:.1f} GFLOP, {nbytes / 1e9:.1f} GB accessed"
            )

    if a.time:
        from vrft_jax.models import random_qwen2_vl

        model = random_qwen2_vl(config, seed=0, dtype=p["dtype"])
        params = nnx.state(model)
        for label, (_, _, scanned, _) in measured.items():  # same weights, each attention
            for name, (pv, g) in layouts.items():
                out = jax.block_until_ready(scanned(params, pv, g))  # compile + run once
                start = time.perf_counter()
                for _ in range(3):
                    out = jax.block_until_ready(scanned(params, pv, g))
                ms = 1e3 * (time.perf_counter() - start) / 3
                print(f"  {label}{name:6s} {ms:.1f} ms per call")
        del out


if __name__ == "__main__":
    main()
