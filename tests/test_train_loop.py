"""The train loop through the real entry point: files in the workdir, checkpoint, eval-only."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# A 2-step GRPO run on the demo task, shrunk: few prompts, short completions, 4 eval examples.
SMALL = [
    "--config.total_steps=2",
    "--config.sft.warmup_steps=0",
    "--config.input.batch_size=2",
    "--config.grpo.G=2",
    "--config.grpo.micro_batch_size=4",
    "--config.sampler.max_new_tokens=4",
    "--config.eval.max_new_tokens=4",
    "--config.data.num_eval_examples=4",
    "--config.eval.batch_size=4",
    "--config.eval_at_start=False",
    "--config.sample_every=1",
]


def run_main(workdir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "vrft_jax.main", "--config", str(REPO / "configs" / "demo.py"),
           "--workdir", str(workdir), *SMALL, *overrides]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    run_main(workdir)
    return workdir


def test_two_step_run_writes_metrics_tensorboard_checkpoint(trained):
    lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train] == [1, 2]
    for key in ("reward/total_mean", "reward/format", "reward/classification", "kl",
                "clip_fraction", "entropy", "completion_length", "zero_variance_groups",
                "grad_norm", "lr", "time/rollout", "time/update", "tokens_per_s",
                "compile_count", "logprob_gap_mean_abs"):  # fmt: skip
        assert key in train[-1], key
    assert any("eval/reward/total_mean" in x for x in lines)
    assert list((trained / "tb").iterdir()), "no TensorBoard event file"
    assert (trained / "samples.jsonl").read_text().strip()
    assert (trained / "checkpoints" / "2").is_dir()
    results = json.loads((trained / "results.json").read_text())
    assert "final" in results["evaluations"]


def test_eval_only_run(trained):
    # total_steps=0 in the same workdir restores the checkpoint and only evaluates: recorded as
    # "eval" at the checkpoint's step, next to the training run's evaluations.
    run_main(trained, "--config.total_steps=0")
    results = json.loads((trained / "results.json").read_text())
    assert list(results["evaluations"]) == ["final", "eval"]
    evaluation = results["evaluations"]["eval"]
    assert evaluation["step"] == 2 and 0.0 <= evaluation["reward/total_mean"] <= 2.0
    assert (trained / "eval" / "eval" / "classification_metrics.json").exists()


def test_dynamic_sampling_that_finds_no_signal_stops_naming_the_setting(tmp_path):
    """grpo.dynamic_sampling through the entry point: a random-init model scores 0 on every
    sample, so no group has signal; the run draws grpo.max_sampling_tries batches from its data
    iterator and stops with a message naming the settings."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "vrft_jax.main", "--config", str(REPO / "configs" / "demo.py"),
           "--workdir", str(tmp_path), *SMALL, "--config.grpo.dynamic_sampling=True",
           "--config.grpo.max_sampling_tries=2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0
    assert "grpo.dynamic_sampling: 2 rollouts of 2 prompts" in proc.stderr, proc.stderr[-3000:]
    assert "(grpo.max_sampling_tries=2) found only 0 of the 2 groups" in proc.stderr
    assert not (tmp_path / "checkpoints" / "1").exists()  # no step was trained
