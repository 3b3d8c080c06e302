"""Tiny random Qwen-VL models for tests: transformers (torch) references and O(1) rescaling.

`make_tiny_hf(path)` builds a `Qwen2VLForConditionalGeneration` (family="qwen2_5_vl": a
`Qwen2_5_VLForConditionalGeneration`, the shape of our "qwen2_5_vl-tiny" preset) with the real
tokenizer's special
ids and vocabulary size, tiny widths, weights rescaled so activations and logits are O(1) (the
default 0.02 init makes everything tiny and parity checks meaningless), saves it with
`save_pretrained(path)` and returns it. `hf_logits` runs it on the processor's arrays;
`image_prompt` builds token rows with image placeholders. `rescale_params_` applies the same
O(1) re-draw to one of our Flax models (no torch needed). Torch is imported only inside functions.
"""

import numpy as np

IMAGE = 151655
VISION_START = 151652
VISION_END = 151653
PAD = 151643

TINY = dict(
    vocab_size=151936,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    mrope_section=(2, 3, 3),
    vision_depth=2,
    vision_embed_dim=32,
    vision_num_heads=4,
)


def _text_config(t) -> dict:
    return dict(
        vocab_size=t["vocab_size"],
        hidden_size=t["hidden_size"],
        intermediate_size=t["intermediate_size"],
        num_hidden_layers=t["num_hidden_layers"],
        num_attention_heads=t["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"],
        rms_norm_eps=1e-6,
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": list(t["mrope_section"]),
        },
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=PAD,
    )


def tiny_hf_config(tie: bool = True, **overrides):
    from transformers import Qwen2VLConfig

    t = dict(TINY, **overrides)
    return Qwen2VLConfig(
        text_config=_text_config(t),
        vision_config=dict(
            depth=t["vision_depth"],
            embed_dim=t["vision_embed_dim"],
            num_heads=t["vision_num_heads"],
            mlp_ratio=4,
            hidden_size=t["hidden_size"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            hidden_act="quick_gelu",
        ),
        image_token_id=IMAGE,
        video_token_id=151656,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )


# Qwen2.5-VL: the same decoder; an RMSNorm/SwiGLU vision tower with 84 px windows (3x3 merged
# tokens) and full attention in block 1 of 3 (the "qwen2_5_vl-tiny" preset).
TINY_2_5_VISION = dict(
    depth=3,
    hidden_size=32,
    intermediate_size=48,
    num_heads=4,
    window_size=84,
    fullatt_block_indexes=[1],
)


def tiny_hf_config_2_5(tie: bool = True, **vision_overrides):
    """transformers' Qwen2_5_VLConfig (nested layout) of the tiny Qwen2.5-VL."""
    from transformers import Qwen2_5_VLConfig

    vision = dict(
        TINY_2_5_VISION,
        out_hidden_size=TINY["hidden_size"],
        hidden_act="silu",
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        tokens_per_second=2,
        **vision_overrides,
    )
    return Qwen2_5_VLConfig(
        text_config=_text_config(TINY),
        vision_config=vision,
        image_token_id=IMAGE,
        video_token_id=151656,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )


def rescale_(model, seed: int = 0):
    """Re-draws every weight so activations are O(1): Linear ~ N(0, 1/fan_in), embeddings ~ N(0, 1),
    norm weights ~ 1 + 0.1 N, biases ~ 0.1 N."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name or "ln_q" in name:
                new = 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
            elif name.endswith("bias"):
                new = 0.1 * noise
            elif "embed_tokens" in name:
                new = noise
            else:
                fan_in = int(np.prod(p.shape[1:]))
                new = noise / np.sqrt(fan_in)
            p.copy_(new.to(p.dtype))
    return model


def make_tiny_hf(path=None, *, tie: bool = True, seed: int = 0, family="qwen2_vl", **overrides):
    """A rescaled tiny torch Qwen2-VL or Qwen2.5-VL (family; eval mode, fp32); saved to `path`
    with save_pretrained."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    if family == "qwen2_5_vl":
        config = tiny_hf_config_2_5(tie, **overrides)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    else:
        model = Qwen2VLForConditionalGeneration(tiny_hf_config(tie, **overrides)).eval()
    rescale_(model, seed)
    if path is not None:
        model.save_pretrained(path)
    return model


def hf_logits(model, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    """float32 numpy logits [B, T, V] from the torch model (passes mm_token_type_ids for 5.x)."""
    import torch

    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    if pixel_values is not None:
        kw["pixel_values"] = torch.as_tensor(np.asarray(pixel_values), dtype=torch.float32)
        kw["image_grid_thw"] = torch.as_tensor(np.asarray(image_grid_thw), dtype=torch.long)
        kw["mm_token_type_ids"] = (ids == IMAGE).long()
    with torch.no_grad():
        out = model(input_ids=ids, **kw)
    return out.logits.float().numpy()


def image_prompt(rng, n_text_before: int, grids, n_text_after: int, vocab: int = 151000):
    """Token ids for one row: text, then per image <vs> + pads (t*h*w/4) + <ve>, then text."""
    ids = list(rng.integers(0, vocab, n_text_before))
    for t, h, w in grids:
        ids += [VISION_START] + [IMAGE] * (t * h * w // 4) + [VISION_END]
    ids += list(rng.integers(0, vocab, n_text_after))
    return ids


def left_pad(rows, pad_id: int = PAD):
    """Left-pads lists of ids -> (input_ids int64 [B, T], attention_mask int64 [B, T])."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask


def random_pixels(rng, grids, patch_dim: int = 1176):
    """pixel_values float32 [sum t*h*w, patch_dim] (N(0,1), like normalised pixels; 1176 for
    14-px patches, 1536 for Qwen3-VL's 16-px) and grid int64 [I, 3]."""
    total = sum(t * h * w for t, h, w in grids)
    return rng.standard_normal((total, patch_dim)).astype(np.float32), np.asarray(grids, np.int64)


def rescale_params_(model, seed: int = 0):
    """The same O(1) re-draw for one of our (torch-free) Flax models, in place."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, shape = str(path[-1]), var.shape
        start = 1 if ("layers" in path or "blocks" in path) else 0
        noise = rng.standard_normal(shape).astype(np.float32)
        if "norm" in name or "scale" in name:
            new = 1.0 + 0.1 * noise
        elif "bias" in name:
            new = 0.1 * noise
        elif name == "embed_tokens":
            new = noise
        else:
            split_out = name in ("q_kernel", "k_kernel", "v_kernel", "qkv_kernel")
            fan_in = shape[start] if split_out else int(np.prod(shape[start:-1]))
            new = noise / np.sqrt(fan_in)
        flat.append((path, var.replace(value=jnp.asarray(new, var.dtype))))
    nnx.update(model, nnx.from_flat_state(flat))
    del jax
    return model
