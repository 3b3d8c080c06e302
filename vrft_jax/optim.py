"""Optax AdamW with warmup + schedule, global-norm clipping, freezing by regex, non-finite skipping.

Matches the reference's HF Trainer defaults: AdamW (b1 0.9, b2 0.999, eps 1e-8), weight decay on
matrices only (HF skips biases and norm weights), grad-norm clip 1.0, linear warmup from 0 then
linear decay to 0 at the last update (`total_updates` = config.total_steps * grpo.mu: the schedule
counts optimizer updates, the loop counts rollout steps). Frozen parameters get zero updates and
no Adam moments.
The moments have the parameters' (master) dtype, float32 by default; `mu_dtype="bfloat16"` stores
the first moment in bf16 (a quarter less optimizer memory; the second moment, whose square root
divides the update, stays in the master dtype).
"""

import math
import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

SCHEDULES = ("linear", "cosine", "constant")
# apply_if_finite applies a non-finite update after this many in a row; never, in practice: the
# trainer stops itself after config.optim.max_nonfinite_steps.
_NEVER = 2**31 - 1


def path_str(path):
    """A jax key path -> "a/b/0/c" (the trailing `.value` of an nnx Variable is dropped)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        else:  # FlattenedIndexKey and friends
            parts.append(str(getattr(key, "key", key)))
    if len(parts) > 1 and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def make_schedule(lr, schedule, warmup_steps, total_updates):
    """Learning rate as a function of the optimizer update count (0 for the first update).

    Linear warmup 0 -> lr over `warmup_steps` updates, then "linear" decay to 0 at
    `total_updates`, "cosine" decay to 0, or "constant" (HF's get_*_schedule_with_warmup formulas).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}; expected one of {SCHEDULES}")
    warmup, decay_steps = int(warmup_steps), max(int(total_updates) - int(warmup_steps), 1)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if schedule == "linear":
            decay = 1.0 - progress
        elif schedule == "cosine":
            decay = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        else:
            decay = jnp.ones_like(progress)
        return lr * jnp.where(step < warmup, warm, decay)

    return fn


def trainable_labels(params, freeze):
    """params pytree -> same tree of "train" / "frozen", frozen where re.search(freeze, path)."""
    labels = jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if freeze and re.search(freeze, path_str(p)) else "train", params
    )
    if freeze:
        values = jax.tree.leaves(labels)
        if "frozen" not in values:
            some = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0][:5]]
            raise ValueError(f"optim.freeze={freeze!r} matches no parameter path (e.g. {some})")
        if "train" not in values:
            raise ValueError(f"optim.freeze={freeze!r} freezes every parameter")
    return labels


def frozen_filter(freeze):
    """nnx filter (path, value) -> bool: True for the Variables that `freeze` freezes.

    For differentiating only the trainable parameters, e.g.
    nnx.DiffState(0, nnx.All(nnx.Param, nnx.Not(frozen_filter(freeze)))); the optimizer must then
    be built over that same trainable subset (with config.freeze irrelevant to it).
    """
    pattern = re.compile(freeze) if freeze else None
    return lambda path, _: bool(pattern and pattern.search("/".join(map(str, path))))


def make_optimizer(config, total_updates, params):
    """config = config.optim, total_updates = optimizer updates of the run -> (tx, schedule).

    tx: optax transformation over `params` (a pytree; only its structure and paths are used). An
    nnx.State is taken as its pure dict (nnx.to_pure_dict), the form of the train state's params
    (steps.make_train_state), so tx.init / tx.update take that dict. Its updates take gradients
    for every parameter (frozen ones may be zeros). Updates with any non-finite gradient are
    skipped and counted (see `nonfinite_counts`).
    schedule: step -> lr, for logging.
    """
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    schedule = make_schedule(config.lr, config.schedule, config.warmup_steps, total_updates)
    adamw = optax.adamw(
        schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) >= 2, p),
        mu_dtype=jnp.dtype(config.mu_dtype) if config.mu_dtype else None,
    )
    clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else None
    tx = optax.chain(clip, adamw) if clip is not None else adamw
    if config.freeze:
        # Clipping sits inside the trainable branch so the global norm ignores frozen parameters.
        labels = trainable_labels(params, config.freeze)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER), schedule


def mark_nonfinite(loss, grads):
    """NaN-out every gradient when the loss is not finite, so the update is skipped and counted."""
    ok = jnp.isfinite(loss)
    return jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan).astype(g.dtype), grads)


def nonfinite_counts(opt_state):
    """opt_state of `make_optimizer`'s tx -> (skipped in a row, skipped in total), int32 scalars."""
    return (
        optax.tree_utils.tree_get(opt_state, "notfinite_count"),
        optax.tree_utils.tree_get(opt_state, "total_notfinite"),
    )
