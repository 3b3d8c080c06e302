"""Supervised fine-tuning pieces: answer targets, SFT batches, and the warm-up before GRPO.

The SFT trainer (config.trainer = "sft", the paper's supervised baseline) and the GRPO warm-up
(config.sft.warmup_steps) both train on `sft_batch`: the prompt arrays of `rollout.encode_prompts`
plus the target answer's tokens as the completion, so they share the GRPO step's forward
(steps.TrainSteps.update_sft).
"""

import os
import zlib

import numpy as np
from absl import logging
from tqdm import tqdm

from vrft_jax import box_frames, checkpoint, optim, steps
from vrft_jax.config_utils import parse_relabel
from vrft_jax.data import make_source
from vrft_jax.data.example import (
    classification_solution,
    detection_solution,
    grounding_solution,
)
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.preemption import RunStopped
from vrft_jax.rollout import encode_prompts, example_image_sizes

WARMUP_DIR = "warmup"  # workdir/warmup/checkpoints: the SFT warm-up's state (stopped or finished)


def sft_target(example, think: str, frame: str = box_frames.RELATIVE, size=None) -> str:
    """The answer trained on: the solution, after "<think>{think}</think>" when think is set.

    The solutions are 0..1000; for a model answering in another frame (`frame`, with `size` the
    image's resized (W, H)) the detection or grounding boxes are rewritten in that frame, rounded
    to integers, so SFT teaches the coordinates the prompts ask for and the rewards read.
    """
    solution = solution_in_frame(example, frame, size)
    return f"<think>{think}</think>{solution}" if think else solution


def solution_in_frame(example, frame: str, size) -> str:
    """The example's solution with its boxes (`example.boxes`, 0..1000) written in `frame`."""
    box_frames.check_frame(frame)
    if frame == box_frames.RELATIVE or example.task not in ("detection", "grounding"):
        return example.solution
    boxes = np.asarray(example.boxes, np.float64).reshape(-1, 4)
    written = np.rint(box_frames.from_relative(boxes, frame, np.asarray(size))).astype(int)
    if example.task == "detection":
        return detection_solution(written.tolist())
    return grounding_solution(written[0].tolist())


def relabelled(example, rules: dict, seed: int):
    """The example with the wrong class as its SFT answer, for a fixed `fraction` of its class.

    A noisy teacher (config.sft.relabel): the SFT target of a classification example whose class
    is TRUE becomes GIVEN for that fraction of the examples, chosen by a hash of (seed,
    example_id), so a resumed warm-up sees the same labels. Rewards keep the true solution.
    """
    rule = rules.get(example.class_name) if example.task == "classification" else None
    if rule is None:
        return example
    given, fraction = rule
    if zlib.crc32(f"{seed}:{example.example_id}".encode()) / 2**32 >= fraction:
        return example
    return example.replace(solution=classification_solution(given), class_name=given)


def sft_batch(processor, examples, config) -> dict:
    """Prompt arrays + answer tokens (target text and <|im_end|>), C padded to max_new_tokens.

    Returns the prompt arrays of `encode_prompts` (B = N: one completion per prompt) and
    completion_ids int32 [N, C], completion_mask int32 [N, C] (1 on the answer tokens).
    """
    if config.sft.relabel:
        rules = parse_relabel(config.sft.relabel)
        examples = [relabelled(e, rules, config.seed) for e in examples]
    prompt = encode_prompts(processor, examples, config)
    sizes = example_image_sizes(processor, prompt, len(examples))
    targets = [
        sft_target(e, config.sft.think, processor.box_frame, None if sizes is None else sizes[i])
        for i, e in enumerate(examples)
    ]
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
    params -> `state` with the warmed-up params. Uses its own data stream (seed + 1), so GRPO's
    data position is unaffected; deterministic, so a resumed run can rebuild its reference.

    With `workdir`: a stop (`guard.requested()` after a step) saves the warm-up's state and data
    position in workdir/warmup/checkpoints and raises RunStopped; the end saves the final
    params there. A later call continues from the saved step, or returns the saved final params
    without recomputing them (a resumed run rebuilding its reference model).

    state None (lora.full_warmup in a LoRA run): every weight trains, from params_state's (the
    model's master weights), without the LoRA base; returns {"params": the warmed-up weights}.
    """
    n = config.sft.warmup_steps
    warm_cfg = config.optim.copy_and_resolve_references()
    warm_cfg.lr = config.sft.lr or config.optim.lr
    warm_cfg.schedule, warm_cfg.warmup_steps = "constant", 0
    tx, schedule = optim.make_optimizer(warm_cfg, n, params_state)
    warm_state, shardings = steps.make_train_state(params_state, tx, mesh, rules)
    full = state is None
    if not full:
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
        return dict(state or {}, params=saved["params"])
    if done:  # stopped earlier: continue from the saved state and data position
        warm_state, extra = ckpt.restore(checkpoint.abstract_like(warm_state, shardings))
        data_state = extra["data"]
        print(f"sft warm-up: continuing after step {done} of {n}")
    lora_run = None if full else fns.lora_run
    warm_fns = steps.TrainSteps(graphdef, config, tx, schedule, shardings, lora_run)
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
    return dict(state or {}, params=warm_state["params"])


def warmup_finished(workdir, config) -> bool:
    """True when workdir/warmup holds the warm-up's final params (all sft.warmup_steps done)."""
    return checkpoint.latest_step(os.path.join(workdir, WARMUP_DIR)) == config.sft.warmup_steps


def full_warmup_base(
    config, processor, graphdef, params_state, mesh, rules, fns, *, workdir, guard, resumed
):
    """lora.full_warmup: the warm-up trains every weight from `params_state` (the model's initial
    master weights, as a full fine-tuning run's warm-up), and its result becomes the frozen LoRA
    base (fns.lora_run, model_setup.rebase) that GRPO's adapters sit on. `resumed` (a run
    continuing from its own step checkpoint): the result is read back from workdir/warmup, never
    recomputed, since the saved adapters were trained on exactly that base."""
    from vrft_jax.model_setup import rebase

    if resumed and not warmup_finished(workdir, config):
        raise checkpoint.CheckpointError(
            f"{workdir!r} holds adapter checkpoints of a lora.full_warmup run but not the base "
            f"they were trained on: {os.path.join(workdir, WARMUP_DIR)} has no final warm-up "
            f"params (step {config.sft.warmup_steps}). Restore that folder or start a new workdir."
        )
    warmed = sft_warmup(
        config, processor, graphdef, params_state, mesh, rules, None, fns,
        workdir=workdir, guard=guard,
    )["params"]  # fmt: skip
    rebase(fns.lora_run, config, warmed, params_state, mesh, rules)
