"""Qwen2-VL and Qwen2.5-VL config.json: the flat hub layout out, flat or nested layout in.

Read: the flat 4.x hub files (text fields at top level, `rope_scaling` + `rope_theta`) and the
nested transformers-5 layout (`text_config`, `vision_config`, `rope_parameters`); keys a file
leaves out take the defaults of transformers' configuration classes. Write: the flat hub layout,
which transformers 4.x and 5.x both load. The Qwen3-VL reader/writer is in config_qwen3.py.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config.py imports this module
    from vrft_jax.models.config import QwenVLConfig

# ---- config.json readers: hub dict -> QwenVLConfig fields ---------------------------------------


def _text_fields(hf: dict, *, rms_norm_eps: float, tie: bool, mrope_section) -> dict:
    """The decoder fields (shared by the families); the keyword arguments are the family's class
    defaults for keys a file may leave out (mrope_section None: the key is required)."""
    text = dict(hf)
    text.update(hf.get("text_config") or {})
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    rope_kind = rope.get("rope_type", rope.get("type", "default"))
    section = rope.get("mrope_section", mrope_section)
    if section is None or rope_kind not in ("mrope", "default"):
        raise ValueError(
            f"config.json: unsupported rope settings {rope!r}; Qwen-VL needs an M-RoPE "
            "'mrope_section' with rope type 'mrope'/'default'"
        )
    theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    if text.get("use_sliding_window", False):
        raise ValueError("config.json: use_sliding_window=true is not supported")
    if text.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: hidden_act {text['hidden_act']!r} unsupported")
    tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", tie))
    eos = text.get("eos_token_id", 151645)
    eos = eos[0] if isinstance(eos, list) else eos
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
    missing = [k for k in required if k not in text]
    if missing:
        raise ValueError(f"config.json: missing text fields {missing}")
    return dict(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
        rms_norm_eps=text.get("rms_norm_eps", rms_norm_eps),
        rope_theta=float(theta),
        mrope_section=tuple(int(s) for s in section),
        max_position_embeddings=text.get("max_position_embeddings", 32768),
        tie_word_embeddings=bool(tie),
        image_token_id=hf.get("image_token_id", 151655),
        video_token_id=hf.get("video_token_id", 151656),
        vision_start_token_id=hf.get("vision_start_token_id", 151652),
        vision_end_token_id=hf.get("vision_end_token_id", 151653),
        vision_token_id=hf.get("vision_token_id", 151654),
        bos_token_id=text.get("bos_token_id", 151643) or 151643,
        eos_token_id=eos,
        pad_token_id=text.get("pad_token_id", 151643) or 151643,
    )


def _check_merger_width(out: int, key: str, hidden: int) -> None:
    if out != hidden:
        raise ValueError(
            f"config.json: vision_config.{key} {out} != hidden_size {hidden} (the merger must "
            "output the LLM width)"
        )


def read_qwen2_vl(hf: dict) -> dict:
    kw = _text_fields(hf, rms_norm_eps=1e-6, tie=True, mrope_section=None)
    vision = hf.get("vision_config") or {}
    if vision.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise ValueError(f"config.json: vision hidden_act {vision['hidden_act']!r} unsupported")
    hidden = kw["hidden_size"]
    _check_merger_width(vision.get("hidden_size", hidden), "hidden_size", hidden)
    return dict(
        kw,
        vision_depth=vision.get("depth", vision.get("num_hidden_layers", 32)),
        vision_embed_dim=vision.get("embed_dim", 1280),
        vision_num_heads=vision.get("num_heads", vision.get("num_attention_heads", 16)),
        vision_mlp_ratio=int(vision.get("mlp_ratio", 4)),
        patch_size=vision.get("patch_size", 14),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        in_channels=vision.get("in_channels", 3),
    )


def read_qwen2_5_vl(hf: dict) -> dict:
    # Defaults: transformers' Qwen2_5_VLTextConfig / Qwen2_5_VLVisionConfig / Qwen2_5_VLConfig
    # fields (text rms_norm_eps 1e-5, untied head, vision width 3584, ...); mrope_section as
    # Qwen2_5_VLRotaryEmbedding falls back to. Hub files set most of these themselves.
    kw = _text_fields(hf, rms_norm_eps=1e-5, tie=False, mrope_section=(16, 24, 24))
    vision = hf.get("vision_config") or {}
    if vision.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: vision hidden_act {vision['hidden_act']!r} unsupported")
    _check_merger_width(vision.get("out_hidden_size", 3584), "out_hidden_size", kw["hidden_size"])
    rope = vision.get("rope_parameters") or {}
    return dict(
        kw,
        vision_depth=vision.get("depth", vision.get("num_hidden_layers", 32)),
        vision_embed_dim=vision.get("hidden_size", 3584),
        vision_num_heads=vision.get("num_heads", vision.get("num_attention_heads", 16)),
        vision_intermediate_size=vision.get("intermediate_size", 3420),
        vision_hidden_act="silu",
        vision_rope_theta=float(rope.get("rope_theta", 10000.0)),
        patch_size=vision.get("patch_size", 14),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        in_channels=vision.get("in_channels", 3),
        window_size=vision.get("window_size", 112),
        fullatt_block_indexes=tuple(
            int(i) for i in vision.get("fullatt_block_indexes", (7, 15, 23, 31))
        ),
        tokens_per_second=vision.get("tokens_per_second", 4),
    )


# ---- config.json writers: QwenVLConfig -> flat hub dict -----------------------------------------


def _text_hf(c: "QwenVLConfig") -> dict:
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(c.mrope_section)},
        "max_position_embeddings": c.max_position_embeddings,
        "sliding_window": c.max_position_embeddings,
        "use_sliding_window": False,
        "max_window_layers": c.num_hidden_layers,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": c.tie_word_embeddings,
        "use_cache": True,
        "torch_dtype": c.param_dtype,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "image_token_id": c.image_token_id,
        "video_token_id": c.video_token_id,
        "vision_start_token_id": c.vision_start_token_id,
        "vision_end_token_id": c.vision_end_token_id,
        "vision_token_id": c.vision_token_id,
    }


def write_qwen2_vl(c: "QwenVLConfig") -> dict:
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **_text_hf(c),
        "vision_config": {
            "depth": c.vision_depth,
            "embed_dim": c.vision_embed_dim,
            "num_heads": c.vision_num_heads,
            "mlp_ratio": c.vision_mlp_ratio,
            "hidden_size": c.hidden_size,
            "hidden_act": "quick_gelu",
            "in_chans": c.in_channels,
            "in_channels": c.in_channels,
            "patch_size": c.patch_size,
            "spatial_merge_size": c.spatial_merge_size,
            "temporal_patch_size": c.temporal_patch_size,
        },
    }


def write_qwen2_5_vl(c: "QwenVLConfig") -> dict:
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **_text_hf(c),
        "vision_config": {
            "depth": c.vision_depth,
            "hidden_size": c.vision_embed_dim,
            "intermediate_size": c.vision_mlp_dim,
            "num_heads": c.vision_num_heads,
            "hidden_act": "silu",
            "out_hidden_size": c.hidden_size,
            "in_chans": c.in_channels,
            "in_channels": c.in_channels,
            "patch_size": c.patch_size,
            "spatial_merge_size": c.spatial_merge_size,
            "temporal_patch_size": c.temporal_patch_size,
            "window_size": c.window_size,
            "fullatt_block_indexes": list(c.fullatt_block_indexes),
            "tokens_per_second": c.tokens_per_second,
            "rope_parameters": {"rope_type": "axial", "rope_theta": c.vision_rope_theta},
        },
    }
