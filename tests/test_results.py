"""Nothing lost: results.json, metrics.jsonl and reward_curve.png across SIGTERM, SIGKILL and
re-runs of the real entry point (`python -m vrft_jax.main`, tiny demo-like GRPO run on CPU).

One run is taken through every interruption in order (module fixture), each test checks one
promise:
  1. SIGTERM during the SFT warm-up: exit 0, a message, the warm-up's checkpoint.
  2. The same command resumes the warm-up; SIGKILL after step 3 (last checkpoint: step 2).
  3. The same command trains to the end; SIGTERM during its final evaluation: exit 0, a message.
  4. The same command redoes only the final evaluation: each step once in metrics.jsonl, every
     evaluation (before, after_sft, step_2, final) once in results.json with its step, the
     curve from all steps.
  5. The same command again: "already finished", exit 0, no file changed.
Plus the results table width, strict JSON in results.json, and the plot, without a model.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from vrft_jax import jsonio, results

TOTAL, WARMUP = 4, 150
OVERRIDES = {
    "total_steps": TOTAL,
    "eval_at_start": True,
    "eval_every": 2,
    # Long enough to be hit by SIGTERM: with a warm compile cache a step takes ~30 ms, and 30 steps
    # could end before the signal, sent once a step shows in the progress bar, arrived.
    "sft.warmup_steps": WARMUP,
    "sft.think": "",
    "input.batch_size": 2,
    "grpo.G": 2,
    "grpo.micro_batch_size": 4,
    "grpo.beta": 0.04,  # the reference is the warm-up's result: read back from workdir/warmup
    "sampler.max_new_tokens": 16,
    "data.num_workers": 1,
    "data.num_eval_examples": 4,  # 2 batches: a SIGTERM in an evaluation is seen at a batch
    "eval.max_new_tokens": 4,
    "eval.batch_size": 2,
    "eval.num_samples": 2,
    "ckpt.every": 2,
    "ckpt.keep": 2,
    "sample_every": 1,
}


class Run:
    """`python -m vrft_jax.main` on the demo config in the background; stderr collected live
    (tqdm's bars end lines with carriage returns, so it is read in chunks, not lines)."""

    def __init__(self, workdir):
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        cmd = [sys.executable, "-m", "vrft_jax.main", "--config", str(REPO / "configs/demo.py"),
               "--workdir", str(workdir)]  # fmt: skip
        cmd += [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while chunk := self.proc.stderr.read(64):
            self.err += chunk

    def wait_for(self, condition, what, timeout=600):
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"run ended before {what}:\n{self.err[-3000:]}")
            assert time.time() < deadline, f"no {what} in {timeout} s"
            time.sleep(0.05)

    def finish(self, timeout=900):
        out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode, out


def _train_steps(workdir):
    rows = jsonio.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [r["step"] for r in rows if "loss" in r]


def _snapshot(workdir):
    """{relative path: (mtime_ns, bytes)} of every file under workdir."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = (os.stat(path).st_mtime_ns, f.read())
    return out


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    seen = {}

    # 1. SIGTERM once the warm-up has done a step or more.
    run = Run(workdir)
    run.wait_for(lambda: re.search(r"sft warm-up:\s+\d+%\|[^\r]*\| ([1-9]\d*)/", run.err),
                 "a finished warm-up step")  # fmt: skip
    run.proc.send_signal(signal.SIGTERM)
    seen["sigterm"] = run.finish()

    # 2. Resume; SIGKILL once step 3 is logged (the last checkpoint is step 2).
    run = Run(workdir)
    run.wait_for(lambda: 3 in _train_steps(workdir), "step 3 in metrics.jsonl")
    run.proc.kill()
    run.proc.wait(timeout=60)
    seen["killed_rc"], seen["killed_out"] = run.proc.returncode, run.proc.stdout.read()
    seen["killed_steps"] = _train_steps(workdir)

    # 3. Resume; SIGTERM once the final evaluation has started.
    run = Run(workdir)
    final_eval = re.compile(rf"train:\s+100%[^\r]*{TOTAL}/{TOTAL}.*eval classification", re.DOTALL)
    run.wait_for(lambda: final_eval.search(run.err), "the final evaluation")
    run.proc.send_signal(signal.SIGTERM)
    seen["eval_stopped"] = run.finish()

    # 4. Resume to the end.
    seen["resumed"] = Run(workdir).finish()
    seen["files"] = _snapshot(workdir)
    time.sleep(0.05)  # so that a rewrite would show in the mtimes

    # 5. The same command on the finished run.
    seen["rerun"] = Run(workdir).finish()
    return workdir, seen


def test_sigterm_during_warmup_saves_it_and_exits_0(interrupted_run):
    workdir, seen = interrupted_run
    rc, out = seen["sigterm"]
    assert rc == 0, out
    match = re.search(
        rf"Stopped by SIGTERM during the SFT warm-up, after step (\d+) of {WARMUP}", out
    )
    assert match, out[-2000:]
    stopped = int(match.group(1))
    assert 1 <= stopped < WARMUP
    assert f"sft warm-up: continuing after step {stopped} of {WARMUP}" in seen["killed_out"]
    # The resumed warm-up finished and kept its final params for the reference model.
    assert os.path.isdir(workdir / "warmup" / "checkpoints" / str(WARMUP) / "state")


def test_sigkill_and_resume_log_each_step_once(interrupted_run):
    workdir, seen = interrupted_run
    assert seen["killed_rc"] == -signal.SIGKILL
    assert seen["killed_steps"][:3] == [1, 2, 3]
    rc, out = seen["resumed"]
    assert rc == 0, out
    rows = jsonio.read_jsonl(workdir / "metrics.jsonl")
    assert _train_steps(workdir) == [1, 2, 3, 4]  # step 3 ran twice, is logged once
    eval_steps = [r["step"] for r in rows if "eval/reward/total_mean" in r]
    assert eval_steps == [2, 4]
    sampled = [r["step"] for r in jsonio.read_jsonl(workdir / "samples.jsonl")]
    assert sorted(set(sampled)) == [1, 2, 3, 4] and sampled == sorted(sampled)


def test_sigterm_during_an_evaluation_exits_0_and_the_resume_redoes_it(interrupted_run):
    workdir, seen = interrupted_run
    rc, out = seen["eval_stopped"]
    assert rc == 0, out
    assert "Stopped by SIGTERM during the evaluation 'final'; checkpoint of step 4 saved" in out
    rc, out = seen["resumed"]
    assert rc == 0 and "Held-out results" in out, out
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["evaluations"]["final"]["step"] == 4


def test_results_keep_every_evaluation_with_its_step(interrupted_run):
    workdir, seen = interrupted_run
    saved = json.loads((workdir / "results.json").read_text())
    steps = {tag: e["step"] for tag, e in saved["evaluations"].items()}
    assert steps == {"before": 0, "after_sft": 0, "step_2": 2, "final": 4}
    assert list(steps) == ["before", "after_sft", "step_2", "final"]
    for e in saved["evaluations"].values():
        assert 0.0 <= e["reward/total_mean"] <= 2.0 and "sampled/total_mean" in e
    # The reward curve is drawn from every step of every session.
    x, y = results.train_reward_curve(str(workdir))
    assert x.tolist() == [1, 2, 3, 4] and all(math.isfinite(v) for v in y)
    assert (workdir / "reward_curve.png").stat().st_size > 0
    # The printed table fits 100 columns and lists every evaluation.
    out = seen["resumed"][1]
    table = out[out.index("Held-out results") :].strip().splitlines()[1:]
    assert table and max(len(line) for line in table) <= 100, table
    for tag in steps:
        assert any(line.startswith(tag) for line in table), tag
    for tag in steps:
        assert (workdir / "eval" / tag / "classification_metrics.json").exists()


def test_rerun_of_a_finished_run_changes_no_file(interrupted_run):
    workdir, seen = interrupted_run
    rc, out = seen["rerun"]
    assert rc == 0, out
    assert "This run is already finished" in out and "no file was changed" in out, out[-2000:]
    assert _snapshot(workdir) == seen["files"]


# ---- Without a model ----------------------------------------------------------------------------


def test_results_json_is_strict_and_drops_evaluations_after_the_resume_step(tmp_path):
    kept = results.Results(str(tmp_path))
    kept.add("before", 0, {"detection/map": float("nan"), "reward/total_mean": 0.5}, 1.0)
    kept.add("step_2", 2, {"detection/map": 0.25, "reward/total_mean": 0.75}, 2.0)
    kept.add("step_4", 4, {"detection/map": 0.5, "reward/total_mean": 1.0}, 3.0)
    text = (tmp_path / "results.json").read_text()

    def reject(token):
        raise AssertionError(f"{token} in results.json")

    saved = json.loads(text, parse_constant=reject)
    assert saved["evaluations"]["before"]["detection/map"] is None
    assert saved["evaluations"]["before"]["nonfinite"] == {"detection/map": "NaN"}
    again = results.Results(str(tmp_path))
    again.drop_after(2)  # a run resumed from step 2 redoes step_4
    assert list(again.evaluations) == ["before", "step_2"]
    assert list(json.loads((tmp_path / "results.json").read_text())["evaluations"]) == [
        "before",
        "step_2",
    ]
    assert math.isnan(again.metrics_of("before")["detection/map"])


def test_results_table_fits_100_columns():
    metrics = {"classification/accuracy": 0.5, "classification/accuracy_reference": 0.6,
               "detection/map": 0.1, "detection/map50": 0.2, "detection/coco_AP": 0.1,
               "reward/total_mean": 1.2, "reward/format": 0.9, "reward/classification": 0.3,
               "reward/detection_iou": 0.4, "sampled/total_mean": 1.1, "sampled/format": 0.8,
               "sampled/classification": 0.3, "sampled/detection_iou": 0.2}  # fmt: skip
    evaluations = {
        "before": {"step": 0, **metrics},
        "after_sft": {"step": 0, **metrics},
        "final": {"step": 400, **metrics, "reward/total_mean": float("nan")},
    }
    table = results.results_table(evaluations)
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100, table
    assert sum(line.startswith("final (step 400)") for line in lines) >= 2  # in blocks
    assert "greedy:detection_iou" in table and "coco_AP" not in table  # details stay in files
    assert " -" in [line for line in lines if line.startswith("final")][0]  # NaN shown as "-"


def test_reward_curve_png(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 41):
            f.write(json.dumps({"step": step, "loss": 0.1, "reward/total_mean": step / 40}) + "\n")
    evaluations = {
        "before": {"step": 0, "reward/total_mean": 0.3},
        "after_sft": {"step": 0, "reward/total_mean": 0.31},  # close: labels must not collide
        "final": {"step": 40, "reward/total_mean": 0.9},
    }
    path = results.plot_reward_curve(str(tmp_path), evaluations)
    assert path and os.path.getsize(path) > 10_000
