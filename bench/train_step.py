"""Benchmark: our jitted GRPO update vs transformers' forward+backward, same weights, same batch.

    PYTHONPATH=. python bench/train_step.py --preset cpu-small   # 2 x G=4 sequences of 64 + 32
    PYTHONPATH=. python bench/train_step.py --preset 2b          # 8 x G=8 = 64 x (378 + 256)
    PYTHONPATH=. python bench/train_step.py --preset 7b          # 8 x G=4 = 32 x (378 + 256)

Ours: the trainer's own programs (vrft_jax.steps.TrainSteps over configs/base.py with the paper's
GRPO settings, beta 0.04): `logprobs` of the frozen reference (model_setup.reference_params), then
`update_grpo` (policy forward+backward in micro-batches, the GRPO loss, AdamW; state donated).
Theirs: transformers' Qwen2VLForConditionalGeneration holding the same weights (bench/hf_twin.py)
in the compute dtype: the reference forward under no_grad, then forward+backward of the same loss
(TRL's way: logits_to_keep=C+1, float32 log-softmax, clipped ratio, k3 KL) over the same
micro-batches, gradients accumulated, no optimizer step. Each of their sequences carries its
prompt's image (TRL repeats the prompt inputs G times: their vision tower sees N images, ours B).
The batch is rollout.py's synthetic one (ragged left-padded prompts, one image each) plus random
completions of exactly C tokens; ours pads the prompts to their bucket as the trainer does.

Printed per side: tokens/s (N x (prompt + C) real tokens per second) of the update and of the
reference forward, their ratio, MFU on the 6N basis (update: 6 x parameters x tokens; reference
forward: 2 x; all parameters, vision included, against the dense bf16 peak; attention and the
vision tower's per-image work stated separately), peak memory (GPU: each framework's allocator
peak; CPU: XLA's memory analysis of the update + the reference copy, and the growth of the
process's peak RSS for transformers), compile time, and the two sides' policy log-probs of the same
tokens (a same-model check). `SUMMARY|` lines feed bench/summary.py.

transformers runs first and frees its memory before ours starts (JAX without preallocation), so
each side can use the whole GPU. 7b keeps bfloat16 parameters: float32 master weights with AdamW
need 16 bytes x 8.3B = 133 GB before activations, more than one H200. main() imports configs.base,
hence ml_collections; the module itself imports without it (GPU machines lack it, see
bench/gpu_check.sh).
"""

import argparse
import dataclasses
import gc
import os
import resource
import sys
import time

import jax
import numpy as np
from flax import nnx

from vrft_jax import buckets, model_setup, optim, sharding, steps
from vrft_jax.models import get_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_twin import torch_model  # noqa: E402  (bench/)
from rollout import IMAGE, Preset, build_model, make_inputs  # noqa: E402
from rollout import PRESETS as ROLLOUT_PRESETS  # noqa: E402
from summary import row  # noqa: E402

# Dense bf16 tensor-core peak (FLOP/s) by device kind; the first match wins. The anchors
# (23% / 39% MFU) use 989 TFLOP/s for the H100/H200; the H200 measured 788-803 on a plain matmul.
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("TPU v5p", 459e12))


@dataclasses.dataclass(frozen=True)
class TrainPreset:
    batch: Preset  # prompts, samples, image, prompt and completion lengths (rollout.py's)
    model: str  # vrft_jax.models preset the config overrides start from
    param_dtype: str  # master weights and AdamW moments
    compute_dtype: str
    micro_batch: int  # sequences per forward/backward
    remat: str
    steps: int  # timed steps per side (after one warm-up / compile step)


PRESETS = {
    # 176 prompt tokens: grpo_step's real detection prompt with its 112 px image, so the smoke
    # suite's two scripts share the update's shapes (compiled once through the persistent cache).
    "cpu-small": TrainPreset(
        dataclasses.replace(ROLLOUT_PRESETS["cpu-small"], prompt_tokens=176),
        "2b",
        "float32",
        "float32",
        4,
        "none",
        1,
    ),  # fmt: skip
    "2b": TrainPreset(
        dataclasses.replace(ROLLOUT_PRESETS["2b"], config={}),
        "2b",
        "float32",
        "bfloat16",
        8,
        "none",
        3,
    ),  # fmt: skip
    "7b": TrainPreset(
        dataclasses.replace(ROLLOUT_PRESETS["2b"], samples=4, config={}),
        "7b",
        "bfloat16",
        "bfloat16",
        8,
        "full",
        3,
    ),  # fmt: skip
}


def peak_flops(device_kind: str):
    for name, flops in PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            return flops
    return None


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train_config(t: TrainPreset, b: Preset, remat: str):
    """configs/base.py + the paper's settings, shaped like this benchmark's batch."""
    from configs import base, common

    c = base.get_config()
    common.reference_training(c, "7b" if t.model == "7b" else "2b")
    c.model.master_dtype, c.model.compute_dtype = t.param_dtype, t.compute_dtype
    c.model.remat = remat
    c.input.batch_size, c.grpo.G = b.prompts, b.samples
    c.grpo.micro_batch_size = t.micro_batch
    c.sampler.max_new_tokens = b.new_tokens
    return c


def make_batch(c, b: Preset, seed: int):
    """(ours: the update's host batch, theirs: per-sequence arrays, real prompt width)."""
    ids, mask, pixels, grid = make_inputs(b, seed)
    rng = np.random.default_rng(seed + 1)
    B, G, C = b.prompts, b.samples, b.new_tokens
    N = B * G
    completion = rng.integers(0, 151000, (N, C)).astype(np.int32)
    rewards = rng.standard_normal((B, G)).astype(np.float32)
    advantages = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, keepdims=True) + 1e-4)
    width = buckets.length_bucket(ids.shape[1], c.input.prompt_buckets)
    prompt_ids, prompt_mask = buckets.pad_left(ids, mask, width, 151643)
    pv, thw = buckets.pad_images(pixels, grid, c.input.patch_buckets)  # as rollout.encode_prompts
    ours = {
        "prompt_ids": prompt_ids.astype(np.int32),
        "prompt_mask": prompt_mask.astype(np.int32),
        "pixel_values": pv.astype(np.float32),
        "image_grid_thw": thw,
        "completion_ids": completion,
        "completion_mask": np.ones((N, C), np.int32),
        "advantages": advantages.reshape(-1),
        "sampler_logps": np.zeros((N, C), np.float32),
    }
    rows = np.repeat(np.arange(B), G)  # sequence n comes from prompt n // G
    per_image = pixels.shape[0] // B
    theirs = {
        "input_ids": np.concatenate([ids[rows], completion], 1),
        "attention_mask": np.concatenate([mask[rows], np.ones((N, C), mask.dtype)], 1),
        "pixels": pixels.reshape(B, per_image, -1)[rows],  # [N, patches, 1176]: G copies each
        "grid": grid[rows],
        "completion_ids": completion,
        "advantages": ours["advantages"],
    }
    return ours, theirs, ids.shape[1]


# ---- Ours ----------------------------------------------------------------------------------------


def run_ours(model, c, host_batch, steps_timed: int):
    """Reference log-probs + GRPO update with the trainer's programs -> timings, memory, logp.
    Deletes the model's weights (the train state has its own copy): run it last."""
    graphdef, params_state = nnx.split(model, nnx.Param)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(c.optim, max(int(c.total_steps), 1), params_state)
    state, shardings = steps.make_train_state(
        params_state, tx, mesh, sharding.make_rules(c.mesh_rules)
    )
    fns = steps.TrainSteps(graphdef, c, tx, schedule, shardings)
    ref_params = model_setup.reference_params(c, state["params"])  # as the trainer builds it
    for x in jax.tree.leaves(params_state):  # the train state holds a copy (7b: 16.6 GB freed)
        x.delete()
    batch = steps.place_batch(host_batch, mesh)
    t0 = time.perf_counter()
    batch["ref_logps"] = jax.block_until_ready(fns.logprobs(ref_params, batch))
    ref_first = time.perf_counter() - t0
    ref_logp = np.asarray(batch["ref_logps"])  # the same-model check (weights in the compute dtype)
    # The trainer's update takes its log-prob values from the same program (train.grpo_updates:
    # one more forward per step, as long as the reference's, timed there; not here).
    batch["policy_logps"] = jax.block_until_ready(fns.logprobs(state["params"], batch))
    t0 = time.perf_counter()
    update = fns.update_grpo_jit.lower(state, batch, None).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = jax.block_until_ready(update(state, batch, None))  # warm-up
    ref_s, update_s = [], []
    for _ in range(steps_timed):
        t0 = time.perf_counter()
        batch["ref_logps"] = jax.block_until_ready(fns.logprobs(ref_params, batch))
        t1 = time.perf_counter()
        state, metrics = jax.block_until_ready(update(state, batch, None))
        ref_s.append(t1 - t0)
        update_s.append(time.perf_counter() - t1)
    mem = update.memory_analysis()
    ref_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(ref_params))
    plan = mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
    plan += ref_bytes - mem.alias_size_in_bytes
    stats = jax.devices()[0].memory_stats() or {}
    return dict(
        ref_s=float(np.median(ref_s)),
        update_s=float(np.median(update_s)),
        compile_s=compile_s + max(ref_first - float(np.median(ref_s)), 0.0),
        peak_bytes=stats.get("peak_bytes_in_use", plan),
        peak_source="device peak" if "peak_bytes_in_use" in stats else "XLA plan + reference",
        loss=float(metrics["loss"]),
        ref_logp=ref_logp,
        compiles=fns.compiles,
    )


# ---- transformers --------------------------------------------------------------------------------


def run_theirs(model, t: TrainPreset, g, theirs, C: int, steps_timed: int, remat: str, threads):
    """transformers' reference forward + micro-batched forward/backward of the GRPO loss; frees
    its GPU memory before returning."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rss0 = max_rss_bytes()
    twin = torch_model(model, t.compute_dtype, device)
    if remat != "none":
        twin.gradient_checkpointing_enable()
    twin.train()  # checkpointing only acts in train mode; Qwen2-VL has no dropout
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = time_twin(twin, t, g, theirs, C, steps_timed, device)
    out["peak_bytes"] = (
        torch.cuda.max_memory_allocated() if device == "cuda" else max_rss_bytes() - rss0
    )
    out["peak_source"] = "torch.cuda peak" if device == "cuda" else "process peak RSS growth"
    del twin
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # give the memory back before our side runs
    return out


def time_twin(twin, t: TrainPreset, g, theirs, C: int, steps_timed: int, device: str):
    """One warm-up and `steps_timed` timed steps of transformers' side -> median seconds."""
    import torch

    dtype = getattr(torch, t.compute_dtype)
    N = theirs["input_ids"].shape[0]
    M = min(t.micro_batch, N)

    def inputs(lo):
        ids = theirs["input_ids"][lo : lo + M]
        kw = dict(
            input_ids=torch.as_tensor(ids, device=device),
            attention_mask=torch.as_tensor(theirs["attention_mask"][lo : lo + M], device=device),
            pixel_values=torch.as_tensor(
                theirs["pixels"][lo : lo + M].reshape(-1, theirs["pixels"].shape[-1]),
                device=device,
                dtype=dtype,
            ),
            image_grid_thw=torch.as_tensor(theirs["grid"][lo : lo + M], device=device),
            mm_token_type_ids=torch.as_tensor((ids == IMAGE).astype(np.int64), device=device),
            logits_to_keep=C + 1,
            use_cache=False,
        )
        return kw, torch.as_tensor(theirs["completion_ids"][lo : lo + M], device=device)

    def logp_of(kw, completion):
        try:
            logits = twin(**kw).logits
        except TypeError as e:  # releases before mm_token_type_ids existed
            if "mm_token_type_ids" not in str(e):
                raise
            kw.pop("mm_token_type_ids")
            logits = twin(**kw).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)  # column j predicts completion j
        return logp.gather(-1, completion[..., None].long())[..., 0]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = [logp_of(*inputs(lo)) for lo in range(0, N, M)]
        sync()
        t1 = time.perf_counter()
        twin.zero_grad(set_to_none=True)
        for k, lo in enumerate(range(0, N, M)):
            kw, completion = inputs(lo)
            logp = logp_of(kw, completion)
            adv = torch.as_tensor(theirs["advantages"][lo : lo + M], device=device)[:, None]
            ratio = torch.exp(logp - logp.detach())
            clipped = torch.clamp(ratio, 1 - g.epsilon, 1 + g.epsilon_high)
            pg = -torch.minimum(ratio * adv, clipped * adv)
            d = ref[k] - logp
            per_token = pg + g.beta * (torch.exp(d) - d - 1)
            (per_token.mean(1).sum() / N).backward()  # sequence mean of token means, accumulated
        sync()
        return t1 - t0, time.perf_counter() - t1, ref

    step()  # warm-up (allocator, kernels)
    ref_s, update_s = [], []
    for _ in range(steps_timed):
        r, u, ref = step()
        ref_s.append(r)
        update_s.append(u)
    return dict(
        ref_s=float(np.median(ref_s)),
        update_s=float(np.median(update_s)),
        ref_logp=torch.cat(ref).float().cpu().numpy(),  # for the same-model check
    )


# ---- Flops ---------------------------------------------------------------------------------------


def attention_flops(cfg, N, T, B, patches):
    """Matmul flops of attention scores and mixing per update (forward+backward = 3x forward),
    outside the 6N basis: LLM causal (T^2 / 2 per head) and the vision tower (full, per image)."""
    llm = 3 * N * cfg.num_hidden_layers * 2 * T * T * cfg.hidden_size
    vision = 3 * B * cfg.vision_depth * 4 * patches * patches * cfg.vision_embed_dim
    return llm, vision


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--prompts", type=int, help="override B")
    ap.add_argument("--samples", type=int, help="override G")
    ap.add_argument("--new-tokens", type=int, help="override the completion length C")
    ap.add_argument("--prompt-tokens", type=int, help="override the prompt length (image incl.)")
    ap.add_argument("--micro-batch", type=int, help="sequences per forward/backward")
    ap.add_argument("--remat", choices=("none", "full", "dots"), help="activation checkpointing")
    ap.add_argument("--param-dtype", choices=("float32", "bfloat16"), help="master weights")
    ap.add_argument("--compute-dtype", choices=("float32", "bfloat16"))
    ap.add_argument("--attention", choices=("xla", "cudnn", "auto"), help="our attention kernel")
    ap.add_argument("--steps", type=int, help="timed steps per side")
    ap.add_argument("--no-torch", action="store_true", help="skip transformers")
    ap.add_argument("--torch-threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    # Each side gets the whole GPU in turn: JAX allocates on demand instead of taking 75% upfront.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    t = PRESETS[a.preset]
    b = dataclasses.replace(
        t.batch,
        prompts=a.prompts or t.batch.prompts,
        samples=a.samples or t.batch.samples,
        new_tokens=a.new_tokens or t.batch.new_tokens,
        prompt_tokens=a.prompt_tokens or t.batch.prompt_tokens,
    )
    t = dataclasses.replace(
        t,
        param_dtype=a.param_dtype or t.param_dtype,
        compute_dtype=a.compute_dtype or t.compute_dtype,
        micro_batch=a.micro_batch or t.micro_batch,
        steps=a.steps or t.steps,
    )
    remat = a.remat or t.remat
    c = train_config(t, b, remat)
    overrides = dict(b.config, remat=remat, attention=a.attention or c.model.attention)
    model_config = get_preset(t.model, **overrides)
    device = jax.devices()[0]
    N = b.prompts * b.samples
    t0 = time.perf_counter()
    model = build_model(
        model_config, a.seed, t.param_dtype, t.compute_dtype,
        prompt_buckets=tuple(c.input.prompt_buckets), patch_buckets=tuple(c.input.patch_buckets),
    )  # fmt: skip
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    ours_batch, theirs_batch, width = make_batch(c, b, a.seed)
    T = width + b.new_tokens
    tokens = N * T
    print(
        f"preset {a.preset}: {t.model} shapes, {n_params / 1e9:.3f}B params ({t.param_dtype} "
        f"weights, {t.compute_dtype} compute, built in {time.perf_counter() - t0:.1f}s); B="
        f"{b.prompts} x G={b.samples} = {N} sequences x ({width} prompt + {b.new_tokens}) = "
        f"{tokens} tokens; micro-batch {t.micro_batch}, remat {remat}, beta {c.grpo.beta}; "
        f"device {device.device_kind} ({jax.default_backend()})"
    )
    theirs = None
    if not a.no_torch:
        theirs = run_theirs(
            model, t, c.grpo, theirs_batch, b.new_tokens, t.steps, remat, a.torch_threads
        )
    ours = run_ours(model, c, ours_batch, t.steps)

    peak = peak_flops(device.device_kind)

    def mfu(flops_per_param_token, seconds):
        return None if peak is None else flops_per_param_token * n_params * tokens / seconds / peak

    patches = int(np.prod(ours_batch["image_grid_thw"][0]))
    llm_att, vis_att = attention_flops(model.config, N, T, b.prompts, patches)
    sides = [("ours", ours)] + ([("transformers", theirs)] if theirs else [])
    for name, r in sides:
        r["update_tps"], r["ref_tps"] = tokens / r["update_s"], tokens / r["ref_s"]
        r["update_mfu"], r["ref_mfu"] = mfu(6, r["update_s"]), mfu(2, r["ref_s"])
        mfu_text = "" if peak is None else (
            f" (MFU {100 * r['update_mfu']:.1f}% / {100 * r['ref_mfu']:.1f}% on the 6N / 2N basis)"
        )  # fmt: skip
        print(
            f"{name}: update (policy fwd+bwd{', AdamW' if name == 'ours' else ''}) "
            f"{r['update_s']:.3f}s = {r['update_tps']:,.0f} tokens/s; reference forward "
            f"{r['ref_s']:.3f}s = {r['ref_tps']:,.0f} tokens/s{mfu_text}; peak memory "
            f"{r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_source']})"
        )
    print(
        f"ours: update compiled in {ours['compile_s']:.1f}s ({ours['compiles']} programs); "
        f"loss {ours['loss']:.4f}; 6N basis {6 * n_params * tokens / 1e12:.1f} TFLOP per update; "
        f"not in it: attention {llm_att / 1e12:.2f} TFLOP (LLM, causal) + {vis_att / 1e12:.2f} "
        f"TFLOP (vision, {b.prompts} images; transformers encodes {N})"
        + ("" if peak is None else f"; peak {peak / 1e12:.0f} TFLOP/s")
    )
    what = f"train {a.preset} {N}x{T}"
    if theirs:
        gap = np.abs(ours["ref_logp"] - theirs["ref_logp"])
        print(
            f"same model: reference log-probs ours ({c.model.compute_dtype} weights) vs "
            f"transformers "
            f"({t.compute_dtype}), mean |diff| {gap.mean():.2e}, max {gap.max():.2e} (of mean "
            f"|logp| {np.abs(ours['ref_logp']).mean():.2f})"
        )
        print(
            f"ratio ours/transformers: update {theirs['update_s'] / ours['update_s']:.2f}x, "
            f"reference forward {theirs['ref_s'] / ours['ref_s']:.2f}x"
        )
        row(f"{what}: logp mean abs diff vs transformers", float(gap.mean()))
    other = theirs or {}
    row(
        f"{what}: update tokens/s (MFU 6N in roofline)",
        ours["update_tps"],
        other.get("update_tps"),
        roofline=ours["update_mfu"],
    )
    row(
        f"{what}: reference fwd tokens/s (MFU 2N)",
        ours["ref_tps"],
        other.get("ref_tps"),
        roofline=ours["ref_mfu"],
    )
    if peak is not None and theirs:
        row(f"{what}: transformers update MFU 6N", theirs["update_mfu"])
    row(
        f"{what}: peak memory GiB",
        ours["peak_bytes"] / 2**30,
        other.get("peak_bytes", 0) / 2**30 or None,
        higher_is_better=False,
    )
    row(f"{what}: our compile s", ours["compile_s"], unit="s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
