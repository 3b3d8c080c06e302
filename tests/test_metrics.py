"""MetricsWriter (JSON lines + TensorBoard events), samples, Timer."""

import glob
import json
import math
import os
import struct
import time

import jax.numpy as jnp
import numpy as np
from tensorboardX.proto import event_pb2

from vrft_jax import metrics


def _read_events(tb_dir):
    """Scalars {tag: [(step, value)]} and text tags from TFRecord event files (no TensorFlow)."""
    scalars, texts = {}, []
    for path in glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, payload, payload crc
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
                else:
                    texts.append(v.tag)
    return scalars, texts


def test_metrics_jsonl_and_tensorboard(tmp_path):
    with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
        writer.write(1, {"loss": jnp.float32(0.5), "reward/mean": np.float64(1.25), "n": 3})
        writer.write(2, {"loss": float("nan"), "hist": np.arange(3)})
        # Flushed at once: readable before close.
        lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2
        writer.write_samples(
            2, [{"prompt": "p", "completion": "<answer>x</answer>", "rewards": {"f": jnp.ones(())}}]
        )
    first, second = (json.loads(line) for line in lines)
    assert first == {"step": 1, "loss": 0.5, "reward/mean": 1.25, "n": 3}
    # Strict JSON: NaN is null, with what it was named in the row's "nonfinite" field.
    assert second == {"step": 2, "loss": None, "hist": [0, 1, 2], "nonfinite": {"loss": "NaN"}}
    sample = json.loads((tmp_path / "samples.jsonl").read_text())
    assert sample == {"step": 2, "prompt": "p", "completion": "<answer>x</answer>",
                      "rewards": {"f": 1.0}}  # fmt: skip

    scalars, texts = _read_events(str(tmp_path / "tb"))
    assert scalars["loss"][0] == (1, 0.5) and math.isnan(scalars["loss"][1][1])
    assert scalars["reward/mean"] == [(1, 1.25)] and scalars["n"] == [(1, 3.0)]
    assert "hist" not in scalars and any(t.startswith("samples") for t in texts)


def test_resumed_writer_appends(tmp_path):
    for step in (1, 2):
        with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
            writer.write(step, {"x": step})
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_resumed_writer_drops_rows_after_the_resume_step(tmp_path):
    with metrics.MetricsWriter(str(tmp_path), enabled=True) as writer:
        for step in (1, 2, 3, 4):  # a run killed after step 4, its last checkpoint at step 2
            writer.write(step, {"x": step})
            writer.write_samples(step, [{"prompt": "p", "completion": "c", "rewards": {}}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "x"')  # torn by the kill
    with metrics.MetricsWriter(str(tmp_path), enabled=True, resume_step=2) as writer:
        writer.write(3, {"x": 30})
    steps = [row["step"] for row in metrics.read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3]
    assert [row["step"] for row in metrics.read_jsonl(tmp_path / "samples.jsonl")] == [1, 2]


def test_strict_json_names_every_non_finite_value():
    value = {"a": math.nan, "b": [1.0, {"c": -math.inf}], "d": np.float32(math.inf), "e": 2}
    text = metrics.dumps(value)

    def reject(token):  # json.loads calls this for the non-standard NaN / Infinity tokens
        raise AssertionError(f"{token} in {text}")

    assert json.loads(text, parse_constant=reject) == {
        "a": None,
        "b": [1.0, {"c": None, "nonfinite": {"c": "-Infinity"}}],
        "d": None,
        "e": 2,
        "nonfinite": {"a": "NaN", "d": "Infinity"},
    }


def test_disabled_writer_writes_nothing(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path / "w"), enabled=False)
    writer.write(1, {"x": 1.0})
    writer.write_samples(1, [{"prompt": "p", "completion": "c", "rewards": {}}])
    writer.close()
    assert not (tmp_path / "w").exists()


def test_timer_splits():
    timer = metrics.Timer()
    with timer("rollout"):
        time.sleep(0.02)
    with timer("rollout"):
        time.sleep(0.02)
    with timer("update"):
        pass
    splits = timer.splits()
    assert set(splits) == {"time/rollout", "time/update"}
    assert 0.04 <= splits["time/rollout"] < 1.0 and splits["time/update"] < splits["time/rollout"]
    assert timer.splits() == {}
