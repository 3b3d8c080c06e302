"""The training run: `run(config, workdir)` does Visual-RFT (GRPO) or the SFT baseline end to end.

Reads top to bottom: mesh -> processor -> model (checkpoint.resolve_init_source: workdir
checkpoint > config.resume > config.model_init > random preset) -> optimizer and train state ->
optional SFT warm-up (config.sft.warmup_steps; the GRPO reference model is the warmed-up one) ->
data pipeline with a resumable position -> checkpoints + SIGTERM guard -> the loop -> final
evaluation.

Each GRPO step: rollout (sampler, G per prompt) -> rewards -> advantages -> reference log-probs
(beta != 0) -> old log-probs (mu > 1) -> mu jitted updates. Files in the workdir: metrics.jsonl,
samples.jsonl, tb/, checkpoints/, eval/, and results.json + reward_curve.png (evaluations: before
training when config.eval_at_start, after the warm-up, at the end).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from vrft_jax import checkpoint, optim, rewards, sampler, sharding, steps
from vrft_jax.data import make_source
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.evals import make_evaluators
from vrft_jax.evals.predict import make_predict_fn
from vrft_jax.inputs import PromptProcessor
from vrft_jax.metrics import MetricsWriter, Timer
from vrft_jax.models import compile_count as model_compile_count
from vrft_jax.models import get_preset, random_qwen2_vl
from vrft_jax.preemption import PreemptionGuard
from vrft_jax.rollout import encode_prompts, make_rollout


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def run(config, workdir: str) -> dict:
    """Trains (or only evaluates when total_steps == 0); returns the final metrics dict."""
    t_start = time.time()
    if config.trainer not in ("grpo", "sft"):
        raise ValueError(f"config.trainer={config.trainer!r}: expected 'grpo' or 'sft'")
    checkpoint.check_workdir(workdir)

    # ---- Mesh, processor, model -----------------------------------------------------------------
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.make_rules(config.mesh_rules)
    processor = PromptProcessor.from_config(config)
    init_source, init_path = checkpoint.resolve_init_source(workdir, config)
    model = build_model(config, init_source, init_path)
    graphdef, params_state = nnx.split(model, nnx.Param)
    model_config = model.config
    logging.info("model from %s %s", init_source, init_path)

    # ---- Optimizer and train state --------------------------------------------------------------
    total_steps = int(config.total_steps)
    tx, schedule = optim.make_optimizer(config.optim, max(total_steps, 1), params_state)
    state, state_shardings = steps.make_train_state(params_state, tx, mesh, rules, seed=config.seed)
    fns = steps.TrainSteps(graphdef, config, tx, schedule, state_shardings)
    generate_fn = make_generate_fn(graphdef, model_config, config)

    # ---- Evaluation -----------------------------------------------------------------------------
    evaluations = {}  # tag -> metrics

    def evaluate(tag, params):
        metrics = run_evals(config, workdir, processor, generate_fn(params), tag)
        evaluations[tag] = metrics
        logging.info("eval %s: %s", tag, metrics)
        return metrics

    # ---- Checkpoints and resume -----------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        workdir, every=config.ckpt.every, keep=config.ckpt.keep, async_save=config.ckpt.async_save
    )
    init_state, extra = state, {}
    abstract = checkpoint.abstract_like(state, state_shardings)
    if init_source == "workdir":
        state, extra = ckpt.restore(abstract)
    elif init_source == "resume":
        state, _ = checkpoint.restore_checkpoint(init_path, abstract)  # not its data position
    resumed = init_source in ("workdir", "resume")
    start = int(state["step"])

    writer = MetricsWriter(workdir)
    if total_steps == 0:
        final = evaluate("final", state["params"])
        writer.write(start, {f"eval/{k}": v for k, v in final.items()})
        writer.close()
        ckpt.close()
        write_results(workdir, evaluations, [], time.time() - t_start)
        return {f"eval/{k}": v for k, v in final.items()}

    # ---- SFT warm-up (GRPO's starting point and reference; not a checkpointed step) -------------
    if config.eval_at_start and not resumed:
        evaluate("before", state["params"])
    warm = config.trainer == "grpo" and config.sft.warmup_steps > 0
    # The reference is the initial model, also on resume (never the restored weights).
    start_params = init_state["params"]
    if warm and not resumed:
        state = sft_warmup(config, processor, graphdef, params_state, mesh, rules, state, fns)
        start_params = state["params"]
        if config.eval_at_start:
            evaluate("after_sft", state["params"])
    elif warm and config.grpo.beta != 0:
        # The warm-up is deterministic: rerun it from the initial weights to rebuild the reference.
        start_params = sft_warmup(
            config, processor, graphdef, params_state, mesh, rules, init_state, fns
        )["params"]
    ref_params = None
    if config.trainer == "grpo" and config.grpo.beta != 0:
        # A copy (never an alias of the donated train params), in the reference dtype.
        ref_dtype = jnp.dtype(config.grpo.ref_dtype)
        ref_params = jax.tree.map(lambda x: jnp.array(x, dtype=ref_dtype, copy=True), start_params)

    # ---- Data -----------------------------------------------------------------------------------
    source = make_source(config.data, "train", config.seed)
    pipeline = Pipeline(
        source,
        batch_size=config.input.batch_size,
        seed=config.seed,
        num_epochs=None,
        num_workers=config.data.num_workers,
        max_bad_fraction=config.data.max_bad_fraction,
        drop_remainder=True,
        # Every host reads the whole batch; steps.place_batch keeps this host's sequence rows.
        process_index=0,
        process_count=1,
    )
    data_iter = iter(pipeline)
    if "data" in extra:
        data_iter.set_state(extra["data"])

    # ---- The loop -------------------------------------------------------------------------------
    guard = PreemptionGuard()
    timer = Timer()
    history, last = [], {}
    base_rng = jax.random.key(config.seed)
    try:
        bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="train")
        for step in bar:
            t0 = time.perf_counter()
            examples = next(data_iter)
            rng = jax.random.fold_in(base_rng, step)
            if config.trainer == "grpo":
                state, metrics, rollout = grpo_step(
                    config, state, examples, processor, fns, generate_fn, ref_params, mesh,
                    rng, timer,
                )  # fmt: skip
            else:
                with timer("update"):
                    batch = sft_batch(processor, examples, config)
                    state, m = fns.update_sft(state, steps.place_batch(batch, mesh))
                    metrics = steps.host_metrics(m)
                    tokens = float(batch["completion_mask"].sum())
                rollout = None
            elapsed = time.perf_counter() - t0
            tokens = float(rollout.completion_mask.sum()) if rollout is not None else tokens
            metrics.update(timer.splits())
            metrics.update(
                step_time=elapsed,
                tokens_per_s=tokens / max(elapsed, 1e-9),
                compile_count=fns.compiles + sampler_compiles() + model_compile_count(),
            )
            history.append({"step": step + 1, **metrics})
            last = metrics
            if (step + 1) % config.log_every == 0:
                writer.write(step + 1, metrics)
            if (
                rollout is not None
                and config.sample_every
                and (step + 1) % config.sample_every == 0
            ):
                writer.write_samples(step + 1, sample_rows(rollout, config.num_logged_samples))
            bar.set_postfix(reward=f"{metrics.get('reward/total_mean', 0.0):.3f}",
                            loss=f"{metrics['loss']:.3f}")  # fmt: skip
            if metrics["nonfinite_in_row"] >= config.optim.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{int(metrics['nonfinite_in_row'])} optimizer steps in a row had a non-finite "
                    f"loss or gradient (config.optim.max_nonfinite_steps="
                    f"{config.optim.max_nonfinite_steps}); stopped at step {step + 1}. Lower "
                    "config.optim.lr or check the data; the last good checkpoint is in "
                    f"{ckpt.directory}."
                )
            extra = {"data": data_iter.get_state(), "trainer": config.trainer}
            ckpt.save(step + 1, state, extra)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
                ev = evaluate(f"step_{step + 1}", state["params"])
                writer.write(step + 1, {f"eval/{k}": v for k, v in ev.items()})
            if guard.should_stop(step + 1):
                ckpt.save(step + 1, state, extra, force=True)
                ckpt.close()
                print(guard.stop_message(step + 1, str(ckpt.directory)))
                return {**last, "stopped_at": step + 1}
        ckpt.save(total_steps, state, {"data": data_iter.get_state()}, force=True)

        # ---- Final evaluation -------------------------------------------------------------------
        final = evaluate("final", state["params"])
        writer.write(total_steps, {f"eval/{k}": v for k, v in final.items()})
    finally:
        guard.close()
        ckpt.close()
        writer.close()
    wall = time.time() - t_start
    write_results(workdir, evaluations, history, wall)
    out = dict(last)
    out.update({f"eval/{k}": v for k, v in final.items()})
    out["evaluations"] = evaluations
    out["wall_s"] = wall
    return out


# ---- Model ---------------------------------------------------------------------------------------


def build_model(config, init_source, init_path):
    """The model at its initial weights (a checkpoint's weights are restored later, into these)."""
    from vrft_jax import hf

    m = config.model
    kwargs = dict(
        prompt_buckets=tuple(config.input.prompt_buckets),
        patch_buckets=tuple(config.input.patch_buckets),
    )
    if config.model_init:  # also the shape source for checkpoints of a HF-initialised run
        model = hf.load_qwen2_vl(config.model_init, dtype=jnp.dtype(m.param_dtype), **kwargs)
        model.config = model.config.replace(
            compute_dtype=m.compute_dtype, attention=m.attention, remat=m.remat,
            vision_remat=m.vision_remat, scan_layers=m.scan_layers,
        )  # fmt: skip
        return model
    preset = get_preset(
        m.preset, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype,
        attention=m.attention, remat=m.remat, vision_remat=m.vision_remat,
        scan_layers=m.scan_layers,
    )  # fmt: skip
    return random_qwen2_vl(preset, seed=config.seed, **kwargs)


def make_generate_fn(graphdef, model_config, config):
    """params -> generate(input_ids, attention_mask, pixel_values, image_grid_thw, **sampling),
    the sampler bound to those params (compiled programs shared across params)."""
    options = dict(
        prompt_buckets=tuple(config.input.prompt_buckets),
        patch_buckets=tuple(config.input.patch_buckets),
        batch_buckets=tuple(config.sampler.batch_buckets),
        cache_dtype=jnp.dtype(config.model.compute_dtype),
    )

    def bind(params):
        def generate(*args, **kwargs):
            return sampler.generate_with_state(
                graphdef, params, model_config, *args, sampler_options=options, **kwargs
            )

        return generate

    return bind


def sampler_compiles():
    return sum(s.compile_count() for s in sampler._SAMPLERS.values())


# ---- GRPO step -----------------------------------------------------------------------------------


def grpo_step(config, state, examples, processor, fns, generate_fn, ref_params, mesh, rng, timer):
    """One rollout and config.grpo.mu updates on it -> (state, metrics, rollout)."""
    rollout = make_rollout(
        generate_fn(state["params"]), processor, examples, config, rng, timer=timer
    )
    batch = steps.place_batch(rollout.train_arrays(), mesh)
    with timer("logprobs"):
        if ref_params is not None:
            batch["ref_logps"] = fns.logprobs(ref_params, batch)
        if config.grpo.mu > 1:
            batch["old_logps"] = fns.logprobs(state["params"], batch)
        jax.block_until_ready(batch)
    with timer("update"):
        for _ in range(config.grpo.mu):
            state, m = fns.update_grpo(state, batch)
        metrics = steps.host_metrics(m)
    metrics.update(rollout.metrics())
    if "format" in rollout.per_reward:
        metrics["format_rate"] = float(np.mean(rollout.per_reward["format"] > 0))
    return state, metrics, rollout


def sample_rows(rollout, n):
    G = rollout.completion_ids.shape[0] // len(rollout.prompts)
    rows = []
    for i in range(min(n, len(rollout.texts))):
        rows.append({
            "prompt": rollout.prompts[i // G],
            "completion": rollout.texts[i],
            "rewards": {k: float(v[i]) for k, v in rollout.per_reward.items()},
            "advantage": float(rollout.advantages[i]),
        })  # fmt: skip
    return rows


# ---- SFT -----------------------------------------------------------------------------------------


def sft_target(example, think: str) -> str:
    return f"<think>{think}</think>{example.solution}" if think else example.solution


def sft_batch(processor, examples, config) -> dict:
    """Prompt arrays + answer tokens (target text and <|im_end|>), C padded to max_new_tokens."""
    prompt = encode_prompts(processor, examples, config)
    targets = [sft_target(e, config.sft.think) for e in examples]
    P = prompt["prompt_ids"].shape[1]
    full = processor.append_completions(
        {"input_ids": prompt["prompt_ids"], "attention_mask": prompt["prompt_mask"]}, targets
    )
    ids, mask = full["input_ids"][:, P:], full["loss_mask"][:, P:]
    C = config.sampler.max_new_tokens
    if ids.shape[1] > C:
        raise ValueError(
            f"an SFT target has {ids.shape[1]} tokens, more than sampler.max_new_tokens={C}"
        )
    pad = C - ids.shape[1]
    batch = {k: v for k, v in prompt.items() if v is not None and k != "raw_images"}
    batch["completion_ids"] = np.pad(ids, ((0, 0), (0, pad)), constant_values=processor.special.pad)
    batch["completion_mask"] = np.pad(mask, ((0, 0), (0, pad))).astype(np.int32)
    return batch


def sft_warmup(config, processor, graphdef, params_state, mesh, rules, state, fns):
    """config.sft.warmup_steps supervised steps with their own constant-lr AdamW, from `state`'s
    params. Uses its own data stream (seed + 1), so GRPO's data position is unaffected."""
    warm_cfg = config.optim.copy_and_resolve_references()
    warm_cfg.lr = config.sft.lr or config.optim.lr
    warm_cfg.schedule, warm_cfg.warmup_steps = "constant", 0
    tx, schedule = optim.make_optimizer(warm_cfg, config.sft.warmup_steps, params_state)
    warm_state, shardings = steps.make_train_state(params_state, tx, mesh, rules, config.seed)
    warm_state["params"] = state["params"]
    warm_fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings)
    source = make_source(config.data, "train", config.seed + 1)
    it = iter(
        Pipeline(
            source, batch_size=config.input.batch_size, seed=config.seed + 1, num_epochs=None,
            num_workers=config.data.num_workers, drop_remainder=True,
            process_index=0, process_count=1,
        )
    )  # fmt: skip
    for _ in tqdm(range(config.sft.warmup_steps), desc="sft warm-up"):
        batch = steps.place_batch(sft_batch(processor, next(it), config), mesh)
        warm_state, metrics = warm_fns.update_sft(warm_state, batch)
    logging.info("sft warm-up done: loss %.4f", float(metrics["loss"]))
    print(f"sft warm-up: final loss {float(metrics['loss']):.4f}")
    fns.compiles += warm_fns.compiles
    return dict(state, params=warm_state["params"])


# ---- Evaluation ----------------------------------------------------------------------------------


def run_evals(config, workdir, processor, generate, tag) -> dict:
    """The config's evaluators with greedy decoding, plus the held-out mean of each reward."""

    def greedy(input_ids, attention_mask, pixel_values, image_grid_thw):
        out = generate(
            input_ids, attention_mask, pixel_values, image_grid_thw,
            max_new_tokens=config.eval.max_new_tokens, temperature=0.0,
            eos_token_ids=processor.special.eos, pad_token_id=processor.special.pad,
        )  # fmt: skip
        return out.tokens, out.mask

    base = make_predict_fn(processor, greedy)
    seen = []

    def predict(examples):
        texts = base(examples)
        seen.extend((e, t) for e, t in zip(examples, texts))
        return texts

    metrics = {}
    for evaluator in make_evaluators(config, os.path.join(workdir, "eval", tag)):
        metrics.update(evaluator.run(predict))
    if seen:
        examples, texts = zip(*seen)
        solutions = [e.solution for e in examples]
        total, per = rewards.score(texts, solutions, config.rewards, config.reward)
        metrics["reward/total_mean"] = float(np.mean(total))
        metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in per.items()})
        if config.eval.num_samples > 0:
            metrics.update(sampled_reward(config, processor, generate, examples))
    return {k: float(v) for k, v in metrics.items()}


def sampled_reward(config, processor, generate, examples) -> dict:
    """Held-out expected reward under the sampling policy (what GRPO maximises): each held-out
    prompt gets config.eval.num_samples completions at config.sampler's temperature / top-k /
    top-p. The RNG is fixed per batch, so evaluations of different parameters are comparable."""
    k, size = config.eval.num_samples, config.eval.batch_size
    texts, solutions = [], []
    for i in range(0, len(examples), size):
        chunk = examples[i : i + size]
        batch = processor.encode_batch([([e.image], e.problem) for e in chunk])
        out = generate(
            **batch, max_new_tokens=config.sampler.max_new_tokens, num_samples=k,
            temperature=config.sampler.temperature, top_k=config.sampler.top_k,
            top_p=config.sampler.top_p, rng=jax.random.key(config.seed + 7919 + i),
            eos_token_ids=processor.special.eos, pad_token_id=processor.special.pad,
        )  # fmt: skip
        texts += processor.decode(*sharding.to_host((out.tokens, out.mask)))  # rows of all hosts
        solutions += [e.solution for e in chunk for _ in range(k)]
    total, per = rewards.score(texts, solutions, config.rewards, config.reward)
    out = {"sampled/total_mean": float(np.mean(total))}
    out.update({f"sampled/{name}": float(np.mean(v)) for name, v in per.items()})
    return out


# ---- Results table and reward curve --------------------------------------------------------------


def _column_title(name: str) -> str:
    """ "reward/format" -> "greedy:format" (greedy decoding), "sampled/format" -> "sampled:format"
    (expected reward over sampled completions), "classification/accuracy" -> "accuracy"."""
    group, _, metric = name.partition("/")
    if group in ("reward", "sampled"):
        return ("greedy:" if group == "reward" else "sampled:") + metric
    return metric or name


def results_table(evaluations: dict) -> str:
    """Rows = evaluations in order, columns = metrics every evaluation has (accuracy, rewards)."""
    if not evaluations:
        return ""
    names = [k for k in next(iter(evaluations.values())) if "num_examples" not in k]
    names = [k for k in names if "bad_images" not in k]
    names = [k for k in names if all(k in e for e in evaluations.values())]
    titles = [_column_title(n) for n in names]
    width = max(len(t) for t in evaluations) + 2
    col = max(len(t) for t in titles) + 2
    lines = ["".ljust(width) + "".join(t.rjust(col) for t in titles)]
    for tag, metrics in evaluations.items():
        lines.append(tag.ljust(width) + "".join(f"{metrics[n]:{col}.3f}" for n in names))
    return "\n".join(lines)


def write_results(workdir, evaluations, history, wall_s):
    """results.json, the printed table, and reward_curve.png (train reward per step)."""
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"evaluations": evaluations, "wall_s": wall_s}, f, indent=1)
    table = results_table(evaluations)
    if table:
        print(f"\nHeld-out results, wall time {wall_s:.0f} s:\n{table}\n")
    curve = [(h["step"], h["reward/total_mean"]) for h in history if "reward/total_mean" in h]
    if curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, y = np.array(curve).T
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(x, y, alpha=0.4, label="train reward (per step)")
        k = max(1, len(y) // 10)
        ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
        for tag, e in evaluations.items():
            if "reward/total_mean" in e:
                ax.axhline(e["reward/total_mean"], ls="--", lw=0.8, color="gray")
                ax.annotate(f"held-out {tag}", (x[0], e["reward/total_mean"]), fontsize=7)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("mean total reward")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "reward_curve.png"), dpi=100)
        plt.close(fig)
