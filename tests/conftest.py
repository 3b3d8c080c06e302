"""Test harness: CPU only, with 8 fake host devices so sharding is exercised.

The environment is set before anything imports jax (pytest imports conftest first).
"""

import os
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One persistent compile cache for the whole session, inherited by the subprocess runs of the
# trainer (main, resume, export, notebooks): only the first process pays for each compile.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "vrft_jax_test_jit")
)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "vrft_jax" / "assets" / "qwen2_vl_tokenizer"


@pytest.fixture(scope="session")
def tokenizer_dir():
    """The shipped Qwen2-VL tokenizer folder (test and demo asset)."""
    return str(TOKENIZER_DIR)
