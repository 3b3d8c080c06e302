"""HF checkpoints in and out: round trip through transformers, key layouts, clear errors."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
import tiny_hf  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from vrft_jax import hf  # noqa: E402

BUCKETS = dict(prompt_buckets=(64,), patch_buckets=(256,), image_buckets=(4,))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    grids = [(1, 4, 6), (1, 6, 4)]
    rows = [tiny_hf.image_prompt(rng, 3, grids[:1], 4), tiny_hf.image_prompt(rng, 2, grids[1:], 2)]
    ids, mask = tiny_hf.left_pad(rows)
    pv, grid = tiny_hf.random_pixels(rng, grids)
    return ids, mask, pv, grid


def _rel(a, b, mask):
    a, b = np.asarray(a)[mask > 0], np.asarray(b)[mask > 0]
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_round_trip_through_transformers(tmp_path, tie):
    """HF -> ours -> save_qwen2_vl -> transformers loads -> same logits."""
    from transformers import Qwen2VLForConditionalGeneration

    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    torch_model = tiny_hf.make_tiny_hf(src, tie=tie, seed=3)
    model = hf.load_qwen2_vl(src, **BUCKETS)
    hf.save_qwen2_vl(model, dst)
    keys = load_file(os.path.join(dst, "model.safetensors")).keys()
    assert ("lm_head.weight" in keys) == (not tie)
    assert "visual.patch_embed.proj.weight" in keys and "model.embed_tokens.weight" in keys
    reloaded = Qwen2VLForConditionalGeneration.from_pretrained(dst).eval()
    ids, mask, pv, grid = _inputs()
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    again = tiny_hf.hf_logits(reloaded, ids, mask, pv, grid)
    assert _rel(again, ref, mask) == 0.0  # bit-identical weights after the round trip
    ours = hf.load_qwen2_vl(dst, **BUCKETS)(ids, mask, pv, grid)
    assert _rel(ours, ref, mask) <= 1e-5


def test_in_memory_key_layout_and_sharded_index(tmp_path):
    """transformers-5 in-memory names (model.visual.*, model.language_model.*), 2 files."""
    src = str(tmp_path / "src")
    torch_model = tiny_hf.make_tiny_hf(src, tie=False, seed=4)
    state = {k: v.detach().numpy().copy() for k, v in torch_model.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state)
    dst = tmp_path / "mem"
    dst.mkdir()
    names = sorted(state)
    halves = {"a.safetensors": names[::2], "b.safetensors": names[1::2]}
    weight_map = {}
    for fname, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(dst / fname))
        weight_map.update({k: fname for k in keys})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (dst / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    ids, mask, pv, grid = _inputs(1)
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pv, grid)
    ours = hf.load_qwen2_vl(str(dst), **BUCKETS)(ids, mask, pv, grid)
    assert _rel(ours, ref, mask) <= 1e-5


def test_bf16_checkpoint_loads(tmp_path):
    src = str(tmp_path / "src")
    tiny_hf.make_tiny_hf(tie=True, seed=5).to(torch.bfloat16).save_pretrained(src)
    model = hf.load_qwen2_vl(src, dtype=jnp.bfloat16)
    assert model.language_model.embed_tokens[...].dtype == jnp.bfloat16
    hf.save_qwen2_vl(model, str(tmp_path / "out"))
    back = hf.load_qwen2_vl(str(tmp_path / "out"), dtype=jnp.bfloat16)
    np.testing.assert_array_equal(
        np.asarray(back.visual.blocks.qkv_kernel[...], np.float32),
        np.asarray(model.visual.blocks.qkv_kernel[...], np.float32),
    )


def test_clear_errors(tmp_path):
    src = tmp_path / "src"
    tiny_hf.make_tiny_hf(str(src), tie=True, seed=6)
    tensors = load_file(str(src / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())

    def folder(name, tensors, config):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, str(d / "model.safetensors"))
        (d / "config.json").write_text(json.dumps(config))
        return str(d)

    missing = dict(tensors)
    del missing["model.layers.1.self_attn.q_proj.weight"]
    with pytest.raises(KeyError, match=r"model\.layers\.1\.self_attn\.q_proj\.weight.*\(64, 64\)"):
        hf.load_qwen2_vl(folder("missing", missing, config))

    bad = dict(tensors)
    bad["visual.blocks.0.mlp.fc1.weight"] = np.zeros((7, 32), np.float32)
    with pytest.raises(ValueError, match=r"fc1\.weight.*\(7, 32\).*\(128, 32\)"):
        hf.load_qwen2_vl(folder("mismatch", bad, config))

    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_qwen2_vl(str(tmp_path))
    with pytest.raises(ValueError, match="model_type"):
        hf.load_qwen2_vl(folder("llama", tensors, dict(config, model_type="llama")))
    rope = dict(config)
    rope["text_config"] = dict(
        config.get("text_config", {}), rope_parameters={"rope_type": "yarn", "factor": 2.0}
    )
    rope.pop("rope_scaling", None)
    with pytest.raises(ValueError, match="unsupported rope"):
        hf.load_qwen2_vl(folder("yarn", tensors, rope))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        hf.load_qwen2_vl(str(empty))


def test_bf16_checkpoint_trains_from_float32_master_weights(tmp_path):
    """The trainer's model set-up loads a hub-style bf16 checkpoint as float32 master weights
    (exactly the bf16 values, upcast), computing in config.model.compute_dtype."""
    from configs import base
    from vrft_jax import model_setup

    src = str(tmp_path / "src")
    tiny_hf.make_tiny_hf(tie=True, seed=6).to(torch.bfloat16).save_pretrained(src)
    config = base.get_config()
    config.model_init, config.model.compute_dtype = src, "bfloat16"
    model = model_setup.build_model(config)
    assert model.config.param_dtype == "float32" and model.config.compute_dtype == "bfloat16"
    master = np.asarray(model.language_model.embed_tokens[...])
    assert master.dtype == np.float32
    on_disk = hf.load_qwen2_vl(src, dtype=jnp.bfloat16).language_model.embed_tokens[...]
    np.testing.assert_array_equal(master, np.asarray(on_disk, np.float32))
    assert hf.torch_dtype(src) == "bfloat16"
