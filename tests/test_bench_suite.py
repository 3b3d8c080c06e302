"""The GPU benchmark suite's CPU path (bench/gpu_check.sh --smoke and what it runs).

The full smoke run compiles a dozen programs (minutes on 2 cores), so these tests take its parts
that can break without a GPU at their smallest (the library's tiny widths): the transformers twin
that every "vs transformers" figure relies on (same weights, same log-probs), grpo_step's timed
sampler call (the same samples as the trainer's), the summary table, and the shell script's
deadline and summary plumbing.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import summary  # noqa: E402  (bench/summary.py)


def test_twin_gives_our_log_probs_on_an_image_prompt():
    """transformers' model filled by hf_twin scores completions of image prompts like ours: the
    train-step benchmark's batch (ragged left padding, images, G copies) through both models."""
    pytest.importorskip("torch")
    import train_step
    from rollout import Preset

    from vrft_jax import policy
    from vrft_jax.models import get_preset

    batch = Preset(2, 2, 56, 16, 4, "float32", _tiny_overrides())
    t = train_step.TrainPreset(batch, "2b", "float32", "float32", 2, "none", 1)
    model = train_step.build_model(get_preset("2b", **batch.config), 0, "float32")
    c = train_step.train_config(t, batch, "none")
    ours_batch, theirs_batch, _ = train_step.make_batch(c, batch, seed=0)
    theirs = train_step.run_theirs(model, t, c.grpo, theirs_batch, 4, 1, "none", threads=1)
    ours, _ = policy.completion_logprobs(
        model, ours_batch["prompt_ids"], ours_batch["prompt_mask"], ours_batch["pixel_values"],
        ours_batch["image_grid_thw"], ours_batch["completion_ids"],
    )  # fmt: skip
    ours = np.asarray(ours)
    # float32 on both sides, only the summation order differs (attention kernels, fused dots):
    # a few ulps of log-probs near -12 (log of the 151936-token vocabulary).
    scale = np.abs(ours).max()
    np.testing.assert_allclose(theirs["ref_logp"], ours, rtol=0, atol=1e-5 * scale)
    assert theirs["update_s"] > 0 and theirs["ref_s"] > 0


def _tiny_overrides():
    """The library's tiny widths as overrides of the 2b preset (the benchmarks' presets are)."""
    from vrft_jax.models import get_preset

    tiny = dataclasses.asdict(get_preset("tiny"))
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keys += ("num_key_value_heads", "mrope_section", "vision_depth", "vision_embed_dim")
    return {k: tiny[k] for k in keys + ("vision_num_heads",)}


def test_grpo_step_timed_sampler_samples_what_the_trainer_samples():
    """grpo_step swaps the trainer's sampler call for one split into timed phases: same programs,
    same tokens and log-probs as train.make_generate_fn's for the same prompts and key."""
    import grpo_step
    import jax
    from flax import nnx

    from vrft_jax import train
    from vrft_jax.inputs import PromptProcessor
    from vrft_jax.metrics import Timer
    from vrft_jax.models import get_preset
    from vrft_jax.rollout import encode_prompts

    p = grpo_step.StepPreset(1, 2, 56, 4, "float32", "float32", 2, _tiny_overrides())
    c = grpo_step.step_config(p)
    processor = PromptProcessor.from_config(c)
    model = grpo_step.build_model(get_preset("2b", **p.config), 0, "float32")
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    timer = Timer()
    timed, _ = grpo_step.timed_generate_fn(graphdef, model.config, c, timer)
    prompt = encode_prompts(processor, grpo_step.make_examples(p, seed=0), c)
    args = (prompt["prompt_ids"], prompt["prompt_mask"], *prompt["raw_images"])
    kw = dict(
        max_new_tokens=p.new_tokens, num_samples=p.samples, temperature=1.0, top_k=0, top_p=1.0,
        eos_token_ids=processor.special.eos, pad_token_id=processor.special.pad,
        rng=jax.random.key(3),
    )  # fmt: skip
    ours = timed(params)(*args, **kw)
    assert set(timer.splits()) == {"time/prefill", "time/decode", "time/to_host"}
    theirs = train.make_generate_fn(graphdef, model.config, c)(params)(*args, **kw)
    np.testing.assert_array_equal(ours.tokens, np.asarray(theirs.tokens))
    np.testing.assert_array_equal(ours.mask, np.asarray(theirs.mask))
    np.testing.assert_array_equal(ours.logprobs, np.asarray(theirs.logprobs))  # same programs
    assert ours.tokens.shape == (p.prompts * p.samples, p.new_tokens)


def test_summary_table_collects_rows_in_order_and_names_silent_logs(tmp_path, capsys):
    summary.row("rollout tokens/s", 300.0, 100.0, roofline=0.5)
    summary.row("decode ms", 2.0, 8.0, unit="ms", higher_is_better=False)
    summary.row("compile s", 40.0, unit="s")
    lines = capsys.readouterr().out.splitlines(keepends=True)
    log, silent = tmp_path / "a.log", tmp_path / "b.log"
    log.write_text("noise\n" + "".join(lines[:2]) + "more noise\n" + lines[2])
    silent.write_text("Traceback: it crashed\n")
    summary.main([str(log), str(silent)])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| figure | ours | transformers | ratio | roofline |"
    assert out[2] == "| rollout tokens/s | 300 | 100 | 3.00x | 50% |"
    assert out[3] == "| decode ms | 2 ms | 8 ms | 4.00x |  |"  # a time: theirs / ours
    assert out[4] == "| compile s | 40 s |  |  |  |"
    assert out[-1].startswith("no figures from: ") and str(silent) in out[-1]
    assert str(log) not in out[-1]


def test_gpu_check_smoke_skips_what_the_budget_cannot_fit_and_still_writes_the_summary(tmp_path):
    """A budget too small for any step: every step is skipped and named, summary.md is written,
    the exit status says it failed (the deadline that keeps the GPU call inside 10 minutes)."""
    env = dict(os.environ, OUT=str(tmp_path), BUDGET_S="1", XLA_FLAGS="")
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (tmp_path / "summary.md").read_text()
    assert "| figure | ours | transformers | ratio | roofline |" in text
    for name in ("rollout", "train_step", "grpo_step", "decode_cost"):
        assert "skipped" in (tmp_path / f"{name}.log").read_text()
        assert f"{name}.log" in text.split("no figures from:")[1]
    assert "CPU smoke" in text
