"""The training run: `run(config, workdir)` does Visual-RFT (GRPO) or the SFT baseline end to end.

Reads top to bottom: a finished run? (say so, touch nothing) -> SIGTERM guard for the whole run
-> mesh -> processor -> model (checkpoint.resolve_init_source: workdir checkpoint > config.resume
> config.model_init > random preset; model_setup: float32 master weights, compute-dtype sampler
copy and reference) -> optimizer and train state -> files continued from the
resumed step -> optional SFT warm-up (config.sft.warmup_steps, checkpointed in workdir/warmup/;
the GRPO reference model is the warmed-up one; with lora.full_warmup it trains every weight and
becomes the LoRA base, also rebuilt from workdir/warmup/ on resume) -> data pipeline with a
resumable position -> the loop -> final evaluation. Evaluations: vrft_jax.evaluation; results.json,
the table and the reward curve: vrft_jax.results. A SIGTERM outside the loop raises RunStopped once
what can be saved is.

Each GRPO step: rollout (sampler, G per prompt; with grpo.dynamic_sampling, more prompts until the
batch holds input.batch_size groups with signal) -> rewards -> advantages -> reference log-probs
(beta != 0) -> old log-probs (mu > 1) -> mu jitted updates. `total_steps` and the loop count these
rollout steps; state["step"] counts optimizer updates (mu per step; SFT: 1). Files in the workdir:
metrics.jsonl, samples.jsonl, tb/, checkpoints/, warmup/, eval/<tag>/, and results.json +
reward_curve.png (evaluations: before training when config.eval_at_start, after the warm-up, every
eval_every steps, at the end).
"""

import contextlib
import time

import jax
from absl import logging
from flax import nnx
from tqdm import tqdm

from vrft_jax import checkpoint, optim, sampler, sharding, steps
from vrft_jax.data import make_source
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.evaluation import EvaluationStopped, run_evals
from vrft_jax.inputs import PromptProcessor
from vrft_jax.metrics import MetricsWriter, Timer
from vrft_jax.model_setup import build_model, lora_setup, make_generate_fn, reference_params
from vrft_jax.models import compile_count as model_compile_count
from vrft_jax.preemption import PreemptionGuard, RunStopped
from vrft_jax.results import Results, report
from vrft_jax.rollout import make_rollout, make_signal_rollout
from vrft_jax.sft import WARMUP_DIR, full_warmup_base, sft_batch, sft_warmup

TRAINERS = ("grpo", "sft")  # config.trainer


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
    init_source, init_path = checkpoint.resolve_init_source(workdir, config)
    model = build_model(config)
    graphdef, params_state = nnx.split(model, nnx.Param)
    model_config = model.config
    processor = PromptProcessor.from_config(config, model_config)  # box frame from the family
    logging.info("model from %s %s", init_source, init_path)
    logging.info("boxes in the %s frame (config.model.box_frame)", processor.box_frame)
    # LoRA: the weights become the frozen base; the trained params are the adapters.
    lora_run = lora_setup(config, params_state, mesh, rules)
    # lora.full_warmup: the warm-up trains these weights first, then they replace the base.
    model_params = params_state if lora_run is not None and config.lora.full_warmup else None
    if lora_run is not None:
        del model
        params_state = lora_run.adapters

    # ---- Optimizer and train state --------------------------------------------------------------
    per_step = updates_per_step(config)  # total_steps counts rollout steps
    tx, schedule = optim.make_optimizer(config.optim, max(total_steps, 1) * per_step, params_state)
    state, state_shardings = steps.make_train_state(params_state, tx, mesh, rules)
    fns = steps.TrainSteps(graphdef, config, tx, schedule, state_shardings, lora_run)
    generate_fn = make_generate_fn(graphdef, model_config, config, lora_run)

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
    start = steps_done(state, per_step, init_path)
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
    if model_params is not None:  # the base is the warm-up's result; the adapters start fresh
        full_warmup_base(
            config, processor, graphdef, model_params, mesh, rules, fns,
            workdir=workdir, guard=guard, resumed=init_source == "workdir",
        )  # fmt: skip
        del model_params
        if config.eval_at_start and not resumed and not results.has("after_sft", 0):
            evaluate("after_sft", 0, state, None)
    elif warm and not resumed:
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
    ref_params = reference_params(config, start_params, lora_run)  # None without a KL term

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
                rng, timer, next_examples=lambda: next(data_iter),
            )  # fmt: skip
            tokens = metrics["completion_tokens"]
        else:
            with timer("update"):
                batch = sft_batch(processor, examples, config)
                state, m = fns.update_sft(state, steps.place_batch(batch, mesh))
                metrics = steps.host_metrics(m)
                tokens = float(batch["completion_mask"].sum())
            rollout = None
        elapsed = time.perf_counter() - t0
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
        extra = {"data": data_iter.get_state()}
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


# ---- Step accounting -----------------------------------------------------------------------------


def updates_per_step(config) -> int:
    """Optimizer updates per loop step: grpo.mu for GRPO (mu updates on each rollout), 1 for SFT."""
    if config.trainer != "grpo":
        return 1
    mu = int(config.grpo.mu)
    if mu < 1:
        raise ValueError(f"grpo.mu={config.grpo.mu}: need at least one update per rollout")
    return mu


def steps_done(state, per_step: int, source: str) -> int:
    """Loop steps a (restored) train state has done: its optimizer updates / updates per step."""
    updates = int(state["step"])
    if updates % per_step:
        raise checkpoint.CheckpointError(
            f"checkpoint {source!r} holds {updates} optimizer updates, not a whole number of "
            f"rollout steps of grpo.mu={per_step} updates: it was saved with another grpo.mu."
        )
    return updates // per_step


# ---- GRPO step -----------------------------------------------------------------------------------


def grpo_step(
    config, state, examples, processor, fns, generate_fn, ref_params, mesh, rng, timer,
    next_examples=None,
):  # fmt: skip
    """One rollout step: a rollout of `examples` and config.grpo.mu updates on it.

    With config.grpo.dynamic_sampling, next_examples() supplies further prompts (the loop's data
    iterator) until the batch holds len(examples) groups with signal. Returns (state, metrics,
    rollout): metrics of every completion sampled (rollout.rollout_metrics) and of the last of the
    mu updates; `rollout` is the batch trained on.
    """
    generate = generate_fn(state["params"])
    if config.grpo.dynamic_sampling:
        if next_examples is None:
            raise ValueError("grpo.dynamic_sampling needs next_examples (a source of prompts)")
        rollout, metrics = make_signal_rollout(
            generate, processor, examples, next_examples, config, rng, timer=timer
        )
    else:
        rollout = make_rollout(generate, processor, examples, config, rng, timer=timer)
        metrics = rollout.metrics()
    batch = steps.place_batch(rollout.train_arrays(), mesh)
    state, updates = grpo_updates(config, state, batch, fns, ref_params, timer)
    metrics.update(updates[-1])
    return state, metrics, rollout


def grpo_updates(config, state, batch, fns, ref_params, timer):
    """config.grpo.mu updates on one placed rollout batch -> (state, [host metrics per update]).

    The reference log-probs (beta != 0) and, when mu > 1, the old log-probs are computed first,
    from the params that sampled the rollout: the first update has ratio exactly 1, later ones
    see how far the policy moved since and can clip. Whenever the loss compares log-probs (KL or
    ratio), each update also gets its current params' log-probs from the same log-prob program
    ("policy_logps", see steps.grpo_loss_and_grads), so equal weights give exactly equal values:
    KL exactly 0 at step 0, ratio exactly 1 on the first update. That costs one forward per
    update; with beta = 0 and mu = 1 the ratio is 1 by construction and nothing extra runs.
    `grpo.exact_logprob_values = False` skips those forwards (values then ~30 ulps apart).
    """
    exact = config.grpo.exact_logprob_values and (ref_params is not None or config.grpo.mu > 1)
    with timer("logprobs"):
        if ref_params is not None:
            batch["ref_logps"] = fns.logprobs(ref_params, batch)
        if exact:
            batch["policy_logps"] = fns.logprobs(state["params"], batch)
        if config.grpo.mu > 1:  # the rollout policy's
            batch["old_logps"] = (
                batch["policy_logps"] if exact else fns.logprobs(state["params"], batch)
            )
        jax.block_until_ready(batch)
    device_metrics = []
    for k in range(config.grpo.mu):
        if k > 0 and exact:
            with timer("logprobs"):
                batch["policy_logps"] = jax.block_until_ready(fns.logprobs(state["params"], batch))
        with timer("update"):
            state, m = fns.update_grpo(state, batch)
            device_metrics.append(m)
    with timer("update"):
        updates = [steps.host_metrics(m) for m in device_metrics]
    return state, updates


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
