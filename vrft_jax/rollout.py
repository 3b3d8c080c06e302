"""One GRPO rollout: prompts -> G completions each -> host decode -> rewards -> advantages.

    examples (B) -> PromptProcessor.encode_batch -> pad to shape buckets
                 -> sampler (G per prompt, config.sampler temperature / top_k / top_p)
                 -> decode texts (special tokens skipped) -> rewards.score -> group advantages

Box answers are scored in the model's frame (processor.box_frame): a pixel-frame model's boxes are
converted to the solutions' 0..1000 with each prompt's resized image size (from its patch grid).

The result is a `RolloutBatch` whose `train_arrays()` is what `steps.TrainSteps.update_grpo` takes.
Sampling and training see the same padded prompt arrays, so their log-probs are comparable.

With grpo.dynamic_sampling, `make_signal_rollout` repeats rollouts of further prompts until B groups
whose G rewards differ are found, and `gather_groups` packs those B groups into one RolloutBatch.
"""

import contextlib
from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import struct

from vrft_jax import buckets, grpo, rewards, sharding
from vrft_jax.data.example import DataError, Example
from vrft_jax.prompts import in_frame


@struct.dataclass
class RolloutBatch:
    """B prompts and N = B*G completions (rows b*G .. b*G+G-1 from prompt b)."""

    prompt_ids: np.ndarray  # int32 [B, P], left padded to a prompt bucket
    prompt_mask: np.ndarray  # int32 [B, P]
    pixel_values: np.ndarray | None  # float32 [S, 1176] or slots [I, Q, 1176] (buckets.pad_images)
    image_grid_thw: np.ndarray | None  # int32 [I, 3], padded with (0, 0, 0) rows
    completion_ids: np.ndarray  # int32 [N, C]
    completion_mask: np.ndarray  # int32 [N, C], 1 up to and including the stop token
    sampler_logps: jax.Array  # float32 [N, C], on device (split by rows as the sampler left it)
    rewards: np.ndarray  # float32 [N], weighted total
    advantages: np.ndarray  # float32 [N]
    per_reward: dict  # {name: float32 [N]} unweighted
    zero_variance: np.ndarray  # bool [B]: the G rewards of the prompt are all equal
    clipped: np.ndarray  # bool [N]: reached max_new_tokens without a stop token
    texts: list = struct.field(pytree_node=False)  # N decoded completions
    prompts: list = struct.field(pytree_node=False)  # B problem texts, as asked (model's box frame)

    def train_arrays(self) -> dict:
        arrays = {
            "prompt_ids": self.prompt_ids,
            "prompt_mask": self.prompt_mask,
            "completion_ids": self.completion_ids,
            "completion_mask": self.completion_mask,
            "advantages": self.advantages,
            "sampler_logps": self.sampler_logps,
        }
        if self.pixel_values is not None:
            arrays.update(pixel_values=self.pixel_values, image_grid_thw=self.image_grid_thw)
        return arrays

    def metrics(self) -> dict:
        """Host metrics of this rollout (reward means, lengths, zero-variance share)."""
        return rollout_metrics([self])


def rollout_metrics(rollouts: Sequence[RolloutBatch]) -> dict:
    """Host metrics over all completions of `rollouts`: reward means, completion lengths, the
    share cut off at max_new_tokens, the share of zero-variance groups, "completion_tokens" (the
    lengths' sum) and, with a format reward, "format_rate" (share with format reward > 0)."""

    def cat(get):
        return np.concatenate([get(r) for r in rollouts])

    lengths = cat(lambda r: r.completion_mask.sum(axis=1))
    rewards_total = cat(lambda r: r.rewards)
    out = {
        "reward/total_mean": float(rewards_total.mean()),
        "reward/total_std": float(rewards_total.std()),
        "completion_length": float(lengths.mean()),
        "completion_clipped": float(cat(lambda r: r.clipped).mean()),
        "zero_variance_groups": float(cat(lambda r: r.zero_variance).mean()),
        "completion_tokens": float(lengths.sum()),
    }
    for k in rollouts[0].per_reward:
        out[f"reward/{k}"] = float(cat(lambda r, k=k: r.per_reward[k]).mean())
    if "format" in rollouts[0].per_reward:
        out["format_rate"] = float(np.mean(cat(lambda r: r.per_reward["format"]) > 0))
    return out


def encode_prompts(processor, examples: Sequence[Example], config) -> dict:
    """B examples -> prompt arrays padded to the config's prompt / patch buckets, plus
    "raw_images": the unpadded (pixel_values, image_grid_thw) (None, None without images)."""
    batch = processor.encode_batch([([e.image], e.problem) for e in examples])
    length = buckets.length_bucket(batch["input_ids"].shape[1], config.input.prompt_buckets)
    ids, mask = buckets.pad_left(
        batch["input_ids"], batch["attention_mask"], length, processor.special.pad
    )
    out = {"prompt_ids": ids.astype(np.int32), "prompt_mask": mask.astype(np.int32)}
    out["pixel_values"] = out["image_grid_thw"] = None
    # The sampler pads images itself (and checks patches against the grid): give it the raw ones.
    out["raw_images"] = (None, None)
    if batch["image_grid_thw"].shape[0]:
        out["raw_images"] = (batch["pixel_values"], batch["image_grid_thw"])
        pv, grid = buckets.pad_images(
            batch["pixel_values"], batch["image_grid_thw"], config.input.patch_buckets
        )
        out.update(pixel_values=pv.astype(np.float32), image_grid_thw=grid)
    return out


def example_image_sizes(processor, prompt, num_examples: int):
    """(W, H) int [B, 2] of each example's image as the model sees it (examples hold one image
    each, see encode_prompts); None when the prompts have no images."""
    grid = prompt["raw_images"][1]
    if grid is None:
        return None
    if grid.shape[0] != num_examples:
        raise ValueError(f"{grid.shape[0]} images for {num_examples} examples (expected one each)")
    return processor.image_sizes(grid)


def make_rollout(
    generate_fn: Callable,
    processor,
    examples: Sequence[Example],
    config,
    rng,
    *,
    timer=None,
) -> RolloutBatch:
    """Sample config.grpo.G completions per example, score them, compute advantages.

    generate_fn(input_ids, attention_mask, pixel_values, image_grid_thw, *, max_new_tokens,
    num_samples, temperature, top_k, top_p, eos_token_ids, pad_token_id, rng) -> an object with
    tokens / mask / logprobs [N, C] (vrft_jax.sampler's contract, parameters already bound).
    timer: optional metrics.Timer; phases "rollout" and "reward".
    """
    G = config.grpo.G
    phase = timer or (lambda name: contextlib.nullcontext())
    with phase("rollout"):
        prompt = encode_prompts(processor, examples, config)
        out = generate_fn(
            prompt["prompt_ids"],
            prompt["prompt_mask"],
            *prompt["raw_images"],
            max_new_tokens=config.sampler.max_new_tokens,
            num_samples=G,
            temperature=config.sampler.temperature,
            top_k=config.sampler.top_k,
            top_p=config.sampler.top_p,
            eos_token_ids=processor.special.eos,
            pad_token_id=processor.special.pad,
            rng=rng,
        )
        # The host decodes and scores every row: gather tokens and mask (on a multi-host mesh the
        # rows are split over processes). The log-probs are only read on device: they stay there.
        tokens, mask = sharding.to_host((out.tokens, out.mask))
        tokens, mask = tokens.astype(np.int32), mask.astype(np.int32)
        logps = out.logprobs
    with phase("reward"):
        texts = processor.decode(tokens, mask)
        solutions = [e.solution for e in examples for _ in range(G)]
        sizes = example_image_sizes(processor, prompt, len(examples))
        total, per_reward = rewards.score(
            texts, solutions, config.rewards, config.reward, frame=processor.box_frame,
            image_sizes=None if sizes is None else np.repeat(sizes, G, axis=0),
        )  # fmt: skip
        advantages = np.asarray(grpo.group_advantages(total, G, config.grpo.advantage))
        zero_var = np.asarray(grpo.zero_variance_groups(total, G))
        # C = max_new_tokens: a completion still running in the last column was cut off, unless
        # that last token is itself a stop token.
        clipped = (mask[:, -1] > 0) & ~np.isin(tokens[:, -1], list(processor.special.eos))
    return RolloutBatch(
        prompt_ids=prompt["prompt_ids"],
        prompt_mask=prompt["prompt_mask"],
        pixel_values=prompt["pixel_values"],
        image_grid_thw=prompt["image_grid_thw"],
        completion_ids=tokens,
        completion_mask=mask,
        sampler_logps=logps,
        rewards=np.asarray(total, np.float32),
        advantages=advantages.astype(np.float32),
        per_reward={k: np.asarray(v, np.float32) for k, v in per_reward.items()},
        zero_variance=zero_var,
        clipped=clipped,
        texts=list(texts),
        prompts=[in_frame(e.problem, processor.box_frame) for e in examples],
    )


# ---- DAPO dynamic sampling -----------------------------------------------------------------------


def make_signal_rollout(
    generate_fn: Callable,
    processor,
    examples: Sequence[Example],
    next_examples: Callable[[], Sequence[Example]],
    config,
    rng,
    *,
    timer=None,
) -> tuple[RolloutBatch, dict]:
    """A rollout of B = len(examples) groups whose G rewards are not all equal (DAPO).

    A zero-variance group has zero advantages, so no gradient. Rolls out `examples`, keeps the
    groups with signal, and rolls out next_examples() (the next B prompts of the same data
    iterator, so a checkpoint's data position covers them) until B such groups are found; at most
    config.grpo.max_sampling_tries rollouts. Try 0 samples with `rng` (the completions a step
    without dynamic sampling would get), try k with fold_in(rng, k).

    Returns (the first B signal groups in sampling order, metrics): the metrics describe every
    completion sampled this step (rollout_metrics), plus "dynamic_sampling/tries",
    "dynamic_sampling/groups_sampled", "dynamic_sampling/groups_with_signal" and
    "dynamic_sampling/groups_kept". Raises DataError when the tries run out.
    """
    B, max_tries = len(examples), int(config.grpo.max_sampling_tries)
    if max_tries < 1:
        raise ValueError(f"grpo.max_sampling_tries={max_tries}: need at least 1")
    rollouts, kept = [], []  # kept: (rollout, group index, example)
    while True:
        key = rng if not rollouts else jax.random.fold_in(rng, len(rollouts))
        r = make_rollout(generate_fn, processor, examples, config, key, timer=timer)
        rollouts.append(r)
        kept += [(r, int(b), examples[b]) for b in np.flatnonzero(~r.zero_variance)]
        if len(kept) >= B:
            break
        if len(rollouts) == max_tries:
            raise DataError(
                f"grpo.dynamic_sampling: {len(rollouts)} rollouts of {B} prompts "
                f"(grpo.max_sampling_tries={max_tries}) found only {len(kept)} of the "
                f"{B} groups (input.batch_size) whose {config.grpo.G} rewards differ; every other "
                "group scored the same on all its samples. Raise grpo.max_sampling_tries, or "
                "set grpo.dynamic_sampling=False, or check that the rewards can tell the "
                "samples apart (config.rewards, sampler.temperature)."
            )
        examples = next_examples()
    metrics = rollout_metrics(rollouts)
    metrics.update({
        "dynamic_sampling/tries": float(len(rollouts)),
        "dynamic_sampling/groups_sampled": float(B * len(rollouts)),
        "dynamic_sampling/groups_with_signal": float(len(kept)),
        "dynamic_sampling/groups_kept": float(B),
    })  # fmt: skip
    return gather_groups(kept[:B], processor, config), metrics


def gather_groups(groups, processor, config) -> RolloutBatch:
    """[(rollout, group index b, example)] -> one RolloutBatch of those groups, in that order.

    The prompts are encoded again as one batch (their padding to a prompt / patch bucket may
    differ from the rollouts' own; left padding leaves the log-probs unchanged up to float
    rounding, which the logprob_gap metrics show).
    """
    G = config.grpo.G
    prompt = encode_prompts(processor, [e for _, _, e in groups], config)

    def rows(get):
        return np.concatenate([get(r)[b * G : (b + 1) * G] for r, b, _ in groups])

    # The log-probs of each rollout on the host, gathered once (every process, same order): the
    # kept rows come from several rollouts.
    sources = list({id(r): r for r, _, _ in groups}.values())
    host_logps = dict(zip(map(id, sources), sharding.to_host([r.sampler_logps for r in sources])))

    return RolloutBatch(
        prompt_ids=prompt["prompt_ids"],
        prompt_mask=prompt["prompt_mask"],
        pixel_values=prompt["pixel_values"],
        image_grid_thw=prompt["image_grid_thw"],
        completion_ids=rows(lambda r: r.completion_ids),
        completion_mask=rows(lambda r: r.completion_mask),
        sampler_logps=rows(lambda r: host_logps[id(r)]),
        rewards=rows(lambda r: r.rewards),
        advantages=rows(lambda r: r.advantages),
        per_reward={k: rows(lambda r, k=k: r.per_reward[k]) for k in groups[0][0].per_reward},
        zero_variance=np.array([r.zero_variance[b] for r, b, _ in groups]),
        clipped=rows(lambda r: r.clipped),
        texts=[t for r, b, _ in groups for t in r.texts[b * G : (b + 1) * G]],
        prompts=[in_frame(e.problem, processor.box_frame) for _, _, e in groups],
    )
