"""The multi-host path on one machine: 2 processes x 4 CPU devices (jax.distributed over gloo)
give the same results as 1 process x 8 devices. The work is in bench/multiprocess_check.py, which
starts the worker processes; these tests call it and check its report."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "multiprocess_check.py")


def _load_check():
    spec = importlib.util.spec_from_file_location("multiprocess_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()


def _assert_match(report, steps):
    assert report["match"], json.dumps(
        {k: report[k] for k in ("metrics", "params", "out")}, indent=1
    )
    for rows in (report["single_metrics"], report["multi_metrics"]):
        assert sum("loss" in row for row in rows) == steps  # one row per optimizer step
    assert report["params"]["num_arrays"] > 0


def test_two_processes_match_one_toy(tmp_path):  # ~15 s
    """Sharded SGD steps: the distributed runtime alone (init, global arrays, collectives)."""
    report = check.run_check("toy", steps=3, out=str(tmp_path), timeout_s=300)
    _assert_match(report, 3)
    losses = [m["loss"] for m in report["single_metrics"]]
    assert losses[-1] < losses[0]  # the steps did something
    assert report["params"]["max_abs_diff"] < 1e-5


def test_compare_flags_a_difference(tmp_path):
    """compare() is not vacuous: a perturbed parameter or metric is a mismatch."""
    report = check.run_check("toy", steps=2, out=str(tmp_path), timeout_s=300)
    assert report["match"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    with np.load(multi / "params.npz") as z:
        params = {k: z[k] for k in z.files}
    np.savez(multi / "params.npz", **{k: v + 1e-2 for k, v in params.items()})
    assert not check.compare(str(single), str(multi))["match"]
    np.savez(multi / "params.npz", **params)
    assert check.compare(str(single), str(multi))["match"]
    metrics = json.loads((multi / "metrics.json").read_text())
    metrics[1]["loss"] *= 1.01
    (multi / "metrics.json").write_text(json.dumps(metrics))
    assert not check.compare(str(single), str(multi))["match"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four launches; a machine shared with other jobs is far slower
def test_two_processes_match_one_grpo(tmp_path):
    """Two GRPO steps of the demo (tiny model, SFT warm-up step, checkpoint every step), the
    second after a restart that resumes from the checkpoint: the same metrics per step and the
    same final parameters on 2 processes x 4 devices as on 1 x 8. Then two supervised QLoRA steps
    (int8 base, rank-4 adapters) in the first launch, compared the same way.
    `python bench/multiprocess_check.py` runs the same."""
    report = check.run_check("grpo", steps=2, out=str(tmp_path), timeout_s=900)
    print("multiprocess grpo check, seconds per launch:", report["seconds"])
    _assert_match(report, 2)
    _assert_match(report["lora"], 2)
    for key in ("loss", "entropy", "grad_norm", "reward/total_mean", "completion_length"):
        assert key in report["metrics"], (key, report["metrics"])
    for part in (report, report["lora"]):
        for rows in (part["single_metrics"], part["multi_metrics"]):
            steps = [row for row in rows if "loss" in row]
            assert [row["step"] for row in steps] == [1, 2]  # grpo: the restart resumed at step 1
    # The completions were decoded on every host from the gathered rows; process 0 logged them.
    samples = (tmp_path / "multi" / "workdir" / "samples.jsonl").read_text().splitlines()
    assert {json.loads(line)["step"] for line in samples} == {1, 2}
    # QLoRA: real gradients at both steps, checkpoints of the adapters only (an A and a B per
    # adapted projection, stacked over the layers: q, k, v, o, gate, up, down).
    assert all(row["grad_norm"] > 0 for row in report["lora"]["single_metrics"] if "loss" in row)
    names = report["lora"]["params"]["names"]
    assert len(names) == 2 * 7 and all(n.endswith(("['a']", "['b']")) for n in names), names
