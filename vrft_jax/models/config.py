"""Qwen-VL configuration: one frozen dataclass for every model family, HF config.json in and out,
and size presets.

The family is `model_type` (config.json's key): "qwen2_vl", "qwen2_5_vl" or "qwen3_vl" (dense).
It decides the parts the model builds (models/qwen2_vl.py FAMILY_PARTS), the checkpoint key table
(hf.py) and how config.json is read and written (`_HF_READERS` / `_HF_WRITERS` below, from
config_qwen2.py and config_qwen3.py); fields a family does not use keep their defaults.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

from vrft_jax.models.config_qwen2 import (
    read_qwen2_5_vl,
    read_qwen2_vl,
    write_qwen2_5_vl,
    write_qwen2_vl,
)
from vrft_jax.models.config_qwen3 import MOE_TYPES, read_qwen3_vl, write_qwen3_vl


@dataclasses.dataclass(frozen=True)
class QwenVLConfig:
    # ---- Family ----
    model_type: str = "qwen2_vl"  # one of SUPPORTED_MODEL_TYPES
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
    vision_hidden_act: str = "quick_gelu"  # Qwen2-VL: quick_gelu MLP; Qwen2.5-VL: silu SwiGLU
    vision_intermediate_size: int = 0  # MLP width; 0: vision_embed_dim * vision_mlp_ratio
    # Qwen2.5-VL window attention: windows of window_size pixels per side, except in the blocks
    # listed in fullatt_block_indexes (0 / (): every block attends over the whole image).
    window_size: int = 0
    fullatt_block_indexes: tuple[int, ...] = ()
    tokens_per_second: int = 4  # Qwen2.5-VL video time scale (carried for config.json only)
    # ---- Qwen3-VL (model_type "qwen3_vl") ----
    explicit_head_dim: int = 0  # config.json's head_dim (Qwen3); 0: hidden_size / heads
    mrope_interleaved: bool = False  # t/h/w rotary frequencies alternate instead of sections
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
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"QwenVLConfig.model_type {self.model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.hidden_size % self.num_attention_heads and not self.explicit_head_dim:
            raise ValueError("QwenVLConfig: hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("QwenVLConfig: num_attention_heads must be a multiple of kv heads")
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"QwenVLConfig: mrope_section {self.mrope_section} must sum to head_dim/2 = "
                f"{self.head_dim // 2}"
            )
        if self.vision_embed_dim % self.vision_num_heads:
            raise ValueError(
                "QwenVLConfig: vision_embed_dim must be a multiple of vision_num_heads"
            )
        if self.window_size and self.window_size < self.patch_size * self.spatial_merge_size:
            raise ValueError(
                f"QwenVLConfig: window_size {self.window_size} px is smaller than one merged "
                f"token ({self.patch_size * self.spatial_merge_size} px)"
            )
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.vision_depth]
        if bad:
            raise ValueError(
                f"QwenVLConfig: fullatt_block_indexes {bad} outside the {self.vision_depth} "
                "vision blocks"
            )
        if self.attention not in ("xla", "cudnn", "auto"):
            raise ValueError(f"QwenVLConfig.attention must be xla/cudnn/auto, got {self.attention}")
        for name in ("remat", "vision_remat"):
            if getattr(self, name) not in ("none", "full", "dots"):
                raise ValueError(
                    f"QwenVLConfig.{name} must be none/full/dots, got {getattr(self, name)}"
                )

    # ---- Derived sizes ----
    @property
    def head_dim(self) -> int:  # D
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_qwen3(self) -> bool:
        """Qwen3 decoder layers (q/k RMSNorm, no q/k/v bias) and DeepStack (Qwen3-VL)."""
        return self.model_type == "qwen3_vl"

    @property
    def num_deepstack(self) -> int:  # Ld: decoder layers that receive DeepStack features
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

    def replace(self, **kw) -> "QwenVLConfig":
        return dataclasses.replace(self, **kw)

    # ---- HF config.json ----
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "QwenVLConfig":
        """A config from a config.json dict (flat 4.x or nested 5.x layout) of a supported family;
        keys the file leaves out take the defaults of transformers' configuration class."""
        model_type = hf.get("model_type")
        if model_type in MOE_TYPES:
            raise ValueError(
                f"config.json: model_type {model_type!r} (Qwen3-VL MoE: 30B-A3B, 235B-A22B) is not "
                "supported; only the dense Qwen3-VL models (model_type 'qwen3_vl') are"
            )
        if model_type not in _HF_READERS:
            raise ValueError(
                f"config.json: model_type {model_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        kw = _HF_READERS[model_type](hf)
        kw.update(overrides)
        return cls(model_type=model_type, **kw)

    def to_hf(self) -> dict[str, Any]:
        """The flat hub config.json layout (loads in transformers 4.x and 5.x)."""
        return _HF_WRITERS[self.model_type](self)


Qwen2VLConfig = QwenVLConfig  # the name before the families (kept for callers)


_HF_READERS = {
    "qwen2_vl": read_qwen2_vl,
    "qwen2_5_vl": read_qwen2_5_vl,
    "qwen3_vl": read_qwen3_vl,
}
_HF_WRITERS = {
    "qwen2_vl": write_qwen2_vl,
    "qwen2_5_vl": write_qwen2_5_vl,
    "qwen3_vl": write_qwen3_vl,
}
SUPPORTED_MODEL_TYPES = tuple(_HF_READERS)


def _qwen2_5_vl(**kw) -> QwenVLConfig:
    """A Qwen2.5-VL config: the hub files' vision tower and text settings, then `kw`."""
    base = dict(
        model_type="qwen2_5_vl",
        vision_embed_dim=1280,
        vision_intermediate_size=3420,
        vision_hidden_act="silu",
        window_size=112,
        fullatt_block_indexes=(7, 15, 23, 31),
        tokens_per_second=2,
        max_position_embeddings=128000,
    )
    return QwenVLConfig(**{**base, **kw})


PRESETS = {
    # Tests and demos: real tokenizer ids and vocabulary, tiny widths, tied head.
    "tiny": QwenVLConfig(
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
    "2b": QwenVLConfig(),
    "7b": QwenVLConfig(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
    # Qwen2.5-VL tiny: 84 px windows (3x3 merged tokens: partial windows at most image edges),
    # full attention in block 1 of 3.
    "qwen2_5_vl-tiny": _qwen2_5_vl(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mrope_section=(2, 3, 3),
        tie_word_embeddings=True,
        vision_depth=3,
        vision_embed_dim=32,
        vision_num_heads=4,
        vision_intermediate_size=48,
        window_size=84,
        fullatt_block_indexes=(1,),
    ),
    "qwen2_5_vl-3b": _qwen2_5_vl(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "qwen2_5_vl-7b": _qwen2_5_vl(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}


def _qwen3_vl(**sizes) -> QwenVLConfig:
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
    return QwenVLConfig(**{**shared, **sizes})


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


def get_preset(name: str, **overrides) -> QwenVLConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
