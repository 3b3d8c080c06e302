"""Benchmark: one whole GRPO step of the paper's 2B setting on one device, timed by phase (ours).

    PYTHONPATH=. python bench/grpo_step.py --preset 2b          # 8 prompts x G=8, C=256, 448 px
    PYTHONPATH=. python bench/grpo_step.py --preset cpu-small   # 2 x G=4, C=32, 112 px, CPU

The step is the trainer's own `vrft_jax.train.grpo_step` (make_rollout: prompt encoding, sampler,
detokenize, rewards, advantages -> steps.place_batch -> reference and policy log-probs ->
update_grpo) with the trainer's config (configs/base.py + configs/common.reference_training: beta
0.04, mu 1, the detection rewards), B detection prompts each with one random square image, and a
model of random weights (float32 master weights, bfloat16 compute on GPU). The real detection prompt
is 416 tokens with a 448 px image (bucket 512; 176 with cpu-small's 112 px). Only the sampler's call
is swapped for one that blocks between its prefill and its decode so each phase gets its
own time (the same Sampler programs as vrft_jax.sampler.generate_with_state).

Phases (seconds): host prompt encoding (tokenizer + image processor), prefill (vision tower + LLM
prompt; the vision tower is also timed alone on the same images), decode, device->host (tokens,
mask, log-probs), rewards on the host (detokenize + score + advantages), host->device (the batch,
with the little Python around it), reference log-probs, update. The first step compiles; compile
time per phase = first step - a later step. Phases are printed in increasing order, the dominant
one last. Random weights sample random tokens, so every row runs all C steps (no early stop) and
the rewards are 0 (the update still does all its work). `SUMMARY|` lines feed bench/summary.py.
main() imports configs (ml_collections) and vrft_jax.train (grain); the module imports without
them (see bench/gpu_check.sh for the GPU machine, which lacks both).
"""

import argparse
import dataclasses
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vrft_jax import model_setup, optim, policy, sharding, steps
from vrft_jax.generation import sampler
from vrft_jax.generation.sampling_rules import SamplingRule
from vrft_jax.metrics import Timer
from vrft_jax.models import get_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout import PRESETS as ROLLOUT_PRESETS  # noqa: E402  (bench/)
from rollout import build_model  # noqa: E402
from summary import row  # noqa: E402


@dataclasses.dataclass(frozen=True)
class StepPreset:
    prompts: int  # B
    samples: int  # G
    image_size: int  # square image side in pixels
    new_tokens: int  # C
    param_dtype: str
    compute_dtype: str
    micro_batch: int
    config: dict  # Qwen2VLConfig overrides of the 2b preset


PRESETS = {
    "cpu-small": StepPreset(
        2, 4, 112, 32, "float32", "float32", 4, ROLLOUT_PRESETS["cpu-small"].config
    ),
    "2b": StepPreset(8, 8, 448, 256, "float32", "bfloat16", 8, {}),
}
ORDER = (  # phase names as timed; train.grpo_step times rollout/reward/logprobs/update itself
    ("encode", "host: prompt encoding"),
    ("prefill", "prefill (vision tower + LLM prompt)"),
    ("decode", "decode"),
    ("to_host", "device->host: tokens, mask, log-probs"),
    ("reward", "rewards on the host (detokenize, score, advantages)"),
    ("to_device", "host->device: the train batch (+ Python)"),
    ("logprobs", "reference + policy log-probs"),
    ("update", "update (policy fwd+bwd, AdamW)"),
)


def step_config(p: StepPreset):
    from configs import base, common

    c = base.get_config()
    common.reference_training(c, "2b")
    c.model_init = ""  # random weights; the shipped tokenizer
    c.model.master_dtype, c.model.compute_dtype = p.param_dtype, p.compute_dtype
    c.input.batch_size, c.grpo.G = p.prompts, p.samples
    c.grpo.micro_batch_size = p.micro_batch
    c.sampler.max_new_tokens = p.new_tokens
    return c


def make_examples(p: StepPreset, seed: int):
    """B detection prompts, each with one random image and a two-box solution."""
    from vrft_jax.data.example import Example
    from vrft_jax.prompts import build_prompt

    rng = np.random.default_rng(seed)
    solution = (
        "<answer>[{'Position': [100, 120, 400, 500], 'Confidence': 1}, "
        "{'Position': [520, 80, 900, 610], 'Confidence': 1}]</answer>"
    )
    return [
        Example(
            image=rng.integers(0, 256, (p.image_size, p.image_size, 3), dtype=np.uint8),
            problem=build_prompt("detection", category="person"),
            task="detection",
            solution=solution,
            example_id=str(i),
        )
        for i in range(p.prompts)
    ]


def timed_generate_fn(graphdef, model_config, c, timer):
    """Like train.make_generate_fn (same shared Sampler and options), but blocking after the
    prefill, the decode and the transfer to the host, each under its own timer phase."""
    options = dict(
        prompt_buckets=tuple(c.input.prompt_buckets),
        patch_buckets=tuple(c.input.patch_buckets),
        batch_buckets=tuple(c.sampler.batch_buckets),
        cache_dtype=jnp.dtype(c.model.compute_dtype),
    )
    shared = sampler.get_sampler(graphdef, model_config, **options)

    def bind(params):
        def generate(ids, mask, pixels, grid, *, max_new_tokens, num_samples, temperature, top_k,
                     top_p, eos_token_ids, pad_token_id, rng):  # fmt: skip
            with timer("prefill"):
                state = shared.start(
                    params, ids, mask, pixels, grid, max_new_tokens=max_new_tokens,
                    num_samples=num_samples, pad_token_id=pad_token_id, rng=rng,
                )  # fmt: skip
                jax.block_until_ready(state)
            with timer("decode"):
                rule = SamplingRule(float(temperature), int(top_k), float(top_p))
                state = shared.run(params, state, rule, eos_token_ids, pad_token_id)
                jax.block_until_ready(state)
            with timer("to_host"):
                n = len(ids) * num_samples  # dummy prompts' rows come last: drop them
                arrays = jax.device_get((state.tokens[:n], state.mask[:n], state.logprobs[:n]))
            return sampler.SampleOutput(*arrays, steps=int(state.step))

        return generate

    return bind, shared


def vision_seconds(shared, graphdef, params, processor, examples, c):
    """The vision tower alone on the step's padded images: (compile + run, run) seconds."""
    from vrft_jax.rollout import encode_prompts

    prompt = encode_prompts(processor, examples, c)
    _, _, pixels, grid, _ = shared.prepare(prompt["prompt_ids"], prompt["prompt_mask"],
                                           *prompt["raw_images"])  # fmt: skip
    encode = jax.jit(functools.partial(policy.encode_images, graphdef))
    t0 = time.perf_counter()
    jax.block_until_ready(encode(params, pixels, grid))
    t1 = time.perf_counter()
    jax.block_until_ready(encode(params, pixels, grid))
    return t1 - t0, time.perf_counter() - t1


def run_steps(p: StepPreset, num_steps: int, seed: int):
    """Builds the trainer's pieces and runs `num_steps` GRPO steps -> (per-step phase seconds,
    extra facts)."""
    from vrft_jax import train
    from vrft_jax.inputs import PromptProcessor

    c = step_config(p)
    processor = PromptProcessor.from_config(c)
    overrides = dict(p.config, remat=c.model.remat, attention=c.model.attention)
    model = build_model(
        get_preset("2b", **overrides), seed, p.param_dtype, p.compute_dtype,
        prompt_buckets=tuple(c.input.prompt_buckets), patch_buckets=tuple(c.input.patch_buckets),
    )  # fmt: skip
    graphdef, params_state = nnx.split(model, nnx.Param)
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])
    tx, schedule = optim.make_optimizer(c.optim, max(int(c.total_steps), 1), params_state)
    state, shardings = steps.make_train_state(
        params_state, tx, mesh, sharding.make_rules(c.mesh_rules)
    )
    fns = steps.TrainSteps(graphdef, c, tx, schedule, shardings)
    ref_params = model_setup.reference_params(c, state["params"])  # as the trainer builds it
    facts = {"params": sum(x.size for x in jax.tree.leaves(params_state))}
    model_config = model.config
    del model, params_state  # the train state holds its own copy: free the model's
    timer = Timer()
    generate_fn, shared = timed_generate_fn(graphdef, model_config, c, timer)
    examples = make_examples(p, seed)
    per_step = []
    for i in range(num_steps):
        rng = jax.random.fold_in(jax.random.key(c.seed), i)
        t0 = time.perf_counter()
        state, metrics, rollout = train.grpo_step(
            c, state, examples, processor, fns, generate_fn, ref_params, mesh, rng, timer
        )
        total = time.perf_counter() - t0
        s = {k.removeprefix("time/"): v for k, v in timer.splits().items()}
        s["encode"] = s.pop("rollout") - s["prefill"] - s["decode"] - s["to_host"]
        s["to_device"] = total - sum(s.values())
        s["total"] = total
        per_step.append(s)
        facts.update(
            prompt_len=rollout.prompt_ids.shape[1],
            tokens=int(rollout.completion_mask.sum()),
            loss=metrics["loss"],
            compiles=fns.compiles + shared.compile_count(),
        )
    facts["vision_first"], facts["vision"] = vision_seconds(
        shared, graphdef, state["params"], processor, examples, c
    )
    return per_step, facts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--steps", type=int, default=2, help="steps run (the first compiles)")
    ap.add_argument("--micro-batch", type=int, help="sequences per forward/backward")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.steps < 2:
        ap.error("--steps must be >= 2 (the first step compiles)")
    # No transformers in this process: let JAX take the GPU as it needs (state, reference, cache).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    p = PRESETS[a.preset]
    p = dataclasses.replace(p, micro_batch=a.micro_batch or p.micro_batch)
    device = jax.devices()[0]
    N = p.prompts * p.samples
    print(
        f"preset {a.preset}: one GRPO step, B={p.prompts} prompts x G={p.samples} = {N} "
        f"completions of C={p.new_tokens} tokens, one {p.image_size}px image per prompt, with "
        f"the reference; {p.param_dtype} weights, {p.compute_dtype} compute, micro-batch "
        f"{p.micro_batch}; device {device.device_kind} ({jax.default_backend()})"
    )
    per_step, facts = run_steps(p, a.steps, a.seed)
    first, later = per_step[0], per_step[1:]
    steady = {k: float(np.median([s[k] for s in later])) for k in first}
    print(
        f"{facts['params'] / 1e9:.3f}B params; prompt bucket {facts['prompt_len']}; "
        f"{facts['tokens']} completion tokens; {facts['compiles']} programs compiled; "
        f"loss {facts['loss']:.4f}; steady step = median of {len(later)}"
    )
    print(f"{'phase':58s} {'step s':>8s} {'share':>6s} {'compile s':>9s}")
    phases = sorted(ORDER, key=lambda kv: steady[kv[0]])
    for key, label in phases:
        share = steady[key] / steady["total"]
        compile_s = max(first[key] - steady[key], 0.0)
        print(f"{label:58s} {steady[key]:8.3f} {100 * share:5.1f}% {compile_s:9.1f}")
    compile_total = first["total"] - steady["total"]
    print(
        f"{'whole step':58s} {steady['total']:8.3f} {100.0:5.1f}% {compile_total:9.1f}\n"
        f"vision tower alone on the step's images: {1e3 * facts['vision']:.1f} ms (inside the "
        f"prefill; its own program compiled in {facts['vision_first'] - facts['vision']:.1f}s)"
    )
    key, label = phases[-1]
    print(f"dominant phase: {label}, {100 * steady[key] / steady['total']:.0f}% of the step")
    what = f"grpo step {a.preset} {p.prompts}x{p.samples}, C={p.new_tokens}"
    row(f"{what}: step s (first step adds {compile_total:.0f} s compile)", steady["total"],
        unit="s")  # fmt: skip
    for key, label in phases:
        row(f"{what}: {label.split(' (')[0]} s", steady[key], unit="s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
