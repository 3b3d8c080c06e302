"""export_hf: a training checkpoint -> a transformers-loadable Qwen2-VL folder, and its errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_resume  # its helpers that start training runs
import tiny_hf
from flax import nnx

from configs import base
from vrft_jax import config_utils
from vrft_jax.checkpoint import Checkpointer, CheckpointError
from vrft_jax.models import random_qwen2_vl
from vrft_jax.tools import export_hf as export_lib

TOL = 1e-5  # max |diff| / max |logits| in float32


def _save_run(workdir, steps=(1, 2), preset="tiny"):
    """A hand-made workdir in the trainer's layout (config.json + checkpoints/<step>/{state,
    extra}) of a run of model.preset=`preset`; parameters rescaled to O(1), different at each
    step."""
    config = base.get_config()
    config.model.preset = preset
    os.makedirs(workdir, exist_ok=True)
    config_utils.write_config_json(config, str(workdir))
    ckpt = Checkpointer(workdir, every=1, keep=5, async_save=False)
    for step in steps:
        model = tiny_hf.rescale_params_(random_qwen2_vl(preset), seed=step)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        state = {
            "params": params,
            "opt_state": optax.adamw(1e-3).init(params),
            "step": jnp.int32(step),
            "rng": jax.random.key(step),
        }
        ckpt.save(step, state, {"data": {"position": step}})
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A real 2-step GRPO run (`python -m vrft_jax.main`, the tiny demo-like config of
    test_resume) that saved steps 1 and 2."""
    workdir = tmp_path_factory.mktemp("trained")
    proc = test_resume._start(workdir, **{"total_steps": 2, "ckpt.every": 1})
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _save_run(tmp_path_factory.mktemp("run"))


def _inputs():
    rng = np.random.default_rng(0)
    grids = [(1, 8, 10)]
    rows = [tiny_hf.image_prompt(rng, 4, grids, 5), list(rng.integers(0, 151000, 9))]
    ids, mask = tiny_hf.left_pad(rows)
    pixels, grid = tiny_hf.random_pixels(rng, grids)
    return ids, mask, pixels, grid


def test_export_loads_in_transformers_with_the_same_logits(trained_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, GenerationConfig, Qwen2VLForConditionalGeneration

    out = export_lib.export_hf(trained_dir, tmp_path / "hf")
    assert out == str(tmp_path / "hf")
    model, step, _ = export_lib.restore_model(trained_dir)
    assert step == 2 and json.load(open(os.path.join(out, "vrft_export.json")))["step"] == 2

    torch_model = Qwen2VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask, pixels, grid = _inputs()
    ref = tiny_hf.hf_logits(torch_model, ids, mask, pixels, grid)
    ours = np.asarray(model(ids, mask, pixels, grid))
    keep = mask > 0
    err = float(np.abs(ours[keep] - ref[keep]).max() / np.abs(ref[keep]).max())
    print(f"exported logits rel err {err:.2e}")
    assert err <= TOL

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    gen = GenerationConfig.from_pretrained(out)
    # No near-greedy defaults (top_k=1, top_p=0.001, temperature=0.01) to inherit.
    assert gen.do_sample and gen.top_k == 0 and gen.top_p == 1.0 and gen.temperature == 1.0
    assert model.config.eos_token_id in gen.eos_token_id


def test_export_qwen2_5_vl_run(tmp_path):
    """A Qwen2.5-VL run (model.preset) exports to a folder transformers' Qwen2.5-VL class loads with
    the same logits, and hf.load_model reads back (processor files included)."""
    torch = pytest.importorskip("torch")
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vrft_jax import hf

    run = _save_run(tmp_path / "run", steps=(1,), preset="qwen2_5_vl-tiny")
    out = export_lib.export_hf(run, tmp_path / "hf")
    model, _, _ = export_lib.restore_model(run)
    assert json.load(open(os.path.join(out, "config.json")))["model_type"] == "qwen2_5_vl"
    torch_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
    ids, mask, pixels, grid = _inputs()
    ref = tiny_hf.hf_logits(torch_model.eval(), ids, mask, pixels, grid)
    ours = np.asarray(model(ids, mask, pixels, grid))
    keep = mask > 0
    err = float(np.abs(ours[keep] - ref[keep]).max() / np.abs(ref[keep]).max())
    print(f"exported qwen2.5-vl logits rel err {err:.2e}")
    assert err <= TOL
    assert hf.load_model(out).config == model.config


def test_export_chosen_step_and_bfloat16(trained_dir, tmp_path):
    from safetensors import safe_open

    out = export_lib.export_hf(trained_dir, tmp_path / "hf1", step=1, dtype="bfloat16")
    model, _, _ = export_lib.restore_model(trained_dir, step=1)
    later, _, _ = export_lib.restore_model(trained_dir, step=2)
    first = np.asarray(model.language_model.embed_tokens[...])
    assert not np.array_equal(first, np.asarray(later.language_model.embed_tokens[...]))
    with safe_open(os.path.join(out, "model.safetensors"), "flax") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == jnp.bfloat16
    want = np.asarray(model.language_model.embed_tokens[...]).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(embed), want)
    assert json.load(open(os.path.join(out, "config.json")))["torch_dtype"] == "bfloat16"


def test_cli_errors(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    config_utils.write_config_json(base.get_config(), str(empty))
    assert export_lib.main(["--workdir", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "no finished checkpoint" in capsys.readouterr().err

    assert (
        export_lib.main(["--workdir", str(run_dir), "--out", str(tmp_path / "o"), "--step", "7"])
        == 1
    )
    assert "step 7 not in" in capsys.readouterr().err and not (tmp_path / "o").exists()

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    bad_out = blocker / "hf"
    assert export_lib.main(["--workdir", str(run_dir), "--out", str(bad_out)]) == 1
    assert f"cannot write the export folder {str(bad_out)!r}" in capsys.readouterr().err

    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("x")
    assert export_lib.main(["--workdir", str(run_dir), "--out", str(used)]) == 1
    assert "not empty" in capsys.readouterr().err and (used / "keep.txt").exists()

    assert export_lib.main(["--workdir", str(tmp_path / "nowhere"), "--out", str(used)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_checkpoint_of_another_model_names_the_key(run_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(os.path.join(run_dir, "checkpoints"), other / "checkpoints")
    config = base.get_config()
    config.model.preset = "2b"  # the run config says 2b; the checkpoint holds a tiny model
    config_utils.write_config_json(config, str(other))
    with pytest.raises(CheckpointError, match="params/language_model/embed_tokens"):
        export_lib.export_hf(other, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_default_export_dtype_is_model_inits(tmp_path):
    """Training keeps float32 master weights; by default the export is written in the dtype of
    the Hugging Face folder the run started from (bf16 for the hub's Qwen2-VL), else as saved."""
    import ml_collections

    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    config = ml_collections.ConfigDict({"model_init": str(folder)})
    assert export_lib.export_dtype(config) == "bfloat16"
    (folder / "config.json").write_text(json.dumps({"dtype": "float32"}))  # transformers 5
    assert export_lib.export_dtype(config) == "float32"
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert export_lib.export_dtype(config) is None
    config.model_init = str(tmp_path / "gone")
    assert export_lib.export_dtype(config) is None
    config.model_init = ""
    assert export_lib.export_dtype(config) is None
