"""Qwen3-VL (dense) Hugging Face checkpoints: config.json translation and the tensor key table.

The published Qwen3-VL folders and transformers 5 use the nested config.json layout (`text_config`,
`vision_config`) and the in-memory tensor names (`model.visual.*`, `model.language_model.*`,
`lm_head.weight`). hf.py normalises names to `visual.*` / `model.*` on read (so the table below
uses those) and `saved_name` writes the transformers-5 names back.
Torch Linear weights are (out, in); ours are (in, out) with heads split out, hence the reshapes.
"""

from typing import Any

MOE_TYPES = ("qwen3_vl_moe", "qwen3_vl_moe_text")


def config_kwargs(hf: dict[str, Any]) -> dict[str, Any]:
    """Qwen2VLConfig keyword arguments from a Qwen3-VL config.json dict (ValueError naming the
    field on anything unsupported, MoE configs included)."""
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
        model_type="qwen3_vl",
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


def to_hf(c) -> dict[str, Any]:
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


def saved_name(key: str) -> str:
    """Normalised name (`visual.*`, `model.*`) -> the transformers-5 name Qwen3-VL files use."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key.removeprefix("model.")
    return key


def table(c) -> dict:
    """Our parameter path -> (normalised hub key template, to_ours, to_hf); {i} = layer index."""
    ve, vh, vd = c.vision_embed_dim, c.vision_num_heads, c.vision_head_dim
    h, k, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    same = (lambda w: w, lambda w: w)
    linear = (lambda w: w.T, lambda w: w.T)
    one = (lambda w: w[None], lambda w: w[0])  # our main merger is a stack of one
    one_linear = (lambda w: w.T[None], lambda w: w[0].T)

    def heads_in(n, dim):  # torch (n*dim, E) <-> ours (E, n, dim)
        return (lambda w: w.T.reshape(-1, n, dim), lambda w: w.reshape(w.shape[0], -1).T)

    def heads_out(n, dim):  # torch (E, n*dim) <-> ours (n, dim, E)
        return (lambda w: w.T.reshape(n, dim, -1), lambda w: w.reshape(n * dim, -1).T)

    vb, lb = "visual.blocks.{i}.", "model.layers.{i}."
    mg, ds = "visual.merger.", "visual.deepstack_merger_list.{i}."
    t = {
        "visual/patch_embed": (
            "visual.patch_embed.proj.weight",
            lambda w: w.reshape(w.shape[0], -1).T,
            lambda w: w.T.reshape(
                -1, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size
            ),
        ),
        "visual/patch_bias": ("visual.patch_embed.proj.bias", *same),
        "visual/pos_embed": ("visual.pos_embed.weight", *same),
        "visual/blocks/norm1_scale": (vb + "norm1.weight", *same),
        "visual/blocks/norm1_bias": (vb + "norm1.bias", *same),
        "visual/blocks/norm2_scale": (vb + "norm2.weight", *same),
        "visual/blocks/norm2_bias": (vb + "norm2.bias", *same),
        "visual/blocks/qkv_kernel": (
            vb + "attn.qkv.weight",
            lambda w: w.T.reshape(ve, 3, vh, vd),
            lambda w: w.reshape(ve, -1).T,
        ),
        "visual/blocks/qkv_bias": (
            vb + "attn.qkv.bias",
            lambda w: w.reshape(3, vh, vd),
            lambda w: w.reshape(-1),
        ),
        "visual/blocks/proj_kernel": (vb + "attn.proj.weight", *heads_out(vh, vd)),
        "visual/blocks/proj_bias": (vb + "attn.proj.bias", *same),
        "visual/blocks/fc1_kernel": (vb + "mlp.linear_fc1.weight", *linear),
        "visual/blocks/fc1_bias": (vb + "mlp.linear_fc1.bias", *same),
        "visual/blocks/fc2_kernel": (vb + "mlp.linear_fc2.weight", *linear),
        "visual/blocks/fc2_bias": (vb + "mlp.linear_fc2.bias", *same),
        "visual/merger/ln_scale": (mg + "norm.weight", *one),
        "visual/merger/ln_bias": (mg + "norm.bias", *one),
        "visual/merger/fc1_kernel": (mg + "linear_fc1.weight", *one_linear),
        "visual/merger/fc1_bias": (mg + "linear_fc1.bias", *one),
        "visual/merger/fc2_kernel": (mg + "linear_fc2.weight", *one_linear),
        "visual/merger/fc2_bias": (mg + "linear_fc2.bias", *one),
        "visual/deepstack_mergers/ln_scale": (ds + "norm.weight", *same),
        "visual/deepstack_mergers/ln_bias": (ds + "norm.bias", *same),
        "visual/deepstack_mergers/fc1_kernel": (ds + "linear_fc1.weight", *linear),
        "visual/deepstack_mergers/fc1_bias": (ds + "linear_fc1.bias", *same),
        "visual/deepstack_mergers/fc2_kernel": (ds + "linear_fc2.weight", *linear),
        "visual/deepstack_mergers/fc2_bias": (ds + "linear_fc2.bias", *same),
        "language_model/embed_tokens": ("model.embed_tokens.weight", *same),
        "language_model/norm": ("model.norm.weight", *same),
        "language_model/lm_head": ("lm_head.weight", *linear),
        "language_model/layers/input_norm": (lb + "input_layernorm.weight", *same),
        "language_model/layers/post_norm": (lb + "post_attention_layernorm.weight", *same),
        "language_model/layers/q_kernel": (lb + "self_attn.q_proj.weight", *heads_in(h, d)),
        "language_model/layers/k_kernel": (lb + "self_attn.k_proj.weight", *heads_in(k, d)),
        "language_model/layers/v_kernel": (lb + "self_attn.v_proj.weight", *heads_in(k, d)),
        "language_model/layers/q_norm": (lb + "self_attn.q_norm.weight", *same),
        "language_model/layers/k_norm": (lb + "self_attn.k_norm.weight", *same),
        "language_model/layers/o_kernel": (lb + "self_attn.o_proj.weight", *heads_out(h, d)),
        "language_model/layers/gate_kernel": (lb + "mlp.gate_proj.weight", *linear),
        "language_model/layers/up_kernel": (lb + "mlp.up_proj.weight", *linear),
        "language_model/layers/down_kernel": (lb + "mlp.down_proj.weight", *linear),
    }
    return t
