"""Jitted train steps: GRPO update, SFT update, and (reference / old) log-probs.

Train state: a plain pytree {"params": pure dict, "opt_state", "step": int32}; the params are
`nnx.split(model, nnx.Param)[1].to_pure_dict()` and `graphdef` is static. "step" counts optimizer
updates (config.grpo.mu per GRPO rollout step).

Batches (numpy on the host, placed by `place_batch`):
  prompt side, replicated:  prompt_ids / prompt_mask int32 [B, P] (left padded),
                            pixel_values float32 [S, 1176] packed or [I, Q, 1176] per-image slots,
                            image_grid_thw int32 [I, 3] (from vrft_jax.buckets.pad_images; both
                            absent for text-only prompts)
  sequence side, split over (data, fsdp): completion_ids int32 [N, C], completion_mask [N, C]
                            and, GRPO only, advantages [N], sampler_logps [N, C], ref_logps [N, C]
                            (when beta != 0), old_logps [N, C] (when mu > 1), policy_logps
                            [N, C] (the current params' log-probs from `sequence_logprobs`;
                            optional, see grpo_loss_and_grads)
N = B*G (SFT: G = 1). Gradient accumulation: the N sequences are cut into micro-batches of
`micro_batch_size` (row m of micro-batch k is sequence m * num_micro + k, so each device keeps its
own rows) and a lax.scan sums their gradients. The images are encoded ONCE per step, outside the
scan: the scan also accumulates the gradient with respect to the image features, and one
vision-tower VJP at the end turns it into parameter gradients (jax.vjp). So the vision tower runs
forward and backward once per step, whatever the number of micro-batches.

Mixed precision: params (master weights) and the AdamW state stay in their stored dtype (float32
by default); each step casts them ONCE to the model's compute dtype (policy.cast_params, inside
the jitted program, so the copy lives only during the step), runs forward and backward on that
copy, and sums the micro-batch gradients in the master dtype. Reference and old-policy log-probs
(`sequence_logprobs`) take the same cast, so equal weights give bit-identical log-probs.

LoRA (config.lora.rank > 0, vrft_jax/lora.py): the state's params are the adapters only (float32
masters, their AdamW moments, their gradients); the frozen base (compute dtype or int8) is a
separate, non-donated argument `base` of every jitted program, and the forward runs on
`lora.attach(base, adapters)`. Reference log-probs with adapters off: `logprobs({}, batch)`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vrft_jax import grpo, lora, optim, sharding
from vrft_jax.policy import cast_params, encode_images, prompt_layout, rows_logprobs

PROMPT_KEYS = ("prompt_ids", "prompt_mask", "pixel_values", "image_grid_thw")


def _micro(x, num_micro):
    """[N, ...] -> [num_micro, N / num_micro, ...]; micro-batch k holds rows k, k + num_micro..."""
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)


def num_micro_batches(N, micro_batch_size):
    size = min(int(micro_batch_size), N) if micro_batch_size > 0 else N
    if N % size:
        raise ValueError(f"micro_batch_size={micro_batch_size} does not divide the {N} sequences")
    return N // size


def micro_batch_setup(graphdef, params, batch, micro_batch_size):
    """What every micro-batched forward of a batch shares.

    Returns (layout: policy.prompt_layout of the B prompts, rows int32 [num_micro, N / num_micro]:
    each micro-batch's prompt index per sequence, num_micro).
    """
    config = graphdef_config(graphdef, params)
    B, N = batch["prompt_ids"].shape[0], batch["completion_ids"].shape[0]
    num_micro = num_micro_batches(N, micro_batch_size)
    layout = prompt_layout(
        config, batch["prompt_ids"], batch["prompt_mask"], batch.get("image_grid_thw")
    )
    rows = jnp.arange(N, dtype=jnp.int32) // (N // B)
    return layout, _micro(rows, num_micro), num_micro


def model_params(params, frozen):
    """The model's params pytree from the trained `params`: themselves, or with LoRA
    (frozen = (base, spec)) the base with the adapters `params` attached."""
    if frozen is None:
        return params
    base, spec = frozen
    return lora.attach(base, params, spec)


def accumulate(graphdef, params, batch, micro_loss, micro_batch_size, max_keys=(), frozen=None):
    """Sum over micro-batches of micro_loss(logp, entropy, micro_batch) -> (loss, aux), and grads.

    micro_loss returns (scalar, {name: scalar}); its aux values are summed over micro-batches,
    except those named in `max_keys`, whose maximum is taken. frozen: None, or (base, LoraSpec)
    when `params` are LoRA adapters.
    Returns (loss, aux, grads); grads in the dtype of `params` (the master weights).
    """
    full = model_params(params, frozen)
    layout, rows, num_micro = micro_batch_setup(graphdef, full, batch, micro_batch_size)
    compute = graphdef_config(graphdef, full).compute_dtype
    master = params
    # Forward and backward on the compute-dtype copy; d(cast)/d(master) is the identity, so its
    # gradients are the master weights' gradients (upcast before they are summed). With LoRA only
    # the adapters are differentiated; the base is a constant of the step.
    params = cast_params(params, compute)
    seq = {k: v for k, v in batch.items() if k not in PROMPT_KEYS}
    xs = jax.tree.map(lambda x: _micro(x, num_micro), seq)
    xs["rows"] = rows
    has_images = batch.get("pixel_values") is not None

    def encode(p):
        p = model_params(p, frozen)
        return encode_images(graphdef, p, batch["pixel_values"], batch["image_grid_thw"])

    feats, feats_vjp = jax.vjp(encode, params) if has_images else (None, None)

    def loss_fn(p, f, mb):
        logp, ent = rows_logprobs(
            graphdef, model_params(p, frozen), batch["prompt_ids"], batch["prompt_mask"], layout, f,
            mb["completion_ids"], mb["rows"], with_entropy=True,
        )  # fmt: skip
        return micro_loss(logp, ent, mb)

    zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731

    def body(carry, mb):
        loss_acc, aux_acc, g_acc, f_acc = carry
        argnums = (0, 1) if has_images else 0
        (loss, aux), g = jax.value_and_grad(loss_fn, argnums, has_aux=True)(params, feats, mb)
        g, fg = g if has_images else (g, None)
        g_acc = jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), g_acc, g)
        f_acc = None if fg is None else f_acc + fg.astype(f_acc.dtype)
        aux_acc = {
            k: jnp.maximum(aux_acc[k], v) if k in max_keys else aux_acc[k] + v
            for k, v in aux.items()
        }
        return (loss_acc + loss, aux_acc, g_acc, f_acc), None

    aux_shape = jax.eval_shape(lambda: loss_fn(params, feats, jax.tree.map(lambda x: x[0], xs))[1])
    init = (
        jnp.zeros((), jnp.float32),
        {
            k: jnp.full(a.shape, -jnp.inf if k in max_keys else 0, a.dtype)
            for k, a in aux_shape.items()
        },
        zeros(master),  # sums in the master dtype, not the compute dtype
        jnp.zeros(feats.shape, jnp.float32) if has_images else None,
    )
    (loss, aux, grads, feat_grad), _ = jax.lax.scan(body, init, xs)
    if has_images:
        vision_grads = feats_vjp(feat_grad.astype(feats.dtype))[0]
        grads = jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), grads, vision_grads)
    return loss, aux, grads


def graphdef_config(graphdef, params):
    return nnx.merge(graphdef, params).config


# ---- GRPO ---------------------------------------------------------------------------------------


def grpo_loss_and_grads(graphdef, params, batch, g, frozen=None):
    """GRPO loss, token-mean metrics and gradients of one rollout batch. g = config.grpo.

    With batch["policy_logps"] (the same params' log-probs from the log-prob program, which also
    gives the reference and old log-probs) the loss takes its log-prob VALUES from there and only
    the gradient from this program's forward. XLA compiles a forward that feeds a backward with
    other fusions and layouts than a plain forward, so the two round differently (float32: up to
    ~30 ulps of a log-prob); taking the values from one program makes the step-0 KL exactly 0
    and the first update's ratio exactly 1 (train.grpo_updates).
    """
    mask = batch["completion_mask"].astype(jnp.float32)
    N, C = mask.shape
    num_tokens = mask.sum()
    use_old = "old_logps" in batch
    use_values = "policy_logps" in batch

    def micro_loss(logp, ent, mb):
        if use_values:  # value: the log-prob program's; gradient: this forward's (x - x == 0)
            logp = jax.lax.stop_gradient(mb["policy_logps"]) + (logp - jax.lax.stop_gradient(logp))
        m = mb["completion_mask"]
        old = mb["old_logps"] if use_old else jax.lax.stop_gradient(logp)
        ref = mb.get("ref_logps")
        loss, aux = grpo.grpo_loss(
            logp, old, ref, mb["advantages"], m,
            beta=g.beta, epsilon_low=g.epsilon, epsilon_high=g.epsilon_high,
            kl_estimator=g.kl_estimator, aggregation=g.loss_aggregation,
            max_len=C, num_sequences=N, num_tokens=num_tokens,
        )  # fmt: skip
        tokens = m.astype(jnp.float32).sum()
        # Token-weighted sums; divided by the batch's token count after the scan.
        sums = {k: aux[k] * tokens for k in ("kl", "clip_fraction", "ratio")}
        sums["clip_low_fraction"] = aux["clip_low_fraction"] * tokens
        sums["clip_high_fraction"] = aux["clip_high_fraction"] * tokens
        sums["entropy"] = grpo.masked_mean(jax.lax.stop_gradient(ent), m) * tokens
        sums["pg_loss"] = aux["pg_loss"]
        gap = grpo.logprob_gap(mb["sampler_logps"], jax.lax.stop_gradient(logp), m)
        sums["logprob_gap_mean_abs"] = gap["logprob_gap_mean_abs"] * tokens
        sums["logprob_gap_max_abs"] = gap["logprob_gap_max_abs"]  # max over micro-batches
        return loss, sums

    not_means = ("pg_loss", "logprob_gap_max_abs")
    loss, sums, grads = accumulate(
        graphdef, params, batch, micro_loss, g.micro_batch_size, max_keys=not_means[1:],
        frozen=frozen,
    )  # fmt: skip
    denom = jnp.maximum(num_tokens, 1.0)
    metrics = {k: v / denom for k, v in sums.items() if k not in not_means}
    metrics.update({k: sums[k] for k in not_means})
    metrics["loss"] = loss
    return loss, metrics, grads


def apply_update(tx, schedule, state, loss, grads, metrics):
    """Optax update; a non-finite loss or gradient leaves the params unchanged and is counted."""
    grads = optim.mark_nonfinite(loss, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    in_row, total = optim.nonfinite_counts(opt_state)
    metrics = dict(metrics)
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        lr=schedule(state["step"]),
        nonfinite_in_row=in_row,
        nonfinite_total=total,
    )
    new_state = dict(state, params=params, opt_state=opt_state, step=state["step"] + 1)
    return new_state, metrics


def grpo_update(graphdef, tx, schedule, g, state, batch, base=None, spec=None):
    frozen = None if spec is None else (base, spec)
    loss, metrics, grads = grpo_loss_and_grads(graphdef, state["params"], batch, g, frozen)
    return apply_update(tx, schedule, state, loss, grads, metrics)


# ---- SFT ----------------------------------------------------------------------------------------


def sft_loss_and_grads(graphdef, params, batch, micro_batch_size, frozen=None):
    """Token-mean cross-entropy on the answer tokens (completion_mask), and its gradients."""
    num_tokens = batch["completion_mask"].astype(jnp.float32).sum()

    def micro_loss(logp, ent, mb):
        m = mb["completion_mask"].astype(jnp.float32)
        loss = -jnp.sum(logp * m) / jnp.maximum(num_tokens, 1.0)
        return loss, {"entropy": jnp.sum(jax.lax.stop_gradient(ent) * m)}

    loss, sums, grads = accumulate(
        graphdef, params, batch, micro_loss, micro_batch_size, frozen=frozen
    )
    metrics = {"loss": loss, "entropy": sums["entropy"] / jnp.maximum(num_tokens, 1.0)}
    return loss, metrics, grads


def sft_update(graphdef, tx, schedule, micro_batch_size, state, batch, base=None, spec=None):
    frozen = None if spec is None else (base, spec)
    loss, metrics, grads = sft_loss_and_grads(
        graphdef, state["params"], batch, micro_batch_size, frozen
    )
    return apply_update(tx, schedule, state, loss, grads, metrics)


# ---- Log-probs only (reference model, old policy) -----------------------------------------------


def sequence_logprobs(graphdef, params, batch, micro_batch_size, base=None, spec=None):
    """logp [N, C] of the batch's completions under `params` (no gradients), micro-batched.

    params in any dtype: cast to the compute dtype first, as the train step does. With LoRA
    (spec given) params are adapters ({} = adapters off: the base model)."""
    frozen = None if spec is None else (base, spec)
    compute = graphdef_config(graphdef, model_params(params, frozen)).compute_dtype
    params = model_params(cast_params(params, compute), frozen)
    layout, rows, num_micro = micro_batch_setup(graphdef, params, batch, micro_batch_size)
    feats = None
    if batch.get("pixel_values") is not None:
        feats = encode_images(graphdef, params, batch["pixel_values"], batch["image_grid_thw"])
    xs = (_micro(batch["completion_ids"], num_micro), rows)

    def one(mb):
        ids, r = mb
        logp, _ = rows_logprobs(
            graphdef, params, batch["prompt_ids"], batch["prompt_mask"], layout, feats, ids, r
        )
        return logp

    logp = jax.lax.map(one, xs)  # [num_micro, N / num_micro, C]
    return jnp.swapaxes(logp, 0, 1).reshape(batch["completion_ids"].shape[0], -1)


# ---- Placement and jitting ----------------------------------------------------------------------


def place_batch(batch, mesh):
    """Host arrays -> device arrays: prompt side replicated, sequence side split over the batch.

    Images in the per-image slots layout [I, Q, 1176] are split over the batch axes too when I
    divides by them: each device then runs the vision tower (forward and VJP) on its own images
    only, instead of every device encoding every image.
    """
    prompt = {k: v for k, v in batch.items() if k in PROMPT_KEYS and v is not None}
    seq = {k: v for k, v in batch.items() if k not in PROMPT_KEYS}
    pixels = prompt.get("pixel_values")
    split_images = (
        pixels is not None and pixels.ndim == 3 and pixels.shape[0] % sharding.batch_ways(mesh) == 0
    )
    if split_images:
        pixels = np.asarray(pixels)  # every process holds all images: each takes its devices' part
        by_image = sharding.batch_sharding(mesh)
        prompt.pop("pixel_values")
    placed = jax.device_put(prompt, sharding.replicated(mesh))
    if split_images:
        placed["pixel_values"] = jax.make_array_from_callback(
            pixels.shape, by_image, lambda index: pixels[index]
        )
    # Every process holds the whole step batch (identical prompts everywhere, as the replicated
    # prompt arrays require); each contributes its own slice of the sequence rows.
    # Device arrays (the sampler's log-probs, already split by rows) stay on device.
    on_device = {k: v for k, v in seq.items() if isinstance(v, jax.Array)}
    placed.update({k: sharding.to_batch_sharding(v, mesh) for k, v in on_device.items()})
    pi, pc = jax.process_index(), jax.process_count()
    seq = {k: v for k, v in seq.items() if k not in on_device}
    seq = {k: v[v.shape[0] * pi // pc : v.shape[0] * (pi + 1) // pc] for k, v in seq.items()}
    placed.update(sharding.shard_batch(seq, mesh))
    return placed


def opt_state_shardings(tx, params, param_shardings, mesh):
    """Shardings of tx.init(params): each Adam moment as its parameter (found by its key path,
    which ends with the parameter's), counters and the rest replicated.

    Without this, jit(tx.init) leaves the zero moments unconstrained and XLA replicates them:
    under FSDP every device would hold both full float32 moments.
    """
    by_path = {
        path: s for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)
    }  # fmt: skip
    shapes = dict(jax.tree_util.tree_leaves_with_path(params))
    replicated = sharding.replicated(mesh)

    def find(path, leaf):
        for start in range(len(path)):
            tail = path[start:]
            if tail in by_path and tuple(shapes[tail].shape) == tuple(leaf.shape):
                return by_path[tail]
        return replicated

    abstract = jax.eval_shape(tx.init, params)
    return jax.tree_util.tree_map_with_path(find, abstract)


def make_train_state(params_state, tx, mesh, rules):
    """nnx.State of the model's Params -> (train state placed on `mesh`, its shardings)."""
    shardings = nnx.to_pure_dict(sharding.param_shardings(params_state, mesh, rules))
    # A copy (may_alias=False): the state is donated every step, the model's arrays must survive.
    params = jax.device_put(nnx.to_pure_dict(params_state), shardings, may_alias=False)
    replicated = sharding.replicated(mesh)
    # Moments follow their parameter's sharding, everything else is replicated, so the state's
    # shardings equal the update's out_shardings (otherwise the second step compiles again).
    opt_shardings = opt_state_shardings(tx, params, shardings, mesh)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = {
        "params": params,
        "opt_state": opt_state,
        "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
    }
    return state, jax.tree.map(lambda x: x.sharding, state)


class TrainSteps:
    """The jitted programs of one run (graphdef, optimizer and config are fixed at build time).

    update_grpo(state, batch) / update_sft(state, batch) -> (state, metrics); the state is donated.
    logprobs(params, batch) -> logp [N, C] (reference with the frozen params, or old log-probs).
    lora_run: model_setup.LoraRun for a LoRA run (its base is passed to every program, its spec
    bound into them); then params are adapters and logprobs({}, batch) is the base model's.
    """

    def __init__(self, graphdef, config, tx, schedule, state_shardings=None, lora_run=None):
        self.compiles = 0
        self.lora_run = lora_run
        g, mbs = config.grpo, config.sft.micro_batch_size
        out = None if state_shardings is None else (state_shardings, None)
        spec = None if lora_run is None else lora_run.spec
        self.update_grpo_jit = jax.jit(
            self._counted(functools.partial(grpo_update, graphdef, tx, schedule, g, spec=spec)),
            donate_argnums=0,
            out_shardings=out,
        )
        self.update_sft_jit = jax.jit(
            self._counted(functools.partial(sft_update, graphdef, tx, schedule, mbs, spec=spec)),
            donate_argnums=0,
            out_shardings=out,
        )
        self._logprobs = jax.jit(
            self._counted(functools.partial(sequence_logprobs, graphdef, spec=spec)),
            static_argnums=2,
        )
        self.grpo_micro_batch_size = g.micro_batch_size

    @property
    def base(self):
        return None if self.lora_run is None else self.lora_run.base

    def update_grpo(self, state, batch):
        return self.update_grpo_jit(state, batch, self.base)

    def update_sft(self, state, batch):
        return self.update_sft_jit(state, batch, self.base)

    def logprobs(self, params, batch):
        batch = {k: v for k, v in batch.items() if k in PROMPT_KEYS or k == "completion_ids"}
        return self._logprobs(params, batch, int(self.grpo_micro_batch_size), self.base)

    def _counted(self, fn):
        def traced(*args, **kwargs):
            self.compiles += 1  # runs once per trace, i.e. per compile
            return fn(*args, **kwargs)

        return traced


def host_metrics(metrics):
    """Device metrics -> Python floats, on every process (one gather)."""
    return {k: float(v) for k, v in sharding.to_host(metrics).items()}
