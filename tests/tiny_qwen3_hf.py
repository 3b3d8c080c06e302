"""Tiny random Qwen3-VL models for tests: transformers (torch) references, O(1) weights.

The tiny configs exercise what differs from Qwen2-VL: an explicit head_dim (32, not hidden/heads =
16), interleaved M-RoPE with uneven sections, DeepStack after the first and a middle vision block
(3 vision blocks, 3 decoder layers so one layer gets no DeepStack features) and a 6 x 6 learned
position grid, which the test images' grids (4 x 10, 8 x 4, ...) undershoot and overshoot.
Token ids and vocabulary are the real tokenizer's (tiny_hf's helpers build the prompts).
"""

import tiny_hf

PATCH_DIM = 3 * 2 * 16 * 16

TINY = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    mrope_section=(6, 5, 5),
    vision_depth=3,
    vision_hidden=32,
    vision_intermediate=48,
    vision_heads=4,
    num_position_embeddings=36,
    deepstack_visual_indexes=(0, 1),
)


def tiny_hf_config(tie: bool = True, **overrides):
    from transformers import Qwen3VLConfig

    t = dict(TINY, **overrides)
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=t["vocab_size"],
            hidden_size=t["hidden_size"],
            intermediate_size=t["intermediate_size"],
            num_hidden_layers=t["num_hidden_layers"],
            num_attention_heads=t["num_attention_heads"],
            num_key_value_heads=t["num_key_value_heads"],
            head_dim=t["head_dim"],
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": list(t["mrope_section"]),
                "mrope_interleaved": True,
            },
            bos_token_id=151643,
            eos_token_id=151645,
            tie_word_embeddings=tie,
        ),
        vision_config=dict(
            depth=t["vision_depth"],
            hidden_size=t["vision_hidden"],
            intermediate_size=t["vision_intermediate"],
            num_heads=t["vision_heads"],
            out_hidden_size=t["hidden_size"],
            num_position_embeddings=t["num_position_embeddings"],
            deepstack_visual_indexes=list(t["deepstack_visual_indexes"]),
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=tiny_hf.IMAGE,
        video_token_id=151656,
        vision_start_token_id=tiny_hf.VISION_START,
        vision_end_token_id=tiny_hf.VISION_END,
        tie_word_embeddings=tie,
    )


def rescale_(model, seed: int = 0):
    """O(1) re-draw (as tiny_hf.rescale_), with the learned position table ~ N(0, 1) so the
    interpolated position embeddings weigh as much as the patch embeddings."""
    import torch

    tiny_hf.rescale_(model, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        table = model.model.visual.pos_embed.weight
        table.copy_(torch.randn(table.shape, generator=gen))
    return model


def make_tiny_hf(path=None, *, tie: bool = True, seed: int = 0, **overrides):
    """A rescaled tiny torch Qwen3-VL (eval mode, fp32); saved to `path` with save_pretrained."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(tiny_hf_config(tie, **overrides)).eval()
    rescale_(model, seed)
    if path is not None:
        model.save_pretrained(path)
    return model


def random_pixels(rng, grids):
    """pixel_values float32 [sum t*h*w, 1536] and image_grid_thw int64 [I, 3]."""
    return tiny_hf.random_pixels(rng, grids, PATCH_DIM)


def mixed_batch(rng):
    """Left-padded rows: two images of different sizes (4 x 10 and 8 x 4 patches: narrower and
    wider than the 6 x 6 position grid), text only, one image -> (ids, mask, pixels, grid)."""
    g0, g2 = [(1, 4, 10), (1, 8, 4)], [(1, 6, 8)]
    rows = [
        tiny_hf.image_prompt(rng, 3, g0, 4),
        list(rng.integers(0, 151000, 9)),
        tiny_hf.image_prompt(rng, 2, g2, 3),
    ]
    ids, mask = tiny_hf.left_pad(rows)
    return (ids, mask, *random_pixels(rng, g0 + g2))
