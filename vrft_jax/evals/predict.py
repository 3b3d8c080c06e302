"""`predict_fn` for the evaluators: examples -> prompts -> greedy generation -> completion texts.

The evaluators only need `predict_fn(examples) -> list[str]`. This builds one from the prompt
processor (vrft_jax.inputs) and a generation function, so the trainer passes its sampler and
tests pass a fake.
"""

from collections.abc import Callable, Sequence

from vrft_jax.data.example import Example


def make_predict_fn(
    processor,
    generate_fn: Callable[..., tuple],
    *,
    system_prompt: str | None = None,
) -> Callable[[Sequence[Example]], list[str]]:
    """predict_fn from a `PromptProcessor` and `generate_fn`.

    generate_fn(input_ids [B, T], attention_mask [B, T], pixel_values [S, 1176],
    image_grid_thw [I, 3]) -> (tokens [B, C], mask [B, C]) of the completions.
    """

    def predict(examples: Sequence[Example]) -> list[str]:
        batch = processor.encode_batch(
            [([e.image], e.problem) for e in examples], system_prompt=system_prompt
        )
        tokens, mask = generate_fn(**batch)
        if hasattr(tokens, "is_fully_addressable"):  # jax.Arrays, maybe split over hosts
            from vrft_jax import sharding

            tokens, mask = sharding.to_host((tokens, mask))
        return processor.decode(tokens, mask)

    return predict


def greedy_generate_fn(model, *, max_new_tokens: int, **sampler_kwargs):
    """generate_fn over vrft_jax.sampler.generate with temperature 0 (greedy decoding)."""
    from vrft_jax import sampler

    def generate(input_ids, attention_mask, pixel_values, image_grid_thw):
        out = sampler.generate(
            model,
            input_ids,
            attention_mask,
            pixel_values,
            image_grid_thw,
            max_new_tokens=max_new_tokens,
            temperature=0.0,
            **sampler_kwargs,
        )
        return out.tokens, out.mask

    return generate
