"""Benchmark: our rollout sampler vs transformers' `generate` on the same weights and inputs.

    PYTHONPATH=. python bench/rollout.py --preset cpu-small        # ~45M params, a few minutes
    PYTHONPATH=. python bench/rollout.py --preset 2b [--no-torch]  # Qwen2-VL-2B shapes, bf16
    PYTHONPATH=. python bench/rollout.py --preset cpu-small-qwen2_5_vl   # the Qwen2.5-VL family
    PYTHONPATH=. python bench/rollout.py --preset qwen2_5_vl-3b          # (and qwen2_5_vl-7b)
    PYTHONPATH=. python bench/rollout.py --preset cpu-small-qwen3_vl     # the Qwen3-VL family

2b is the Visual-RFT setting: 8 prompts x 8 samples, one 448x448 image each (256 image tokens of a
~378-token prompt), 256 new tokens, temperature 1. Random weights (std 0.02) are written to a tmp
model given our weights by bench/hf_twin.py (no folder written), so both sides
run identical weights. Both generate exactly C tokens per row (no stop ids for us, min_new_tokens
for transformers), so the token counts match.

Printed: compile time, prefill (and, separately, the vision tower), decode ms per step and tokens/s
for each side, the ratio, and on GPU/TPU the fraction of the HBM-bandwidth roofline of a decode step
(bytes of LLM parameters + live KV cache read per step / step time / peak bandwidth), and
`SUMMARY|` lines for bench/summary.py. `--attention xla cudnn` times ours once per attention kernel
(the first against transformers) in one process, sharing the weights.
The transformers model gets our weights in memory (bench/hf_twin.py), not through a folder.
This file imports no ml_collections / pycocotools / tfds (GPU machines lack them); torch is imported
only when the transformers side runs.
"""

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax.generation.sampler import Sampler, SamplingRule
from vrft_jax.models import Qwen2VL, get_preset, random_qwen2_vl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_twin import torch_model  # noqa: E402  (bench/: the transformers twin of our model)
from summary import row  # noqa: E402

VISION_START, VISION_END, IMAGE = 151652, 151653, 151655


@dataclasses.dataclass(frozen=True)
class Preset:
    prompts: int  # B
    samples: int  # G
    image_size: int  # square image side in pixels (multiple of 28; Qwen3-VL: of 32)
    prompt_tokens: int  # total prompt length, image tokens included
    new_tokens: int  # C
    dtype: str
    config: dict  # QwenVLConfig overrides of the 2b preset (model_type picks the family)


def overrides_of_2b(preset: str) -> dict:
    """A library preset (vrft_jax.models.PRESETS) as overrides of the 2b preset."""
    base, target = (dataclasses.asdict(get_preset(name)) for name in ("2b", preset))
    return {k: v for k, v in target.items() if v != base[k]}


CPU_SMALL = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    mrope_section=(8, 12, 12),
    vision_depth=2,
    vision_embed_dim=128,
    vision_num_heads=4,
)

PRESETS = {
    # ~45M parameters (39M of them the 151936 x 256 tied embedding): fp32, minutes on 2 CPU cores.
    "cpu-small": Preset(
        prompts=2,
        samples=4,
        image_size=112,
        prompt_tokens=64,
        new_tokens=32,
        dtype="float32",
        config=CPU_SMALL,
    ),
    # cpu-small as a Qwen2.5-VL: RMSNorm/SwiGLU vision blocks (width 128, MLP 342 as 1280 -> 3420),
    # 56 px windows so the 112 px image holds 2x2 windows in block 0, full attention in block 1.
    "cpu-small-qwen2_5_vl": Preset(
        prompts=2,
        samples=4,
        image_size=112,
        prompt_tokens=64,
        new_tokens=32,
        dtype="float32",
        config=dict(
            CPU_SMALL,
            model_type="qwen2_5_vl",
            vision_hidden_act="silu",
            vision_intermediate_size=342,
            window_size=56,
            fullatt_block_indexes=(1,),
        ),
    ),
    # cpu-small as a Qwen3-VL: Qwen3 decoder (q/k norms, head_dim 64, interleaved M-RoPE), 16-px
    # patches (128 px image: 8x8 patches, 16 tokens), 3 gelu-tanh vision blocks with DeepStack
    # after blocks 0 and 1, a 6x6 learned position grid.
    "cpu-small-qwen3_vl": Preset(
        prompts=2,
        samples=4,
        image_size=128,
        prompt_tokens=64,
        new_tokens=32,
        dtype="float32",
        config=dict(
            CPU_SMALL,
            model_type="qwen3_vl",
            explicit_head_dim=64,
            mrope_section=(12, 10, 10),
            mrope_interleaved=True,
            rope_theta=5_000_000.0,
            patch_size=16,
            vision_depth=3,
            vision_intermediate_size=512,
            num_position_embeddings=36,
            deepstack_visual_indexes=(0, 1),
        ),
    ),
    "2b": Preset(
        prompts=8,
        samples=8,
        image_size=448,
        prompt_tokens=378,
        new_tokens=256,
        dtype="bfloat16",
        config={},
    ),
    # The 2b rollout shapes on Qwen2.5-VL-3B / -7B (7B: G = 4, the paper configs' 7B setting).
    "qwen2_5_vl-3b": Preset(8, 8, 448, 378, 256, "bfloat16", overrides_of_2b("qwen2_5_vl-3b")),
    "qwen2_5_vl-7b": Preset(8, 4, 448, 378, 256, "bfloat16", overrides_of_2b("qwen2_5_vl-7b")),
    # ... and on Qwen3-VL-2B / -4B / -8B (448 px = 28x28 16-px patches, 196 image tokens).
    "qwen3_vl-2b": Preset(8, 8, 448, 378, 256, "bfloat16", overrides_of_2b("qwen3_vl-2b")),
    "qwen3_vl-4b": Preset(8, 8, 448, 378, 256, "bfloat16", overrides_of_2b("qwen3_vl-4b")),
    "qwen3_vl-8b": Preset(8, 4, 448, 378, 256, "bfloat16", overrides_of_2b("qwen3_vl-8b")),
}

# Peak HBM bandwidth (bytes/s) by device kind substring; the first match wins.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("A100", 2.0e12),
    ("TPU v5 lite", 8.19e11),
    ("TPU v5e", 8.19e11),
    ("TPU v5p", 2.765e12),
    ("TPU v5", 2.765e12),
    ("TPU v6", 1.64e12),
    ("TPU v4", 1.2e12),
)


def peak_bandwidth(device_kind: str):
    for name, bw in PEAK_BANDWIDTH:
        if name.lower() in device_kind.lower():
            return bw
    return None


def make_inputs(p: Preset, seed=0):
    """Left-padded prompts (text, <vs>, image tokens, <ve>, text) and their packed images."""
    rng = np.random.default_rng(seed)
    config = get_preset("2b", **p.config)  # patch 14 (Qwen2/2.5-VL) or 16 (Qwen3-VL)
    side = p.image_size // config.patch_size
    grid = (1, side, side)
    n_img = side * side // 4
    rows = []
    for i in range(p.prompts):
        n_text = p.prompt_tokens - n_img - 2 - (i % 3)  # slightly ragged lengths: real left padding
        before = n_text // 3
        ids = list(rng.integers(0, 151000, before)) + [VISION_START] + [IMAGE] * n_img
        rows.append(ids + [VISION_END] + list(rng.integers(0, 151000, n_text - before)))
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), 151643, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    pixel_values = rng.standard_normal((p.prompts * side * side, config.patch_dim))
    pixel_values = pixel_values.astype(np.float32)
    image_grid_thw = np.asarray([grid] * p.prompts, np.int64)
    return input_ids, mask, pixel_values, image_grid_thw


def timed(fn):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - start


def llm_param_bytes(model) -> int:
    """Bytes of the parameters a decode step reads: decoder layers, final norm, LM head."""
    state = nnx.state(model.language_model, nnx.Param)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    if not model.config.tie_word_embeddings:  # the embedding is only gathered (a few rows)
        emb = model.language_model.embed_tokens[...]
        total -= emb.size * emb.dtype.itemsize
    return int(total)


def build_model(config, seed: int, dtype: str, compute_dtype: str | None = None, **kwargs):
    """Random weights (parameters in `dtype`, compute in `compute_dtype`, default the same): host
    numpy init on CPU; one jitted on-device init elsewhere (seconds for 2B on a GPU, where the host
    init takes minutes). kwargs go to Qwen2VL (e.g. prompt_buckets)."""
    config = config.replace(param_dtype=dtype, compute_dtype=compute_dtype or dtype)
    if jax.default_backend() == "cpu":
        return random_qwen2_vl(config, seed=seed, **kwargs)
    make = lambda: Qwen2VL(config, rngs=nnx.Rngs(seed), **kwargs)  # noqa: E731
    graphdef = nnx.graphdef(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.state(make()))()
    return nnx.merge(graphdef, state)


def run_ours(model, inputs, p: Preset, seed: int, vision: bool = True):
    """Times our sampler: compile, prefill (+ the vision tower alone if `vision`), decode loop."""
    graphdef, params = nnx.split(model)
    sampler = Sampler.for_model(model)
    kw = dict(max_new_tokens=p.new_tokens, num_samples=p.samples, temperature=1.0)
    no_stop = (-1,)  # exactly C tokens per row, like transformers' min_new_tokens

    _, compile_s = timed(lambda: sampler(params, *inputs, eos_token_ids=no_stop, rng=seed, **kw))
    prefill_kw = dict(max_new_tokens=p.new_tokens, num_samples=p.samples, rng=seed + 1)
    state, prefill_s = timed(lambda: sampler.start(params, *inputs, **prefill_kw))
    rule = SamplingRule(temperature=1.0)
    state, decode_s = timed(lambda: sampler.run(params, state, rule, no_stop))
    steps = int(state.step)
    # The vision tower alone (its own small program), on the same padded images.
    pv, grid = sampler.prepare(*inputs)[2:4]
    encode = jax.jit(lambda prm, a, b: nnx.merge(graphdef, prm).encode_images(a, b))
    vision_s = float("nan")
    if vision:
        jax.block_until_ready(encode(params, pv, grid))
        _, vision_s = timed(lambda: encode(params, pv, grid))
    n = p.prompts * p.samples
    total = prefill_s + decode_s
    return dict(
        compile_s=compile_s,
        prefill_s=prefill_s,
        vision_s=vision_s,
        decode_s=decode_s,
        steps=steps,
        step_ms=1e3 * decode_s / steps,
        tokens_per_s=n * steps / total,
        cache_cols=state.kv_mask.shape[1],
        compiles=sampler.compile_count(),
    )


def run_torch(ours_model, inputs, p: Preset, threads=None):
    """Times transformers' generate (sampling, temperature 1, G = num_return_sequences)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, p.dtype)
    t0 = time.perf_counter()
    model = torch_model(ours_model, p.dtype, device)
    print(f"transformers model with our weights built in {time.perf_counter() - t0:.1f}s")
    ids, mask, pv, grid = inputs
    args = dict(
        input_ids=torch.as_tensor(ids, device=device),
        attention_mask=torch.as_tensor(mask, device=device),
        pixel_values=torch.as_tensor(pv, device=device, dtype=dtype),
        image_grid_thw=torch.as_tensor(grid, device=device),
        mm_token_type_ids=torch.as_tensor((ids == IMAGE).astype(np.int64), device=device),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_return_sequences=p.samples,
        pad_token_id=151643,
        eos_token_id=[151645, 151643],
    )

    def generate(c):
        torch.manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            try:
                out = model.generate(max_new_tokens=c, min_new_tokens=c, **args)
            except (TypeError, ValueError) as e:  # releases before mm_token_type_ids existed
                if "mm_token_type_ids" not in str(e):
                    raise
                args.pop("mm_token_type_ids")
                out = model.generate(max_new_tokens=c, min_new_tokens=c, **args)
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    generate(2)  # warm-up (allocator, kernels)
    _, first_s = generate(1)  # prefill + one token
    out, total_s = generate(p.new_tokens)
    new = out.shape[1] - ids.shape[1]
    n = out.shape[0]
    return dict(
        total_s=total_s,
        prefill_s=first_s,
        step_ms=1e3 * (total_s - first_s) / max(new - 1, 1),
        tokens_per_s=n * new / total_s,
        device=device,
    )


def roofline_fraction(model, p: Preset, ours, device_kind: str):
    """Ideal decode ms per step (LLM params + live KV cache at peak bandwidth) / measured, printed;
    None where the device's bandwidth is unknown (CPU)."""
    bw = peak_bandwidth(device_kind)
    if bw is None:
        return None
    c = model.config
    n = p.prompts * p.samples
    kv_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim
    kv_item = jnp.dtype(c.compute_dtype).itemsize
    live = n * (p.prompt_tokens + p.new_tokens / 2) * kv_token * kv_item
    read = n * ours["cache_cols"] * kv_token * kv_item  # what our masked attention reads
    params_b = llm_param_bytes(model)
    ideal_ms = 1e3 * (params_b + live) / bw
    print(
        f"roofline: params {params_b / 1e9:.2f} GB + live KV {live / 1e9:.2f} GB per step "
        f"(full-cache reads {read / 1e9:.2f} GB) at {bw / 1e12:.2f} TB/s = "
        f"{ideal_ms:.2f} ms/step ideal; measured {ours['step_ms']:.2f} ms -> "
        f"{100 * ideal_ms / ours['step_ms']:.0f}% of roofline"
    )
    return ideal_ms / ours["step_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--no-torch", action="store_true", help="skip transformers' generate")
    ap.add_argument("--prompts", type=int, help="override B")
    ap.add_argument("--samples", type=int, help="override G")
    ap.add_argument("--new-tokens", type=int, help="override C")
    ap.add_argument(
        "--attention",
        nargs="+",
        choices=("xla", "cudnn", "auto"),
        default=["xla"],
        help="our attention kernel(s), each timed in turn; the first is compared with transformers",
    )
    ap.add_argument("--torch-threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p = PRESETS[a.preset]
    p = dataclasses.replace(
        p,
        prompts=a.prompts or p.prompts,
        samples=a.samples or p.samples,
        new_tokens=a.new_tokens or p.new_tokens,
    )
    config = get_preset("2b", **p.config)
    device = jax.devices()[0]
    print(
        f"preset {a.preset}: B={p.prompts} G={p.samples} N={p.prompts * p.samples} "
        f"prompt~{p.prompt_tokens} tokens, image {p.image_size}px, C={p.new_tokens}, {p.dtype}; "
        f"device {device.device_kind} ({jax.default_backend()})"
    )
    t0 = time.perf_counter()
    model = build_model(config, a.seed, p.dtype)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    print(f"params {n_params / 1e6:.1f}M (random, built in {time.perf_counter() - t0:.1f}s)")
    inputs = make_inputs(p, a.seed)

    results = {}
    for i, attention in enumerate(a.attention):
        model.config = model.config.replace(attention=attention)  # a new graphdef, same weights
        # The vision tower's own program is timed once (its compile costs GPU-suite seconds).
        ours = results[attention] = run_ours(model, inputs, p, a.seed, vision=i == 0)
        print(
            f"ours ({attention} attention): compile+first run {ours['compile_s']:.1f}s "
            f"({ours['compiles']} programs); prefill {1e3 * ours['prefill_s']:.1f} ms (vision "
            f"tower alone {1e3 * ours['vision_s']:.1f} ms); decode {ours['steps']} steps "
            f"{ours['decode_s']:.2f}s = {ours['step_ms']:.2f} ms/step; "
            f"{ours['tokens_per_s']:.1f} tokens/s"
        )
        ours["roofline"] = roofline_fraction(model, p, ours, device.device_kind)
    theirs = None
    if not a.no_torch:
        theirs = run_torch(model, inputs, p, a.torch_threads)
        print(
            f"transformers ({theirs['device']}): {theirs['total_s']:.2f}s total, prefill+1 "
            f"token {1e3 * theirs['prefill_s']:.1f} ms, {theirs['step_ms']:.2f} ms/step, "
            f"{theirs['tokens_per_s']:.1f} tokens/s"
        )
        first = results[a.attention[0]]
        print(
            f"ratio ours/transformers: {first['tokens_per_s'] / theirs['tokens_per_s']:.1f}x "
            f"tokens/s, {theirs['step_ms'] / first['step_ms']:.1f}x per decode step"
        )
    what = f"rollout {a.preset} {p.prompts}x{p.samples}, C={p.new_tokens}"
    for i, (attention, ours) in enumerate(results.items()):
        other = theirs if i == 0 else None
        row(
            f"{what} ({attention}): tokens/s",
            ours["tokens_per_s"],
            other and other["tokens_per_s"],
            roofline=ours["roofline"],
        )
        row(
            f"{what} ({attention}): ms per decode step",
            ours["step_ms"],
            other and other["step_ms"],
            unit="ms",
            higher_is_better=False,
            roofline=ours["roofline"],
        )
        row(f"{what} ({attention}): compile s", ours["compile_s"], unit="s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
