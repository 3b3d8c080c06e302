"""Qwen2-VL configuration: one frozen dataclass, HF config.json in and out, and size presets.

`from_hf` accepts the flat hub layout (4.x: text fields at top level, `rope_scaling` + `rope_theta`)
and the nested transformers-5 layout (`text_config`, `vision_config`, `rope_parameters`). `to_hf`
writes the flat hub layout, which both transformers 4.x and 5.x load.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
    # ---- Language model ----
    vocab_size: int = 151936
    hidden_size: int = 1536  # E
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12  # H
    num_key_value_heads: int = 2  # K
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (
        16,
        24,
        24,
    )  # t, h, w shares of the head_dim/2 frequencies
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    # ---- Vision tower ----
    vision_depth: int = 32
    vision_embed_dim: int = 1280
    vision_num_heads: int = 16
    vision_mlp_ratio: int = 4
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    vision_rope_theta: float = 10000.0
    # ---- Qwen3-VL (model_type "qwen3_vl"; the defaults keep Qwen2-VL) ----
    model_type: str = "qwen2_vl"
    explicit_head_dim: int = 0  # config.json's head_dim (Qwen3); 0: hidden_size / heads
    mrope_interleaved: bool = False  # t/h/w rotary frequencies alternate instead of sections
    vision_intermediate_size: int = 0  # vision MLP width; 0: vision_embed_dim * mlp_ratio
    num_position_embeddings: int = 0  # learned vision position grid (side^2); 0: none
    deepstack_visual_indexes: tuple[int, ...] = ()  # vision blocks whose output feeds DeepStack
    # ---- Token ids (the real Qwen2-VL tokenizer's) ----
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    pad_token_id: int = 151643
    # ---- Execution ----
    # Storage dtype of the parameters. For training these are the master weights: the trainer
    # sets it from config.model.master_dtype (float32), never bf16 by default, since a bf16
    # weight cannot take a 1e-6 step. Forwards cast the weights to compute_dtype at use.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"  # activations and the weights as the matmuls read them
    attention: str = "xla"  # jax.nn.dot_product_attention implementation: "xla", "cudnn", "auto"
    remat: str = "none"  # "none", "full", "dots"
    # The vision tower's own checkpointing. Without it a step's backward keeps every vision layer's
    # attention probabilities (2B, 16 images of 448 px: ~48 GiB); "full" costs one more vision
    # forward (~3% of a 2B GRPO step). Forward-only programs are unaffected.
    vision_remat: str = "full"
    scan_layers: bool = True

    def __post_init__(self):
        if self.model_type not in ("qwen2_vl", "qwen3_vl"):
            raise ValueError(f"Qwen2VLConfig.model_type {self.model_type!r} is not supported")
        if self.hidden_size % self.num_attention_heads and not self.explicit_head_dim:
            raise ValueError("Qwen2VLConfig: hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("Qwen2VLConfig: num_attention_heads must be a multiple of kv heads")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"Qwen2VLConfig: mrope_section {self.mrope_section} must sum to head_dim/2 = "
                f"{self.head_dim // 2}"
            )
        if self.vision_embed_dim % self.vision_num_heads:
            raise ValueError(
                "Qwen2VLConfig: vision_embed_dim must be a multiple of vision_num_heads"
            )
        if self.attention not in ("xla", "cudnn", "auto"):
            raise ValueError(
                f"Qwen2VLConfig.attention must be xla/cudnn/auto, got {self.attention}"
            )
        for name in ("remat", "vision_remat"):
            if getattr(self, name) not in ("none", "full", "dots"):
                raise ValueError(
                    f"Qwen2VLConfig.{name} must be none/full/dots, got {getattr(self, name)}"
                )

    # ---- Derived sizes ----
    @property
    def head_dim(self) -> int:  # D
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_qwen3(self) -> bool:
        """Qwen3 decoder (q/k RMSNorm, no q/k/v bias) and Qwen3-VL vision tower (DeepStack)."""
        return self.model_type == "qwen3_vl"

    @property
    def num_deepstack(self) -> int:  # decoder layers that receive DeepStack features
        return len(self.deepstack_visual_indexes)

    @property
    def vision_head_dim(self) -> int:
        return self.vision_embed_dim // self.vision_num_heads

    @property
    def vision_mlp_dim(self) -> int:
        return self.vision_intermediate_size or self.vision_embed_dim * self.vision_mlp_ratio

    @property
    def patch_dim(self) -> int:  # 1176 = 3 * 2 * 14 * 14
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:  # patches per merged token (4)
        return self.spatial_merge_size**2

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_compute_dtype(self):
        return jnp.dtype(self.compute_dtype)

    def replace(self, **kw) -> "Qwen2VLConfig":
        return dataclasses.replace(self, **kw)

    # ---- HF config.json ----
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "Qwen2VLConfig":
        """Builds a config from a Qwen2-VL config.json dict (flat 4.x or nested 5.x layout)."""
        model_type = hf.get("model_type")
        if model_type in ("qwen3_vl", "qwen3_vl_moe"):
            from vrft_jax.hf_qwen3 import config_kwargs

            return cls(**{**config_kwargs(hf), **overrides})
        if model_type != "qwen2_vl":
            raise ValueError(
                f"config.json: model_type is {model_type!r}, expected 'qwen2_vl' (only Qwen2-VL "
                "checkpoints are supported; Qwen2.5-VL and Qwen3-VL are not)"
            )
        text = dict(hf)
        text.update(hf.get("text_config") or {})
        vision = hf.get("vision_config") or {}
        rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
        rope_kind = rope.get("rope_type", rope.get("type", "default"))
        if "mrope_section" not in rope or rope_kind not in ("mrope", "default"):
            raise ValueError(
                f"config.json: unsupported rope settings {rope!r}; Qwen2-VL needs an M-RoPE "
                "'mrope_section' with rope type 'mrope'/'default'"
            )
        theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
        if text.get("use_sliding_window", False):
            raise ValueError("config.json: use_sliding_window=true is not supported")
        if vision.get("hidden_act", "quick_gelu") != "quick_gelu":
            raise ValueError(f"config.json: vision hidden_act {vision['hidden_act']!r} unsupported")
        if text.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act {text['hidden_act']!r} unsupported")
        tie = hf.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        eos = text.get("eos_token_id", 151645)
        eos = eos[0] if isinstance(eos, list) else eos
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        missing = [k for k in required if k not in text]
        if missing:
            raise ValueError(f"config.json: missing text fields {missing}")
        kw = dict(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"],
            num_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
            rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            mrope_section=tuple(int(s) for s in rope["mrope_section"]),
            max_position_embeddings=text.get("max_position_embeddings", 32768),
            tie_word_embeddings=bool(tie),
            vision_depth=vision.get("depth", vision.get("num_hidden_layers", 32)),
            vision_embed_dim=vision.get("embed_dim", 1280),
            vision_num_heads=vision.get("num_heads", vision.get("num_attention_heads", 16)),
            vision_mlp_ratio=int(vision.get("mlp_ratio", 4)),
            patch_size=vision.get("patch_size", 14),
            temporal_patch_size=vision.get("temporal_patch_size", 2),
            spatial_merge_size=vision.get("spatial_merge_size", 2),
            in_channels=vision.get("in_channels", 3),
            image_token_id=hf.get("image_token_id", 151655),
            video_token_id=hf.get("video_token_id", 151656),
            vision_start_token_id=hf.get("vision_start_token_id", 151652),
            vision_end_token_id=hf.get("vision_end_token_id", 151653),
            vision_token_id=hf.get("vision_token_id", 151654),
            bos_token_id=text.get("bos_token_id", 151643) or 151643,
            eos_token_id=eos,
            pad_token_id=text.get("pad_token_id", 151643) or 151643,
        )
        vision_out = vision.get("hidden_size", kw["hidden_size"])
        if vision_out != kw["hidden_size"]:
            raise ValueError(
                f"config.json: vision_config.hidden_size {vision_out} != hidden_size "
                f"{kw['hidden_size']} (the merger must output the LLM width)"
            )
        kw.update(overrides)
        return cls(**kw)

    def to_hf(self) -> dict[str, Any]:
        """The flat hub config.json layout (loads in transformers 4.x and 5.x)."""
        if self.is_qwen3:
            from vrft_jax.hf_qwen3 import to_hf

            return to_hf(self)
        return {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(self.mrope_section)},
            "max_position_embeddings": self.max_position_embeddings,
            "sliding_window": self.max_position_embeddings,
            "use_sliding_window": False,
            "max_window_layers": self.num_hidden_layers,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "tie_word_embeddings": self.tie_word_embeddings,
            "use_cache": True,
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.vision_token_id,
            "vision_config": {
                "depth": self.vision_depth,
                "embed_dim": self.vision_embed_dim,
                "num_heads": self.vision_num_heads,
                "mlp_ratio": self.vision_mlp_ratio,
                "hidden_size": self.hidden_size,
                "hidden_act": "quick_gelu",
                "in_chans": self.in_channels,
                "in_channels": self.in_channels,
                "patch_size": self.patch_size,
                "spatial_merge_size": self.spatial_merge_size,
                "temporal_patch_size": self.temporal_patch_size,
            },
        }


PRESETS = {
    # Tests and demos: real tokenizer ids and vocabulary, tiny widths, tied head.
    "tiny": Qwen2VLConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        tie_word_embeddings=True,
        vision_depth=2,
        vision_embed_dim=32,
        vision_num_heads=4,
    ),
    "2b": Qwen2VLConfig(),
    "7b": Qwen2VLConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


def _qwen3_vl(**sizes) -> Qwen2VLConfig:
    """A Qwen3-VL config: what every published dense model shares, plus its sizes."""
    shared = dict(
        model_type="qwen3_vl",
        rope_theta=5_000_000.0,
        mrope_section=(24, 20, 20),
        mrope_interleaved=True,
        max_position_embeddings=262144,
        patch_size=16,
        vision_num_heads=16,
        num_position_embeddings=2304,
    )
    return Qwen2VLConfig(**{**shared, **sizes})


# Sizes from the published config.json files of Qwen/Qwen3-VL-{2B,4B,8B}-Instruct on the Hugging
# Face Hub (text_config / vision_config; the Thinking variants share them).
_QWEN3_VL_SMALL_VISION = dict(
    vision_depth=24,
    vision_embed_dim=1024,
    vision_intermediate_size=4096,
    deepstack_visual_indexes=(5, 11, 17),
)
PRESETS.update(
    {
        # Tests and demos: real tokenizer ids and vocabulary, tiny widths; head_dim 32 != 64/4 and
        # DeepStack after the first and a middle of 3 vision blocks, as the tests' tiny models.
        "qwen3_vl-tiny": _qwen3_vl(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            explicit_head_dim=32,
            mrope_section=(6, 5, 5),
            tie_word_embeddings=True,
            vision_depth=3,
            vision_embed_dim=32,
            vision_intermediate_size=48,
            vision_num_heads=4,
            num_position_embeddings=36,
            deepstack_visual_indexes=(0, 1),
        ),
        "qwen3_vl-2b": _qwen3_vl(
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            explicit_head_dim=128,
            tie_word_embeddings=True,
            **_QWEN3_VL_SMALL_VISION,
        ),
        "qwen3_vl-4b": _qwen3_vl(
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            explicit_head_dim=128,
            tie_word_embeddings=True,
            **_QWEN3_VL_SMALL_VISION,
        ),
        "qwen3_vl-8b": _qwen3_vl(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            explicit_head_dim=128,
            tie_word_embeddings=False,
            vision_depth=27,
            vision_embed_dim=1152,
            vision_intermediate_size=4304,
            deepstack_visual_indexes=(8, 16, 24),
        ),
    }
)


def get_preset(name: str, **overrides) -> Qwen2VLConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown Qwen2-VL preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
