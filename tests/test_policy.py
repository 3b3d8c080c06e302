"""policy.completion_logprobs equals the full forward of prompt + completion (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrft_jax import buckets, grpo, policy
from vrft_jax.inputs import PromptProcessor
from vrft_jax.models import random_qwen2_vl

G, C = 2, 5


@pytest.fixture(scope="module")
def processor(tokenizer_dir):
    return PromptProcessor(tokenizer_dir, min_pixels=3136, max_pixels=20000)


def _examples():
    rng = np.random.default_rng(0)
    image = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    # Different image sizes and counts -> different prompt lengths -> left padding.
    return [([image(56, 84)], "What is it?"), ([image(112, 56), image(28, 60)], "And these two?")]


def test_completion_logprobs_match_full_forward(processor):
    model = random_qwen2_vl("tiny", seed=3)
    examples = _examples()
    prompts = processor.encode_batch(examples)
    assert (prompts["attention_mask"] == 0).any(), "the test needs a left-padded prompt"
    B = len(examples)
    rng = np.random.default_rng(1)
    completions = rng.integers(0, 151000, (B * G, C)).astype(np.int32)
    completions[0, 2] = processor.special.im_end  # a stop token mid-row changes nothing here

    pv, grid = buckets.pad_images(prompts["pixel_values"], prompts["image_grid_thw"])
    logp, ent = jax.jit(
        lambda ids, mask, pv, grid, comp: policy.completion_logprobs(
            model, ids, mask, pv, grid, comp, with_entropy=True
        )
    )(prompts["input_ids"], prompts["attention_mask"], pv, grid, completions)
    assert logp.shape == ent.shape == (B * G, C)

    # Reference: the model's own forward over G copies of each prompt followed by its completion.
    full = processor.encode_batch([e for e in examples for _ in range(G)])
    P = full["input_ids"].shape[1]
    ids = np.concatenate([full["input_ids"], completions], axis=1)
    mask = np.concatenate([full["attention_mask"], np.ones_like(completions)], axis=1)
    logits = model(ids, mask, full["pixel_values"], full["image_grid_thw"])
    want_logits = logits[:, P - 1 : P + C - 1]
    want = grpo.token_logprobs(want_logits, jnp.asarray(completions))
    np.testing.assert_allclose(np.asarray(logp), np.asarray(want), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        np.asarray(ent), np.asarray(grpo.entropy(want_logits)), atol=1e-4, rtol=0
    )
    # Not trivially equal: the two prompts give different log-probs for the same tokens.
    assert np.abs(np.asarray(logp[0] - logp[2])).max() > 1e-4
