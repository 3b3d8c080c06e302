"""Qwen3-VL (dense) config.json: the nested transformers-5 layout in and out.

Read: the published Qwen/Qwen3-VL-*-Instruct files (transformers 4.57 wrote `rope_scaling` and a
text `rope_theta`) and transformers 5's (`rope_parameters`); keys a file leaves out take the
defaults of transformers' Qwen3VL*Config classes. The MoE variants (qwen3_vl_moe) are refused.
"""

from typing import Any

MOE_TYPES = ("qwen3_vl_moe", "qwen3_vl_moe_text")


def read_qwen3_vl(hf: dict[str, Any]) -> dict[str, Any]:
    """QwenVLConfig fields from a Qwen3-VL config.json dict (ValueError naming the field on
    anything unsupported, an MoE text config included)."""
    text = hf.get("text_config") or {}
    vision = hf.get("vision_config") or {}
    if (
        hf.get("model_type") in MOE_TYPES
        or text.get("model_type") in MOE_TYPES
        or ("num_experts" in text)
    ):
        raise ValueError(
            "config.json: model_type 'qwen3_vl_moe' (Qwen3-VL MoE, e.g. 30B-A3B / 235B-A22B) is "
            "not supported; only the dense Qwen3-VL models (2B/4B/8B/32B) are"
        )
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    missing = [k for k in required if k not in text]
    if missing:
        raise ValueError(f"config.json: missing text_config fields {missing}")
    if text.get("attention_bias", False):
        raise ValueError("config.json: text_config.attention_bias=true is not supported")
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: text_config.hidden_act {text['hidden_act']!r} unsupported")
    act = vision.get("hidden_act", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise ValueError(f"config.json: vision_config.hidden_act {act!r} unsupported")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"config.json: text_config rope settings {rope!r} unsupported")
    # transformers' Qwen3VLTextRotaryEmbedding always interleaves the t/h/w frequencies.
    theta = rope.get("rope_theta", text.get("rope_theta", 5_000_000.0))
    vision_rope = vision.get("rope_parameters") or {}
    heads = text.get("num_attention_heads", 32)
    eos = text.get("eos_token_id", hf.get("eos_token_id", 151645))
    eos = eos[0] if isinstance(eos, list) else eos
    kw = dict(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=text.get("num_key_value_heads") or heads,
        explicit_head_dim=int(text.get("head_dim") or text["hidden_size"] // heads),
        rms_norm_eps=text.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        mrope_section=tuple(int(s) for s in rope.get("mrope_section", (24, 20, 20))),
        mrope_interleaved=True,
        max_position_embeddings=text.get("max_position_embeddings", 128000),
        tie_word_embeddings=bool(
            hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
        ),
        vision_depth=vision.get("depth", 27),
        vision_embed_dim=vision.get("hidden_size", 1152),
        vision_intermediate_size=vision.get("intermediate_size", 4304),
        vision_num_heads=vision.get("num_heads", 16),
        patch_size=vision.get("patch_size", 16),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        in_channels=vision.get("in_channels", 3),
        vision_rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
        num_position_embeddings=vision.get("num_position_embeddings", 2304),
        deepstack_visual_indexes=tuple(vision.get("deepstack_visual_indexes", (8, 16, 24))),
        image_token_id=hf.get("image_token_id", 151655),
        video_token_id=hf.get("video_token_id", 151656),
        vision_start_token_id=hf.get("vision_start_token_id", 151652),
        vision_end_token_id=hf.get("vision_end_token_id", 151653),
        bos_token_id=text.get("bos_token_id", 151643) or 151643,
        eos_token_id=eos,
        pad_token_id=text.get("pad_token_id", 151643) or 151643,
    )
    out = vision.get("out_hidden_size", kw["hidden_size"])
    if out != kw["hidden_size"]:
        raise ValueError(
            f"config.json: vision_config.out_hidden_size {out} != text_config.hidden_size "
            f"{kw['hidden_size']} (the mergers must output the LLM width)"
        )
    return kw


def write_qwen3_vl(c) -> dict[str, Any]:
    """The transformers-5 nested config.json of a Qwen3-VL config."""
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": c.image_token_id,
        "video_token_id": c.video_token_id,
        "vision_start_token_id": c.vision_start_token_id,
        "vision_end_token_id": c.vision_end_token_id,
        "tie_word_embeddings": c.tie_word_embeddings,
        "dtype": c.param_dtype,
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "head_dim": c.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": c.rope_theta,
                "mrope_section": list(c.mrope_section),
                "mrope_interleaved": True,
            },
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
            "tie_word_embeddings": c.tie_word_embeddings,
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision",
            "depth": c.vision_depth,
            "hidden_size": c.vision_embed_dim,
            "hidden_act": "gelu_pytorch_tanh",
            "intermediate_size": c.vision_mlp_dim,
            "num_heads": c.vision_num_heads,
            "in_channels": c.in_channels,
            "patch_size": c.patch_size,
            "spatial_merge_size": c.spatial_merge_size,
            "temporal_patch_size": c.temporal_patch_size,
            "out_hidden_size": c.hidden_size,
            "num_position_embeddings": c.num_position_embeddings,
            "deepstack_visual_indexes": list(c.deepstack_visual_indexes),
            "rope_parameters": {"rope_type": "axial", "rope_theta": c.vision_rope_theta},
        },
    }
