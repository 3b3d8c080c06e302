"""The training run: `run(config, workdir)` does Visual-RFT (GRPO) or the SFT baseline end to end.

Reads top to bottom: a finished run? (say so, touch nothing) -> SIGTERM guard for the whole run
-> mesh -> processor -> model (checkpoint.resolve_init_source: workdir checkpoint > config.resume
> config.model_init > random preset) -> optimizer and train state -> files continued from the
resumed step -> optional SFT warm-up (config.sft.warmup_steps, checkpointed in workdir/warmup/;
the GRPO reference model is the warmed-up one) -> data pipeline with a resumable position -> the
loop -> final evaluation. Evaluations: vrft_jax.evaluation; results.json, the table and the reward
curve: vrft_jax.results. A SIGTERM outside the loop raises RunStopped once what can be saved is.

Each GRPO step: rollout (sampler, G per prompt) -> rewards -> advantages -> reference log-probs
(beta != 0) -> old log-probs (mu > 1) -> mu jitted updates. Files in the workdir: metrics.jsonl,
samples.jsonl, tb/, checkpoints/, warmup/, eval/<tag>/, and results.json + reward_curve.png
(evaluations: before training when config.eval_at_start, after the warm-up, every eval_every
steps, at the end).
"""

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from vrft_jax import checkpoint, optim, sampler, sharding, steps
from vrft_jax.data import make_source
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.evaluation import EvaluationStopped, run_evals
from vrft_jax.inputs import PromptProcessor
from vrft_jax.metrics import MetricsWriter, Timer
from vrft_jax.models import compile_count as model_compile_count
from vrft_jax.models import get_preset, random_qwen2_vl
from vrft_jax.preemption import PreemptionGuard
from vrft_jax.results import Results, report
from vrft_jax.rollout import encode_prompts, make_rollout

TRAINERS = ("grpo", "sft")  # config.trainer
WARMUP_DIR = "warmup"  # workdir/warmup/checkpoints: the SFT warm-up's state (stopped or finished)


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def run(config, workdir: str) -> dict:
    """Trains (or only evaluates when total_steps == 0); returns the final metrics dict."""
    t_start = time.time()
    if config.trainer not in TRAINERS:
        raise ValueError(f"config.trainer={config.trainer!r}: expected one of {TRAINERS}")
    checkpoint.check_workdir(workdir)
    total_steps = int(config.total_steps)
    results = Results(workdir, writer=jax.process_index() == 0)
    done = finished_message(workdir, total_steps, results)
    if done:  # re-running a finished command: say so, touch nothing
        print(done)
        return {"finished": True, "evaluations": results.evaluations}
    with contextlib.ExitStack() as closing:
        # Held for the whole run: SIGTERM while loading, warming up or evaluating is seen too.
        guard = closing.enter_context(PreemptionGuard())
        try:
            return _run(config, workdir, total_steps, results, guard, closing, t_start)
        except RunStopped as stop:
            print(stop)
            return {"stopped": str(stop)}


def _run(config, workdir, total_steps, results, guard, closing, t_start) -> dict:
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
    tx, schedule = optim.make_optimizer(config.optim, max(total_steps, 1), params_state)
    state, state_shardings = steps.make_train_state(params_state, tx, mesh, rules, seed=config.seed)
    fns = steps.TrainSteps(graphdef, config, tx, schedule, state_shardings)
    generate_fn = make_generate_fn(graphdef, model_config, config)

    # ---- Checkpoints and resume -----------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(
        workdir, every=config.ckpt.every, keep=config.ckpt.keep, async_save=config.ckpt.async_save
    )
    closing.callback(ckpt.close)
    init_state, extra = state, {}
    abstract = checkpoint.abstract_like(state, state_shardings)
    if init_source == "workdir":
        state, extra = ckpt.restore(abstract)
    elif init_source == "resume":
        state, _ = checkpoint.restore_checkpoint(init_path, abstract)  # not its data position
    resumed = init_source in ("workdir", "resume")
    start = int(state["step"])
    if guard.requested():
        raise RunStopped(guard.phase_message("loading", f"nothing new to save ({_kept(ckpt)})"))

    # ---- Files (a resumed run continues them from its step) and evaluation ---------------------
    results.drop_after(start)
    writer = closing.enter_context(MetricsWriter(workdir, resume_step=start))

    def evaluate(tag, step, state, extra):
        """Evaluates state["params"]; a stop request saves `state` (a train step's) first."""
        try:
            metrics = run_evals(
                config, workdir, processor, generate_fn(state["params"]), tag,
                should_stop=guard.requested,
            )  # fmt: skip
        except EvaluationStopped:
            saved = _save_before_stop(ckpt, step, state, extra)
            raise RunStopped(guard.phase_message(f"the evaluation '{tag}'", saved)) from None
        results.add(tag, step, metrics, time.time() - t_start)
        if tag not in ("before", "after_sft"):
            writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
        logging.info("eval %s: %s", tag, metrics)
        return metrics

    if total_steps == 0:
        final = evaluate("eval", start, state, extra)
        return _finish(workdir, results, t_start, {}, final)

    # ---- SFT warm-up (GRPO's starting point and reference; not a checkpointed step) -------------
    if config.eval_at_start and not resumed and not results.has("before", 0):
        evaluate("before", 0, state, None)
    warm = config.trainer == "grpo" and config.sft.warmup_steps > 0
    # The reference is the initial model, also on resume (never the restored weights).
    start_params = init_state["params"]
    if warm and not resumed:
        state = sft_warmup(
            config, processor, graphdef, params_state, mesh, rules, state, fns,
            workdir=workdir, guard=guard,
        )  # fmt: skip
        start_params = state["params"]
        if config.eval_at_start and not results.has("after_sft", 0):
            evaluate("after_sft", 0, state, None)
    elif warm and config.grpo.beta != 0:
        # From workdir/warmup/, or the deterministic warm-up is rerun from the initial weights.
        start_params = sft_warmup(
            config, processor, graphdef, params_state, mesh, rules, init_state, fns,
            workdir=workdir,
        )["params"]  # fmt: skip
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
    tag = f"step_{start}"  # due at the resumed step, but the stopped run did not finish it
    if resumed and _eval_due(config, start, total_steps) and not results.has(tag, start):
        evaluate(tag, start, state, extra)

    # ---- The loop -------------------------------------------------------------------------------
    timer = Timer()
    last = {}
    base_rng = jax.random.key(config.seed)
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
            compile_count=fns.compiles + sampler.compile_count() + model_compile_count(),
        )
        last = metrics
        if (step + 1) % config.log_every == 0:
            writer.write(step + 1, metrics)
        if rollout is not None and config.sample_every and (step + 1) % config.sample_every == 0:
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
        if _eval_due(config, step + 1, total_steps):
            evaluate(f"step_{step + 1}", step + 1, state, extra)
        if guard.should_stop(step + 1):
            ckpt.save(step + 1, state, extra, force=True)
            ckpt.close()
            print(guard.stop_message(step + 1, str(ckpt.directory)))
            return {**last, "stopped_at": step + 1}
    end = max(start, total_steps)
    extra = {"data": data_iter.get_state()}
    ckpt.save(end, state, extra, force=True)

    # ---- Final evaluation -----------------------------------------------------------------------
    final = evaluate("final", end, state, extra)
    return _finish(workdir, results, t_start, last, final)


class RunStopped(Exception):
    """A stop request (SIGTERM) outside the train loop; the message says what was saved."""


def _save_before_stop(ckpt, step, state, extra) -> str:
    """Saves a train step's state (extra is None for the initial or warmed-up state, which
    are rebuilt on resume) and says what was saved."""
    if extra is None or step == 0:
        return (
            "nothing new to save (the evaluated weights are rebuilt on resume: the initial ones, "
            f"or the SFT warm-up's result in {WARMUP_DIR}/); the evaluation runs again"
        )
    ckpt.save(step, state, extra, force=True)
    ckpt.wait()
    return f"checkpoint of step {step} saved in {ckpt.directory}; the evaluation runs again"


def finished_message(workdir, total_steps, results) -> str | None:
    """A message when `workdir` holds this run finished (checkpoint at or past total_steps and
    its final evaluation), else None. Read from the files alone, before any model is built."""
    latest = checkpoint.latest_step(workdir)
    if total_steps == 0 or latest is None or latest < total_steps:
        return None
    if not results.has("final", latest):
        return None  # stopped during the final evaluation: redo it
    return (
        f"This run is already finished: {workdir} holds its step-{latest} checkpoint and final "
        f"evaluation (config.total_steps={total_steps}). Nothing to do; no file was changed. "
        "Raise --config.total_steps to train further, or choose another --workdir."
    )


def _eval_due(config, step, total_steps) -> bool:
    return bool(config.eval_every) and step % config.eval_every == 0 and 0 < step < total_steps


def _kept(ckpt) -> str:
    latest = ckpt.latest_step()
    return "no checkpoint yet" if latest is None else f"the step-{latest} checkpoint is kept"


def _finish(workdir, results, t_start, last, final) -> dict:
    """Prints the results table and draws the reward curve; the run's return value."""
    wall = time.time() - t_start
    if jax.process_index() == 0:
        report(workdir, results.evaluations, results.wall_before + wall)
    out = dict(last)
    out.update({f"eval/{k}": v for k, v in final.items()})
    out["evaluations"] = {tag: results.metrics_of(tag) for tag in results.evaluations}
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


def sft_warmup(
    config, processor, graphdef, params_state, mesh, rules, state, fns, *, workdir="", guard=None
):
    """config.sft.warmup_steps supervised steps with their own constant-lr AdamW, from `state`'s
    params. Uses its own data stream (seed + 1), so GRPO's data position is unaffected.

    With `workdir`: a stop (`guard.requested()` after a step) saves the warm-up's state and data
    position in workdir/warmup/checkpoints and raises RunStopped; the end saves the final
    params there. A later call continues from the saved step, or returns the saved final params
    without recomputing them (a resumed run rebuilding its reference model).
    """
    n = config.sft.warmup_steps
    warm_cfg = config.optim.copy_and_resolve_references()
    warm_cfg.lr = config.sft.lr or config.optim.lr
    warm_cfg.schedule, warm_cfg.warmup_steps = "constant", 0
    tx, schedule = optim.make_optimizer(warm_cfg, n, params_state)
    warm_state, shardings = steps.make_train_state(params_state, tx, mesh, rules, config.seed)
    warm_state["params"] = state["params"]
    ckpt = None
    done, data_state = 0, None
    if workdir:
        ckpt = checkpoint.Checkpointer(
            os.path.join(workdir, WARMUP_DIR), every=0, keep=1, async_save=False
        )
        done = ckpt.latest_step() or 0
    if done == n:  # finished earlier: only its params were kept
        params = {"params": warm_state["params"]}
        saved, _ = ckpt.restore(checkpoint.abstract_like(params, {"params": shardings["params"]}))
        ckpt.close()
        logging.info("sft warm-up: done before; its params from %s", ckpt.directory)
        return dict(state, params=saved["params"])
    if done:  # stopped earlier: continue from the saved state and data position
        warm_state, extra = ckpt.restore(checkpoint.abstract_like(warm_state, shardings))
        data_state = extra["data"]
        print(f"sft warm-up: continuing after step {done} of {n}")
    warm_fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings)
    source = make_source(config.data, "train", config.seed + 1)
    it = iter(
        Pipeline(
            source, batch_size=config.input.batch_size, seed=config.seed + 1, num_epochs=None,
            num_workers=config.data.num_workers, drop_remainder=True,
            process_index=0, process_count=1,
        )
    )  # fmt: skip
    if data_state is not None:
        it.set_state(data_state)
    try:
        for k in tqdm(range(done, n), initial=done, total=n, desc="sft warm-up"):
            batch = steps.place_batch(sft_batch(processor, next(it), config), mesh)
            warm_state, metrics = warm_fns.update_sft(warm_state, batch)
            if guard is not None and k + 1 < n and guard.requested():
                saved = "nothing saved (no workdir)"
                if ckpt is not None:
                    ckpt.save(k + 1, warm_state, {"data": it.get_state()}, force=True)
                    saved = f"its state is saved in {ckpt.directory}"
                phase = f"the SFT warm-up, after step {k + 1} of {n}"
                raise RunStopped(guard.phase_message(phase, saved))
        logging.info("sft warm-up done: loss %.4f", float(metrics["loss"]))
        print(f"sft warm-up: final loss {float(metrics['loss']):.4f}")
        if ckpt is not None:
            ckpt.save(n, {"params": warm_state["params"]}, {}, force=True)
    finally:
        if ckpt is not None:
            ckpt.close()
    fns.compiles += warm_fns.compiles
    return dict(state, params=warm_state["params"])
