"""LoRA with the real trainer (`python -m vrft_jax.main`, the tiny demo-like runs of test_resume):
a run started from a PEFT adapter folder (lora.init), killed with SIGKILL and resumed, ends bit
for bit like an uninterrupted one; its checkpoints hold only the adapters; export writes the merged
model (transformers) and a PEFT folder (peft) with the same logits; bad input fails first.
lora.full_warmup (`configs/demo.py:lora=R`, train.run in process, then resumed): the warm-up's
weights are the base, GRPO trains only the adapters from KL 0, export uses that base.
"""

import functools
import json
import os
import signal

import jax
import numpy as np
import pytest
import test_export_hf
import test_resume
import tiny_hf
from flax import nnx

from configs import base, demo
from vrft_jax import config_utils, hf, lora, model_setup, peft_io, policy, sft, sharding, train
from vrft_jax.checkpoint import CheckpointError
from vrft_jax.tools import export_hf as export_lib

RANK, ALPHA, STEPS = 4, 8.0, 3
TOL = 1e-5  # max |diff| / max |logits|, float32 (the same sums in another order)


def run_config(**lora_fields):
    """The config test_resume's runs build (configs/demo.py + its overrides), with LoRA."""
    c = base.get_config()
    c.model.preset, c.seed = "tiny", 42
    c.lora.rank, c.lora.alpha = RANK, ALPHA
    c.lora.update(lora_fields)
    return c


def _spec_and_adapters(config):
    model = model_setup.build_model(config)
    params = nnx.state(model, nnx.Param)
    spec = lora.make_spec(config.lora, params)
    return model, params, spec, lora.init_adapters(spec, config.seed)


@pytest.fixture(scope="module")
def peft_init(tmp_path_factory):
    """A PEFT folder with random adapters (B != 0) whose delta (alpha/r) A @ B (entries ~0.04)
    is of the order of the base weights (N(0, 0.02)): exported weights differ from the base well
    above rounding, yet the model stays as well conditioned as the base (with deltas 50x the base
    the two frameworks' float32 summation orders already differ by 2e-4 of the logits). The
    trainer's reference is then a copy of these adapters."""
    folder = tmp_path_factory.mktemp("peft_init")
    model, _, spec, adapters = _spec_and_adapters(run_config())
    rng = np.random.default_rng(7)
    big = jax.tree.map(
        lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), nnx.to_pure_dict(adapters)
    )
    peft_io.write_adapters(str(folder), big, spec, model.config)
    return folder


def _flags(init):
    return {"lora.rank": RANK, "lora.alpha": ALPHA, "lora.init": str(init),
            "total_steps": STEPS, "ckpt.every": 1, "ckpt.keep": 5}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, peft_init):
    """(uninterrupted workdir, killed-and-resumed workdir), both finished."""
    ref_dir = tmp_path_factory.mktemp("lora_uninterrupted")
    run_dir = tmp_path_factory.mktemp("lora_killed")
    proc = test_resume._start(run_dir, **_flags(peft_init))
    test_resume._wait_for_step(proc, run_dir, 1)
    reference = test_resume._start(ref_dir, **_flags(peft_init))  # programs compiled and cached
    test_resume._wait_for_step(proc, run_dir, 2)
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    rc, out, err = test_resume._finish(test_resume._start(run_dir, **_flags(peft_init)))
    assert rc == 0, err[-4000:]
    rc, out, err = test_resume._finish(reference)
    assert rc == 0, err[-4000:]
    return ref_dir, run_dir


@pytest.mark.slow
def test_killed_lora_run_resumes_bit_identical_with_adapter_only_checkpoints(runs):
    ref_dir, run_dir = runs
    ref_metrics, run_metrics = (test_resume._metrics_by_step(d) for d in runs)
    assert sorted(ref_metrics) == list(range(1, STEPS + 1)) == sorted(run_metrics)
    for step in ref_metrics:
        assert run_metrics[step] == ref_metrics[step], f"step {step} metrics differ"
    assert ref_metrics[1]["kl"] == 0.0  # the reference is the start (lora.init) adapters
    state = test_resume._read_state(run_dir, STEPS)
    test_resume._assert_trees_equal(state, test_resume._read_state(ref_dir, STEPS))
    # Only adapters (and their moments) are saved: a fraction of the full model's state.
    _, params, spec, _ = _spec_and_adapters(run_config())
    paths = {"/".join(t.path) for t in spec.targets}
    saved = {"/".join(map(str, p[:-1])) for p, _ in nnx.to_flat_state(nnx.State(state["params"]))}
    assert saved == paths
    full_state_bytes = 3 * sum(x.size * 4 for x in jax.tree.leaves(params))  # params + 2 moments
    step_dir = os.path.join(ref_dir, "checkpoints", str(STEPS))
    on_disk = sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(step_dir)
        for name in files
    )
    print(f"LoRA checkpoint {on_disk} bytes, full state {full_state_bytes} bytes")
    assert on_disk * 20 <= full_state_bytes


def _inputs():
    rng = np.random.default_rng(0)
    grids = [(1, 8, 10)]
    rows = [tiny_hf.image_prompt(rng, 4, grids, 5), list(rng.integers(0, 151000, 9))]
    ids, mask = tiny_hf.left_pad(rows)
    pixels, grid = tiny_hf.random_pixels(rng, grids)
    return ids, mask, pixels, grid


def _torch_logits(model, ids, mask, pixels, grid):
    return tiny_hf.hf_logits(model, ids, mask, pixels, grid)


def _rel(a, b, mask):
    """Scale-relative max difference over the real (unpadded) positions."""
    keep = mask > 0
    return float(np.abs(a[keep] - b[keep]).max() / np.abs(b[keep]).max())


@pytest.mark.slow
def test_merged_export_and_peft_folder_give_our_adapted_logits(runs, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import Qwen2VLForConditionalGeneration

    ref_dir = runs[0]
    merged_dir = export_lib.export_hf(ref_dir, tmp_path / "merged", dtype="float32")
    adapter_dir = export_lib.export_hf(ref_dir, tmp_path / "adapter", adapter_only=True)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(adapter_dir))

    # Our forward with the adapters applied per layer (the training forward).
    model, spec, adapters, step = export_lib.restore_lora(ref_dir)
    assert step == STEPS
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    ours = nnx.merge(graphdef, lora.attach(params, adapters, spec))
    base_model = nnx.merge(graphdef, params)
    ids, mask, pixels, grid = _inputs()
    want = np.asarray(ours(ids, mask, pixels, grid))
    assert _rel(np.asarray(base_model(ids, mask, pixels, grid)), want, mask) > 1e-2  # they matter

    merged = Qwen2VLForConditionalGeneration.from_pretrained(merged_dir, dtype=torch.float32)
    err = _rel(_torch_logits(merged.eval(), ids, mask, pixels, grid), want, mask)
    print(f"merged export vs our adapted forward: rel err {err:.2e}")
    assert err <= TOL

    # PEFT: the base model (exported as transformers loads it) + the adapter folder.
    base_dir = str(tmp_path / "base")
    hf.save_qwen2_vl(base_model, base_dir)
    torch_base = Qwen2VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
    with_adapters = peft.PeftModel.from_pretrained(torch_base, adapter_dir).eval()
    got = _torch_logits(with_adapters, ids, mask, pixels, grid)
    err = _rel(got, want, mask)
    print(f"peft base + adapter folder vs our adapted forward: rel err {err:.2e}")
    assert err <= TOL


def test_adapter_only_on_a_full_fine_tuning_run_is_an_error(tmp_path):
    run_dir = test_export_hf._save_run(tmp_path / "full", steps=(1,))
    with pytest.raises(ValueError, match="full fine-tuning run"):
        export_lib.export_hf(run_dir, tmp_path / "out", adapter_only=True)
    assert not os.path.exists(tmp_path / "out")


def test_peft_folder_of_another_rank_or_base_fails_before_training(peft_init, tmp_path):
    mesh = sharding.make_mesh((("data", 1),), jax.devices()[:1])
    config = run_config(rank=8, alpha=ALPHA, init=str(peft_init))
    params = nnx.state(model_setup.build_model(config), nnx.Param)
    with pytest.raises(ValueError, match="r=4 but config.lora.rank=8"):
        model_setup.lora_setup(config, params, mesh, {})
    # Adapters of a wider model: same module names, other shapes.
    other = tmp_path / "other_base"
    other.mkdir()
    wide = run_config()
    wide.model.preset = "tiny"
    model = model_setup.build_model(wide)
    cfg = model.config.replace(intermediate_size=2 * model.config.intermediate_size)
    from vrft_jax.models import random_qwen2_vl

    params_wide = nnx.state(random_qwen2_vl(cfg), nnx.Param)
    spec_wide = lora.make_spec(wide.lora, params_wide)
    adapters = nnx.to_pure_dict(lora.init_adapters(spec_wide, 0))
    peft_io.write_adapters(str(other), adapters, spec_wide, cfg)
    config = run_config(init=str(other))
    params = nnx.state(model_setup.build_model(config), nnx.Param)
    with pytest.raises(ValueError, match="trained on another base model"):
        model_setup.lora_setup(config, params, mesh, {})
    cfg_json = json.load(open(other / "adapter_config.json"))
    assert cfg_json["r"] == RANK and cfg_json["peft_type"] == "LORA"


# ---- lora.full_warmup: the SFT warm-up trains every weight and becomes the frozen base -----------

WARM = 2  # warm-up steps


def full_warmup_config(total_steps):
    """configs/demo.py:lora=RANK shrunk as test_resume's runs (no sampled evaluation)."""
    c = demo.get_config(f"lora={RANK}")
    c.update_from_flattened_dict({
        **{k: v for k, v in test_resume.OVERRIDES.items() if k != "sft.warmup_steps"},
        "total_steps": total_steps, "sft.warmup_steps": WARM, "sft.think": "",
        "eval.num_samples": 0, "ckpt.every": 1, "ckpt.keep": 5,
    })  # fmt: skip
    return c


@pytest.fixture(scope="module")
def full_warmup_run(tmp_path_factory):
    """(workdir, [LoraRun of each session]): 1 GRPO step, then the same workdir with
    total_steps 2 (a resume from the step-1 checkpoint). A LoraRun's base is the one its steps
    used (model_setup.rebase replaces it in place)."""
    workdir = str(tmp_path_factory.mktemp("full_warmup"))
    sessions = []

    def kept(*args, **kwargs):
        sessions.append(model_setup.lora_setup(*args, **kwargs))
        return sessions[-1]

    one_device = functools.partial(sharding.make_mesh, devices=jax.devices()[:1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "lora_setup", kept)
        patch.setattr(train.sharding, "make_mesh", one_device)  # the cheapest programs
        for total in (1, 2):
            config = full_warmup_config(total)
            config_utils.write_config_json(config, workdir)  # as vrft_jax.main does
            train.run(config, workdir)
    return workdir, sessions


def _warmed(workdir):
    """The warm-up's final master weights (workdir/warmup/) as host arrays, and the initial ones."""
    config = full_warmup_config(2)
    initial = nnx.to_pure_dict(nnx.state(model_setup.build_model(config), nnx.Param))
    return export_lib._read_params(export_lib.warmup_dir(workdir, config), initial), initial


def test_full_warmup_base_is_the_warmed_up_model_also_after_resume(full_warmup_run):
    workdir, sessions = full_warmup_run
    assert len(sessions) == 2
    warmed, initial = _warmed(workdir)
    # Every weight trained, also the tied embedding / output layer that no adapter reaches.
    embed = ("language_model", "embed_tokens")
    assert not np.array_equal(lora._get(warmed, embed), lora._get(initial, embed))
    want = policy.cast_params(warmed, "float32")  # the compute dtype
    # The first session's base after its GRPO step (never trained, never donated) and the
    # resumed session's, read back from workdir/warmup/, are both exactly the warm-up's weights.
    for run in sessions:
        test_resume._assert_trees_equal(jax.device_get(run.base), jax.device_get(want))


def test_full_warmup_grpo_trains_fresh_adapters_from_kl_0(full_warmup_run):
    workdir, sessions = full_warmup_run
    metrics = test_resume._metrics_by_step(workdir)
    assert sorted(metrics) == [1, 2]  # the resume continued at step 2
    assert metrics[1]["kl"] == 0.0  # reference = the base with the adapters off = the policy
    fresh = nnx.to_pure_dict(lora.init_adapters(sessions[0].spec, 42))
    saved = {s: test_resume._read_state(workdir, s)["params"] for s in (1, 2)}
    for step in (1, 2):  # only adapters are saved, and they move from B = 0
        assert jax.tree.structure(saved[step]) == jax.tree.structure(fresh)
        b = lora._get(saved[step], sessions[0].spec.targets[0].path)["b"]
        assert np.abs(b).max() > 0, step
    # The start adapters are fresh (B = 0): the reference is the base itself, adapters off.
    assert model_setup.reference_params(full_warmup_config(2), fresh, sessions[0]) == {}


def test_full_warmup_export_uses_the_warmed_up_base(full_warmup_run, tmp_path):
    workdir, sessions = full_warmup_run
    warmed, _ = _warmed(workdir)
    model, spec, adapters, step = export_lib.restore_lora(workdir)
    assert step == 2
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    test_resume._assert_trees_equal(jax.device_get(params), warmed)
    # Merged export: the warmed-up base + the step-2 adapters.
    out = export_lib.export_hf(workdir, tmp_path / "merged")
    exported = nnx.to_pure_dict(nnx.state(hf.load_model(out), nnx.Param))
    want = lora.merge(lora.make_base(warmed, spec, "float32"), adapters, spec, np.float32)
    test_resume._assert_trees_equal(jax.device_get(exported), jax.device_get(want))
    # --adapter_only: the PEFT folder and the base it sits on, OUT/base/ (no Hugging Face folder
    # holds the warm-up's weights).
    out = export_lib.export_hf(workdir, tmp_path / "adapters", adapter_only=True)
    base_dir = os.path.join(out, export_lib.BASE_SUBDIR)
    exported = nnx.to_pure_dict(nnx.state(hf.load_model(base_dir), nnx.Param))
    test_resume._assert_trees_equal(jax.device_get(exported), warmed)
    meta = json.load(open(os.path.join(out, peft_io.CONFIG_FILE)))
    assert meta["base_model_name_or_path"] == base_dir
    config = full_warmup_config(2)
    read = peft_io.read_adapters(out, spec, lora.init_adapters(spec, 0), config)
    test_resume._assert_trees_equal(jax.device_get(nnx.to_pure_dict(read)), adapters)


@pytest.mark.parametrize(
    "fields, names",
    [
        ({"lora.rank": 0}, "config.lora.rank > 0"),
        ({"sft.warmup_steps": 0}, "config.sft.warmup_steps > 0"),
        ({"trainer": "sft"}, "trainer='sft'"),
        ({"lora.init": "/some/peft"}, "config.lora.init='/some/peft'"),
    ],
)
def test_full_warmup_without_adapters_or_warmup_fails_naming_the_field(fields, names):
    config = demo.get_config(f"lora={RANK}")
    config.update_from_flattened_dict(fields)
    errors = config_utils.check_values(config)  # vrft_jax.main: before any data or model
    assert any("config.lora.full_warmup=True" in e and names in e for e in errors), errors
    with pytest.raises(ValueError, match="config.lora.full_warmup=True"):
        model_setup.build_model(config)  # train.run: before any model


def test_full_warmup_resume_without_its_base_fails(tmp_path):
    config = demo.get_config(f"lora={RANK}")
    with pytest.raises(CheckpointError, match="not the base they were trained on"):
        sft.full_warmup_base(config, None, None, None, None, None, None,
                             workdir=str(tmp_path), guard=None, resumed=True)  # fmt: skip


def test_demo_lora_argument_changes_only_lora_and_lr():
    plain, adapted = demo.get_config(), demo.get_config("lora=8")
    assert (adapted.lora.rank, adapted.lora.alpha, adapted.lora.full_warmup) == (8, 16.0, True)
    flat = [dict(_flat(c.to_dict())) for c in (plain, adapted)]
    changed = {k for k, v in flat[1].items() if flat[0][k] != v}
    assert changed <= {"lora.rank", "lora.alpha", "lora.full_warmup", "optim.lr"}, changed


def _flat(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
