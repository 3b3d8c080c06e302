"""Held-out evaluation during a run: the config's evaluators with greedy decoding, the held-out
mean of each reward, and optionally the expected reward under the sampling policy.

Each evaluation writes its evaluators' files into `<workdir>/eval/<tag>/` and returns a flat
{metric: float} dict (vrft_jax.results records it in results.json). Boxes are read in the model's
frame (processor.box_frame) and scored against the 0..1000 ground truth, as in training.
"""

import os

import jax
import numpy as np
from tqdm import tqdm

from vrft_jax import rewards, sharding
from vrft_jax.evals import make_evaluators
from vrft_jax.evals.common import answer_size
from vrft_jax.evals.predict import make_predict_fn


class EvaluationStopped(Exception):
    """A stop was requested (SIGTERM) during an evaluation; it is redone when the run resumes."""


def run_evals(config, workdir, processor, generate, tag, *, should_stop=None) -> dict:
    """The config's evaluators with greedy decoding, plus the held-out mean of each reward.

    generate: the sampler bound to the evaluated params (train.make_generate_fn).
    should_stop: called before each batch; True raises EvaluationStopped.
    """

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
        if should_stop is not None and should_stop():
            raise EvaluationStopped(tag)
        texts = base(examples)
        seen.extend((e, t) for e, t in zip(examples, texts))
        return texts

    metrics = {}
    out_dir = os.path.join(workdir, "eval", tag)
    frame = processor.box_frame
    for evaluator in make_evaluators(
        config, out_dir, box_frame=frame, resized_size=processor.resized_size
    ):
        metrics.update(evaluator.run(predict))
    if seen:
        examples, texts = zip(*seen)
        solutions = [e.solution for e in examples]
        sizes = [answer_size(e, frame, processor.resized_size) for e in examples]
        total, per = rewards.score(
            texts, solutions, config.rewards, config.reward, frame=frame, image_sizes=sizes
        )
        metrics["reward/total_mean"] = float(np.mean(total))
        metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in per.items()})
        if config.eval.num_samples > 0:
            metrics.update(
                sampled_reward(config, processor, generate, examples, should_stop=should_stop)
            )
    return {k: float(v) for k, v in metrics.items()}


def sampled_reward(config, processor, generate, examples, *, should_stop=None) -> dict:
    """Held-out expected reward under the sampling policy (what GRPO maximises): each held-out
    prompt gets config.eval.num_samples completions at config.sampler's temperature / top-k /
    top-p. The RNG is fixed per batch, so evaluations of different parameters are comparable."""
    k, size = config.eval.num_samples, config.eval.batch_size
    texts, solutions, sizes = [], [], []
    show = jax.process_index() == 0
    for i in tqdm(
        range(0, len(examples), size), desc="eval sampled", unit="batch", disable=not show
    ):
        if should_stop is not None and should_stop():
            raise EvaluationStopped("sampled")
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
        sizes += [size for size in processor.image_sizes(batch["image_grid_thw"]) for _ in range(k)]
    total, per = rewards.score(
        texts, solutions, config.rewards, config.reward, frame=processor.box_frame,
        image_sizes=sizes,
    )  # fmt: skip
    out = {"sampled/total_mean": float(np.mean(total))}
    out.update({f"sampled/{name}": float(np.mean(v)) for name, v in per.items()})
    return out
