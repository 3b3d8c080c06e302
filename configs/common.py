"""Helpers shared by the paper configs: the config argument parser, the reference's settings,
and the `runlocal` shrink.

A config argument is a comma-separated list of `key=value` or bare flags, e.g.
`configs/coco_fewshot.py:shots=4,model=7b,runlocal`. Unknown keys fail naming the key. Every paper
config also takes `lora=R` (LoRA adapters of rank R instead of full fine-tuning, `apply_lora`).
"""

import ml_collections


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
    """`"a=1,flag"` -> ConfigDict(a=1, flag=True) with values cast to the defaults' types.
    `lora` (int, default 0) is always accepted."""
    defaults = {"lora": 0, **defaults}
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        kind = type(defaults[key])
        if kind is bool:
            values[key] = value.lower() in ("1", "true", "yes") if has_value else True
        else:
            values[key] = kind(value) if has_value else kind()
    return ml_collections.ConfigDict(values)


# model= argument -> (model.preset, the local Hugging Face folder model_init points to). The
# family is read from that folder's config.json when it exists (hf.load_model).
MODELS = {
    "2b": ("2b", "checkpoints/Qwen2-VL-2B-Instruct"),
    "7b": ("7b", "checkpoints/Qwen2-VL-7B-Instruct"),
    "qwen2_5_vl-3b": ("qwen2_5_vl-3b", "checkpoints/Qwen2.5-VL-3B-Instruct"),
    "qwen2_5_vl-7b": ("qwen2_5_vl-7b", "checkpoints/Qwen2.5-VL-7B-Instruct"),
    "qwen3_vl-2b": ("qwen3_vl-2b", "checkpoints/Qwen3-VL-2B-Instruct"),
    "qwen3_vl-4b": ("qwen3_vl-4b", "checkpoints/Qwen3-VL-4B-Instruct"),
    "qwen3_vl-8b": ("qwen3_vl-8b", "checkpoints/Qwen3-VL-8B-Instruct"),
}


def reference_training(c, model: str = "2b") -> None:
    """Visual-RFT's scripts and TRL/HF defaults (docs section 3.3) on a base config.

    model: a key of MODELS (Qwen2-VL 2b/7b, Qwen2.5-VL qwen2_5_vl-3b/-7b, Qwen3-VL
    qwen3_vl-2b/-4b/-8b).
    16 prompts per step (8 GPUs x 1 x 2 accumulation), G = 8 for 2B and 4 for 7B (Qwen2.5-VL: 8
    for 3B, 4 for 7B; Qwen3-VL: 8 for 2B/4B, 4 for 8B, by the same memory reasoning), beta 0.04,
    lr 1e-6 linear decay, no warmup, AdamW (0.9, 0.999, 1e-8), grad clip 1.0, bf16 mixed precision
    (DeepSpeed bf16: float32 master weights and optimizer state, bf16 compute), temperature 1.0,
    256 new tokens, max_pixels 401408, seed 42, save every 100 steps; evaluation near-greedy with
    1024 new tokens as the reference's inference scripts.
    """
    if model not in MODELS:
        raise ValueError(f"model={model!r}: expected one of {', '.join(MODELS)}")
    c.model.preset, c.model_init = MODELS[model]  # model_init: a local HF folder
    c.model.master_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.input.batch_size = 16
    c.input.prompt_template = "raw"  # examples carry the reference's full problem text
    c.input.max_pixels = 401408
    c.input.min_pixels = 3136
    c.grpo.G = 4 if model.endswith(("7b", "8b")) else 8
    c.grpo.beta = 0.04
    c.grpo.mu = 1
    c.optim.lr = 1e-6
    c.optim.schedule = "linear"
    c.optim.warmup_steps = 0
    c.sampler.temperature = 1.0
    c.sampler.max_new_tokens = 256
    c.ckpt.every = 100
    c.seed = 42
    c.eval.max_new_tokens = 1024
    c.data.num_eval_examples = 0  # the whole test set


def apply_lora(c, rank: int) -> None:
    """lora=R: adapters of rank R on the decoder's projections, alpha 2R, lr 1e-5 (VLM-R1's LoRA
    GRPO script: r 64, alpha 128, lr 1e-5; adapters start at B = 0 and need a larger step than
    full fine-tuning's 1e-6). rank 0 leaves the config as it is (full fine-tuning)."""
    if not rank:
        return
    if rank < 0:
        raise ValueError(f"lora={rank}: expected a rank >= 1 (or 0 for full fine-tuning)")
    c.lora.rank = int(rank)
    c.lora.alpha = 2.0 * rank
    c.optim.lr = 1e-5


def shrink_for_local(c) -> None:
    """runlocal: a few steps of the tiny random model, small batches and evaluation."""
    c.runlocal = True
    c.model_init = ""
    c.model.preset = "tiny"
    c.model.master_dtype = "float32"
    c.model.compute_dtype = "float32"
    c.total_steps = 2
    c.input.batch_size = 2
    c.input.max_pixels = 3136 * 4
    c.grpo.G = 2
    c.grpo.micro_batch_size = 4
    c.sampler.max_new_tokens = 32
    c.eval.max_new_tokens = 32
    c.eval.batch_size = 2
    c.data.num_eval_examples = 8
    c.ckpt.every = 0
