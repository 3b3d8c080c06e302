"""One GRPO rollout: prompts -> G completions each -> host decode -> rewards -> advantages.

    examples (B) -> PromptProcessor.encode_batch -> pad to shape buckets
                 -> sampler (G per prompt, config.sampler temperature / top_k / top_p)
                 -> decode texts (special tokens skipped) -> rewards.score -> group advantages

The result is a `RolloutBatch` whose `train_arrays()` is what `steps.TrainSteps.update_grpo` takes.
Sampling and training see the same padded prompt arrays, so their log-probs are comparable.
"""

from collections.abc import Callable, Sequence

import jax
import numpy as np
from flax import struct

from vrft_jax import buckets, grpo, rewards, sharding
from vrft_jax.data.example import Example


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
    advantages: np.ndarray  # float32 [N] (times grpo.advantage_sign)
    per_reward: dict  # {name: float32 [N]} unweighted
    zero_variance: np.ndarray  # bool [B]: the G rewards of the prompt are all equal
    texts: list = struct.field(pytree_node=False)  # N decoded completions
    prompts: list = struct.field(pytree_node=False)  # B problem texts

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
        lengths = self.completion_mask.sum(axis=1)
        out = {
            "reward/total_mean": float(self.rewards.mean()),
            "reward/total_std": float(self.rewards.std()),
            "completion_length": float(lengths.mean()),
            "completion_clipped": float((self.completion_mask[:, -1] > 0).mean()),
            "zero_variance_groups": float(self.zero_variance.mean()),
        }
        out.update({f"reward/{k}": float(np.mean(v)) for k, v in self.per_reward.items()})
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
    phase = timer or (lambda name: _nullcontext())
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
        total, per_reward = rewards.score(texts, solutions, config.rewards, config.reward)
        advantages = np.asarray(grpo.group_advantages(total, G, config.grpo.advantage))
        advantages = advantages * np.float32(config.grpo.advantage_sign)
        zero_var = np.asarray(grpo.zero_variance_groups(total, G))
        if config.grpo.drop_zero_variance_groups:
            # Static shapes: the dropped groups stay in the batch with no loss (mask 0).
            keep = np.repeat(~zero_var, G)
            mask = mask * keep[:, None].astype(np.int32)
            advantages = np.where(keep, advantages, 0.0)
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
        texts=list(texts),
        prompts=[e.problem for e in examples],
    )


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
