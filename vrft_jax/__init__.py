"""vrft_jax: Visual-RFT (GRPO with verifiable rewards for Qwen2-VL) in JAX/Flax."""

__version__ = "0.1.0"
