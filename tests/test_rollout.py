"""Rollouts on the host with a scripted sampler: completion_clipped, and DAPO dynamic sampling
(grpo.dynamic_sampling) filling a batch from the real data pipeline.

The sampler is replaced by a function that writes chosen texts as tokens (real tokenizer, real
image processor, real rewards), so which groups carry signal is known exactly.
"""

import jax
import numpy as np
import pytest

from configs import demo
from vrft_jax import rollout
from vrft_jax.data.example import DataError, Example
from vrft_jax.data.pipeline import Pipeline
from vrft_jax.inputs import PromptProcessor

B, G, C = 4, 3, 24


def make_config(**grpo):
    c = demo.get_config()  # rewards format + classification, 56 px images
    c.input.batch_size, c.grpo.G, c.sampler.max_new_tokens = B, G, C
    c.grpo.update(grpo)
    return c


@pytest.fixture(scope="module")
def processor():
    return PromptProcessor.from_config(make_config())


def shapes_examples(answers):
    """One example per answer; the image is a flat gray square (its content does not matter)."""
    image = np.full((56, 56, 3), 128, np.uint8)
    return [
        Example(
            image=image,
            problem=f"Which shape? ({i})",
            task="classification",
            solution=f"<answer>{a}</answer>",
            example_id=str(i),
        )  # fmt: skip
        for i, a in enumerate(answers)
    ]


class ScriptedSampler:
    """generate_fn whose sample g of every prompt is texts[g] followed by <|im_end|>, or the
    token rows given in `rows` [N, C] as they are; counts its calls and keeps their rngs."""

    def __init__(self, processor, texts=None, rows=None):
        self.processor, self.texts, self.rows, self.rngs = processor, texts, rows, []

    def __call__(self, input_ids, attention_mask, pixel_values, image_grid_thw, **kw):
        assert kw["num_samples"] == G and kw["max_new_tokens"] == C
        self.rngs.append(kw["rng"])
        N = np.asarray(input_ids).shape[0] * G
        if self.rows is not None:
            tokens = np.asarray(self.rows, np.int32)
        else:
            pad, end = self.processor.special.pad, self.processor.special.im_end
            tokens = np.full((N, C), pad, np.int32)
            for i in range(N):
                ids = self.processor.tokenizer.encode(self.texts[i % G]) + [end]
                tokens[i, : len(ids)] = ids
        mask = np.cumsum(np.isin(tokens, self.processor.special.eos), axis=1)
        mask = (mask == 0) | ((mask == 1) & np.isin(tokens, self.processor.special.eos))
        return type("Out", (), dict(tokens=tokens, mask=mask, logprobs=-np.ones((N, C))))


def test_completion_clipped_only_without_a_stop_token(processor):
    eos, pad = processor.special.im_end, processor.special.pad
    word = processor.tokenizer.encode("circle")[0]
    rows = np.full((G, C), word, np.int32)
    rows[0, -1] = eos  # stops exactly in the last column: complete, not clipped
    rows[1, 5], rows[1, 6:] = eos, pad  # stops early
    # row 2: runs to max_new_tokens without a stop token: clipped
    out = rollout.make_rollout(
        ScriptedSampler(processor, rows=rows), processor, shapes_examples(["circle"]),
        make_config(), rng=0,
    )  # fmt: skip
    np.testing.assert_array_equal(out.completion_mask.sum(1), [C, 6, C])
    np.testing.assert_array_equal(out.clipped, [False, False, True])
    assert out.metrics()["completion_clipped"] == pytest.approx(1 / 3)


# Sample 0 answers "circle", the others "square": a prompt whose answer is circle gets rewards
# (2, 1, 1) (signal), one whose answer is triangle gets (1, 1, 1) (no signal).
TEXTS = ["<think>x</think><answer>circle</answer>"] + [
    "<think>x</think><answer>square</answer>"
] * 2


def data_iterator(answers):
    """The trainer's kind of data iterator (grain Pipeline, source order) over `answers`."""
    pipeline = Pipeline(
        shapes_examples(answers), batch_size=B, seed=None, num_epochs=None, num_workers=1,
        drop_remainder=True, process_index=0, process_count=1,
    )  # fmt: skip
    return iter(pipeline)


def test_dynamic_sampling_fills_the_batch_with_signal_groups(processor):
    # Half the prompts (triangle) always score the same: the signal groups are circles.
    answers = ["circle", "triangle", "triangle", "circle", "triangle", "circle", "triangle",
               "triangle", "circle", "circle", "triangle", "circle"]  # fmt: skip
    it = data_iterator(answers)
    sampler = ScriptedSampler(processor, TEXTS)
    config = make_config(dynamic_sampling=True, max_sampling_tries=3)
    rng = jax.random.key(7)
    batch, metrics = rollout.make_signal_rollout(
        sampler, processor, next(it), lambda: next(it), config, rng
    )
    # Signal groups by try: 2 (ids 0, 3), 1 (id 5), 2 (ids 8, 9; 11 is surplus): 3 tries.
    assert [p[-3:] for p in batch.prompts] == ["(0)", "(3)", "(5)", "(8)"]
    assert metrics["dynamic_sampling/tries"] == 3
    assert metrics["dynamic_sampling/groups_sampled"] == 3 * B
    assert metrics["dynamic_sampling/groups_with_signal"] == 6
    assert metrics["dynamic_sampling/groups_kept"] == B
    assert len(sampler.rngs) == 3 and sampler.rngs[0] is rng  # try 0 uses the step's rng
    # The batch: B groups of G, all with signal, rows in group order, prompts encoded together.
    assert batch.completion_ids.shape == (B * G, C) and batch.prompt_ids.shape[0] == B
    assert not batch.zero_variance.any()
    np.testing.assert_array_equal(batch.rewards, np.tile([2.0, 1.0, 1.0], B))
    assert np.all(batch.advantages[0::G] > 0) and np.all(batch.advantages[1::G] < 0)
    assert batch.texts[:G] == TEXTS
    assert batch.image_grid_thw.shape[0] >= B and batch.pixel_values is not None
    # The metrics describe every sampled completion (12 groups, 6 without signal).
    assert metrics["zero_variance_groups"] == pytest.approx(0.5)
    assert metrics["reward/total_mean"] == pytest.approx((6 * 4 + 6 * 3) / 36)
    assert metrics["completion_tokens"] == 3 * batch.completion_mask.sum()  # same texts each try
    # The data position moved by exactly the prompts used: the next batch is ids 12.. = 0..3.
    assert [e.example_id for e in next(it)] == ["0", "1", "2", "3"]


def test_dynamic_sampling_without_signal_names_the_setting(processor):
    it = data_iterator(["triangle"] * 8)
    config = make_config(dynamic_sampling=True, max_sampling_tries=2)
    with pytest.raises(DataError) as failure:
        rollout.make_signal_rollout(
            ScriptedSampler(processor, TEXTS), processor, next(it), lambda: next(it), config,
            jax.random.key(0),
        )  # fmt: skip
    message = str(failure.value)
    assert "grpo.max_sampling_tries=2" in message and "found only 0 of the 4 groups" in message
    assert "grpo.dynamic_sampling" in message
